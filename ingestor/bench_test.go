package ingestor_test

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor"
)

// Benchmarks of the whole service in-process: fasthttp client → ingestor → embedded
// Kafka-protocol broker (acks=all), so the numbers include the produce round trip and
// the broker itself, on the same machine. Run with e.g.
//
//	go test -run '^$' -bench Ingest -benchtime 3s ./ingestor
//
// Rate limiting is off (the default 5000 events/s per project would be the bottleneck)
// and events are spread over 8 projects, i.e. up to 8 partitions.

func BenchmarkIngestSingle(b *testing.B) {
	benchmarkIngest(b, "/ingest", 1)
}

func BenchmarkIngestBatch100(b *testing.B) {
	benchmarkIngest(b, "/ingest/batch", 100)
}

func benchmarkIngest(b *testing.B, path string, eventsPerRequest int) {
	tb := setup(b, withConfig(func(c *ingestor.Config) { c.RateLimit = 0 }))
	keys := []string{tb.project.APIKey}
	for len(keys) < 8 {
		keys = append(keys, tb.newProject(b, "bench").APIKey)
	}
	bodies := make([][]byte, len(keys))
	for i, k := range keys {
		if eventsPerRequest == 1 {
			bodies[i] = mustJSON(b, validEvent(k))
			continue
		}
		evs, _ := batchEvents(eventsPerRequest)
		for _, ev := range evs {
			delete(ev, "eventId")
			ev["apiKey"] = k
		}
		bodies[i] = mustJSON(b, evs)
	}
	client := &fasthttp.HostClient{Addr: strings.TrimPrefix(tb.url, "http://"), MaxConns: 1024}
	b.Cleanup(client.CloseIdleConnections)
	url := tb.url + path
	var worker atomic.Int64

	b.ReportAllocs()
	b.SetParallelism(8) // requests wait for the broker: more in flight than GOMAXPROCS
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		body := bodies[int(worker.Add(1))%len(bodies)]
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		for pb.Next() {
			req.Reset()
			req.SetRequestURI(url)
			req.Header.SetMethod(fasthttp.MethodPost)
			req.Header.SetContentType("application/json")
			req.SetBody(body)
			if err := client.Do(req, resp); err != nil {
				b.Errorf("POST %s: %v", path, err)
				return
			}
			if resp.StatusCode() != fasthttp.StatusAccepted {
				b.Errorf("POST %s: %d %s", path, resp.StatusCode(), resp.Body())
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N*eventsPerRequest)/b.Elapsed().Seconds(), "events/s")
}
