// Package loadgen drives load at an ingestor (or at a no-op fasthttp server, to measure
// the ceiling of this machine in the same run) and reports events/s and latency
// percentiles. Its request loops are bounded in time and stop by themselves; they only
// ever target the URL given, which the bench script points at loopback.
package loadgen

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/valyala/fasthttp"
)

// Options describe one run.
type Options struct {
	URL         string        // ingestor base URL, e.g. http://127.0.0.1:3001
	APIKey      string        // project key
	Mode        string        // "single" (POST /ingest) or "batch" (POST /ingest/batch)
	BatchSize   int           // events per batch request
	Gzip        bool          // gzip batch bodies
	Connections int           // concurrent connections (one worker each)
	Duration    time.Duration // how long to send
	Rate        float64       // requests/s across all workers; 0 = as fast as possible
	PayloadSize int           // approximate payload bytes per event
}

// Result summarises a run.
type Result struct {
	Mode           string           `json:"mode"`
	Connections    int              `json:"connections"`
	BatchSize      int              `json:"batchSize"`
	Gzip           bool             `json:"gzip"`
	DurationS      float64          `json:"durationSeconds"`
	Requests       int64            `json:"requests"`
	EventsAccepted int64            `json:"eventsAccepted"`
	RequestsPerS   float64          `json:"requestsPerSecond"`
	EventsPerS     float64          `json:"eventsPerSecond"`
	Statuses       map[string]int64 `json:"statuses"`
	TransportErrs  int64            `json:"transportErrors"`
	LatencyMs      Percentiles      `json:"latencyMs"`
}

// Percentiles of request latency in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Run sends load for o.Duration and returns the summary.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Connections <= 0 {
		o.Connections = 64
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 100
	}
	if o.Mode == "" {
		o.Mode = "single"
	}
	u, err := url.Parse(o.URL)
	if err != nil || u.Host == "" {
		return Result{}, fmt.Errorf("bad -url %q", o.URL)
	}
	client := &fasthttp.HostClient{
		Addr:                          u.Host,
		MaxConns:                      o.Connections,
		ReadTimeout:                   30 * time.Second,
		WriteTimeout:                  30 * time.Second,
		MaxIdemponentCallAttempts:     1,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
	}
	path := "/ingest"
	if o.Mode == "batch" {
		path = "/ingest/batch"
	}
	payload := strings.Repeat("x", max(0, o.PayloadSize-60))

	var (
		requests, accepted, transportErrs atomic.Int64
		mu                                sync.Mutex
		statuses                          = map[string]int64{}
		latencies                         []time.Duration
	)
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var tick <-chan time.Time
	if o.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
		defer t.Stop()
		tick = t.C
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			local := make([]time.Duration, 0, 1<<14)
			localStatus := map[int]int64{}
			var body bytes.Buffer
			for i := 0; ; i++ {
				if tick != nil {
					select {
					case <-ctx.Done():
					case <-tick:
					}
				}
				if ctx.Err() != nil {
					break
				}
				body.Reset()
				n := 1
				req.Reset()
				req.Header.SetMethod(fasthttp.MethodPost)
				req.SetRequestURI("http://" + u.Host + path)
				req.Header.SetContentType("application/json")
				if o.Mode == "batch" {
					n = o.BatchSize
					req.Header.Set("X-API-Key", o.APIKey)
					writeBatch(&body, w, i, n, payload)
					if o.Gzip {
						var z bytes.Buffer
						zw := gzip.NewWriter(&z)
						_, _ = zw.Write(body.Bytes())
						_ = zw.Close()
						body = z
						req.Header.Set("Content-Encoding", "gzip")
					}
				} else {
					writeSingle(&body, o.APIKey, w, i, payload)
				}
				req.SetBodyRaw(body.Bytes())
				t0 := time.Now()
				err := client.Do(req, resp)
				local = append(local, time.Since(t0))
				requests.Add(1)
				if err != nil {
					transportErrs.Add(1)
					continue
				}
				code := resp.StatusCode()
				localStatus[code]++
				if code == fasthttp.StatusAccepted {
					accepted.Add(int64(n))
				}
			}
			mu.Lock()
			latencies = append(latencies, local...)
			for c, k := range localStatus {
				statuses[strconv.Itoa(c)] += k
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	r := Result{
		Mode: o.Mode, Connections: o.Connections, BatchSize: o.BatchSize, Gzip: o.Gzip, DurationS: elapsed,
		Requests: requests.Load(), EventsAccepted: accepted.Load(), Statuses: statuses, TransportErrs: transportErrs.Load(),
		RequestsPerS: float64(requests.Load()) / elapsed, EventsPerS: float64(accepted.Load()) / elapsed,
		LatencyMs: percentiles(latencies),
	}
	if o.Mode == "single" {
		r.BatchSize = 1
	}
	if r.Requests == 0 {
		return r, errors.New("no request was sent")
	}
	return r, nil
}

func writeSingle(b *bytes.Buffer, key string, w, i int, payload string) {
	fmt.Fprintf(b, `{"apiKey":%q,"eventId":"%s","type":"event","name":"load.%d","payload":{"worker":%d,"seq":%d,"data":%q},"context":{"sdk":"loadgen"}}`,
		key, uuid.Must(uuid.NewV7()), w%8, w, i, payload)
}

func writeBatch(b *bytes.Buffer, w, i, n int, payload string) {
	b.WriteByte('[')
	for j := range n {
		if j > 0 {
			b.WriteByte(',')
		}
		typ := "event"
		if j%10 == 0 {
			typ = "error"
		}
		fmt.Fprintf(b, `{"eventId":"%s","type":"%s","name":"load.%d","payload":{"worker":%d,"seq":%d,"j":%d,"data":%q}}`,
			uuid.Must(uuid.NewV7()), typ, j%8, w, i, j, payload)
	}
	b.WriteByte(']')
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(q * float64(len(d)-1))
		return float64(d[i].Microseconds()) / 1000
	}
	return Percentiles{P50: at(.50), P90: at(.90), P99: at(.99), Max: float64(d[len(d)-1].Microseconds()) / 1000}
}

// Print writes the human summary.
func (r Result) Print(w io.Writer) {
	fmt.Fprintf(w, "%-6s conns=%-4d batch=%-4d gzip=%-5v  %9.0f events/s  %8.0f req/s  latency ms p50=%.2f p90=%.2f p99=%.2f max=%.2f  statuses=%v transportErrors=%d\n",
		r.Mode, r.Connections, r.BatchSize, r.Gzip, r.EventsPerS, r.RequestsPerS,
		r.LatencyMs.P50, r.LatencyMs.P90, r.LatencyMs.P99, r.LatencyMs.Max, r.Statuses, r.TransportErrs)
}

// JSON encodes the result.
func (r Result) JSON() []byte { b, _ := json.Marshal(r); return b }

// ServeNoop serves a fasthttp handler that answers every request with a fixed 202 body
// and does no other work: the ceiling an ingest request can approach on this machine.
func ServeNoop(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	body := []byte(`{"success":true,"message":"Event accepted","data":{}}`)
	srv := &fasthttp.Server{
		Handler: func(c *fasthttp.RequestCtx) {
			c.SetStatusCode(fasthttp.StatusAccepted)
			c.SetContentType("application/json; charset=utf-8")
			c.SetBody(body)
		},
		NoDefaultServerHeader: true,
		ReadTimeout:           10 * time.Second,
		IdleTimeout:           60 * time.Second,
		MaxRequestBodySize:    1 << 20,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown()
	}()
	return srv.Serve(ln)
}
