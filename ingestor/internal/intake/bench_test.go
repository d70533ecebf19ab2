package intake

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
)

// ackingProducer acknowledges at once, so a benchmark measures the handler alone.
type ackingProducer struct{}

func (ackingProducer) ProducePaced(_ context.Context, _ []kafka.Message, free func(), _ float64) error {
	if free != nil {
		free()
	}
	return nil
}

// BenchmarkServe is the handler's own work per request (no sockets, no broker): decode,
// validate, key lookup, encode for Kafka and the response.
func BenchmarkServe(b *testing.B) {
	for _, bc := range []struct {
		name, path string
		body       []byte
	}{
		{"single", "/ingest", []byte(`{"apiKey":"` + fuzzKeyA + `","type":"event","name":"load.3","payload":{"seq":12345,"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"eventId":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b"}`)},
		{"batch100", "/ingest/batch", batchBody("x", 100)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := New(DefaultLimits(), fuzzKeys{}, ackingProducer{}, ratelimit.New(0, DefaultLimits().MaxBatchEvents), slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
			var ctx fasthttp.RequestCtx
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.body)))
			for b.Loop() {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod(fasthttp.MethodPost)
				ctx.Request.SetRequestURI(bc.path)
				ctx.Request.Header.SetContentType("application/json")
				ctx.Request.Header.Set("X-API-Key", fuzzKeyA)
				ctx.Request.SetBody(bc.body)
				h.ServeFastHTTP(&ctx)
				if ctx.Response.StatusCode() != fasthttp.StatusAccepted {
					b.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
		})
	}
}
