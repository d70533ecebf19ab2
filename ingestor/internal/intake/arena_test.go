package intake

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
)

// holdingProducer keeps the messages of every call, as the real producer does while a
// batch is retried after the request was answered, and frees them only when told.
type holdingProducer struct {
	mu    sync.Mutex
	held  [][]kafka.Message // aliasing the handler's arenas
	want  [][]string        // their values when they were handed over
	frees []func()
}

func (p *holdingProducer) ProducePaced(_ context.Context, msgs []kafka.Message, free func(), _ float64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	held := append([]kafka.Message(nil), msgs...)
	var want []string
	for _, m := range msgs {
		want = append(want, string(m.Value))
	}
	p.held, p.want, p.frees = append(p.held, held), append(p.want, want), append(p.frees, free)
	return nil
}

func batchBody(tag string, n int) []byte {
	var b strings.Builder
	b.WriteString("[")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"type":"event","name":"%s-%d","payload":{"k":"%s"}}`, tag, i, strings.Repeat(tag, 20))
	}
	b.WriteString("]")
	return []byte(b.String())
}

// TestArenaOutlivesTheRequest: events the producer still holds after their request was
// answered are never overwritten by later requests, whose arenas come from the pool
// only once the producer has freed the earlier ones (and then they do come from it).
func TestArenaOutlivesTheRequest(t *testing.T) {
	prod := &holdingProducer{}
	h := New(fuzzLimits, fuzzKeys{}, prod, ratelimit.New(0, fuzzLimits.MaxBatchEvents), slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	serve := func(body []byte) int {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(fasthttp.MethodPost)
		ctx.Request.SetRequestURI("/ingest/batch")
		ctx.Request.Header.SetContentType("application/json")
		ctx.Request.Header.Set("X-API-Key", fuzzKeyA)
		ctx.Request.SetBody(body)
		h.ServeFastHTTP(&ctx)
		return ctx.Response.StatusCode()
	}
	check := func() {
		t.Helper()
		prod.mu.Lock()
		defer prod.mu.Unlock()
		for i, msgs := range prod.held {
			for j, m := range msgs {
				if string(m.Value) != prod.want[i][j] {
					t.Fatalf("request %d event %d was overwritten while the producer held it:\n%s\nwas\n%s", i, j, m.Value, prod.want[i][j])
				}
			}
		}
	}
	// Each round: four requests whose events the producer holds, checked against later
	// requests; then the producer frees them, and the next requests may take their arenas
	// (sync.Pool may drop any one of them, so rounds repeat until one is reused).
	reused := false
	for round := 0; round < 10 && !reused; round++ {
		for i, tag := range []string{"a", "b", "c", "d"} {
			if code := serve(batchBody(tag, 10)); code != fasthttp.StatusAccepted {
				t.Fatalf("request %d: status %d", i, code)
			}
			check()
		}
		prod.mu.Lock()
		freed := prod.held
		for _, f := range prod.frees {
			f()
		}
		prod.held, prod.want, prod.frees = nil, nil, nil
		prod.mu.Unlock()
		for i := range 4 {
			serve(batchBody(strings.Repeat("z", 1+i%2), 10))
			check()
		}
		for _, msgs := range freed {
			if bytes.Contains(msgs[0].Value, []byte(`"name":"z`)) {
				reused = true
			}
		}
	}
	if !reused {
		t.Fatal("no freed arena was reused")
	}
}
