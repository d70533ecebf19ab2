package client

import (
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// acceptDoer answers every request 202 after reading its body, with no network: what is
// left is the client's own cost per event (encode, queue, batch, body, results).
type acceptDoer struct{}

func (acceptDoer) Do(r *http.Request) (*http.Response, error) {
	_, _ = io.Copy(io.Discard, r.Body)
	_ = r.Body.Close()
	return &http.Response{StatusCode: http.StatusAccepted, Body: http.NoBody, Request: r}, nil
}

// BenchmarkEnqueueBatch100 is the load generator's path through the client: producers
// enqueue events with a RawPayload and their own ids (EnqueueWait), the senders batch them
// by 100 and send.
// ns/op and allocs/op are per event.
func BenchmarkEnqueueBatch100(b *testing.B) {
	for _, producers := range []int{1, 2} {
		b.Run("producers="+strconv.Itoa(producers), func(b *testing.B) {
			c, err := New(Options{Endpoint: "http://bench.invalid", APIKey: "k", MaxBatchEvents: 100,
				FlushInterval: 5 * time.Millisecond, QueueSize: 4096, Concurrency: 8, Doer: acceptDoer{},
				OnResult: func(Result) {}})
			if err != nil {
				b.Fatal(err)
			}
			pad := strings.Repeat("x", 140)
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for p := range producers {
				wg.Go(func() {
					buf := make([]byte, 0, 256)
					now := time.Now()
					for i := p; i < b.N; i += producers {
						buf = append(buf[:0], `{"seq":`...)
						buf = strconv.AppendInt(buf, int64(i), 10)
						buf = append(buf, `,"data":"`...)
						buf = append(buf, pad...)
						buf = append(buf, `"}`...)
						id := uuid.UUID{0x01, 0x9a, 6: 0x70, 8: 0x80}
						binary.BigEndian.PutUint64(id[8:], uint64(i)|1<<63)
						if err := c.EnqueueWait(context.Background(), Event{Type: TypeEvent, Name: "load.1", RawPayload: buf, Timestamp: now, EventID: id}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := c.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if s := c.Stats(); s.Sent != uint64(b.N) {
				b.Fatalf("sent %d of %d events", s.Sent, b.N)
			}
		})
	}
}

// BenchmarkEnqueueBatch100Gzip is BenchmarkEnqueueBatch100 with gzip request bodies.
func BenchmarkEnqueueBatch100Gzip(b *testing.B) {
	c, err := New(Options{Endpoint: "http://bench.invalid", APIKey: "k", MaxBatchEvents: 100, Gzip: true,
		FlushInterval: 5 * time.Millisecond, QueueSize: 4096, Concurrency: 8, Doer: acceptDoer{}})
	if err != nil {
		b.Fatal(err)
	}
	pad := strings.Repeat("x", 140)
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		payload := `{"seq":` + strconv.Itoa(i) + `,"data":"` + pad + `"}`
		if err := c.EnqueueWait(context.Background(), Event{Type: TypeEvent, Name: "load.1", RawPayload: []byte(payload), Timestamp: now}); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
}
