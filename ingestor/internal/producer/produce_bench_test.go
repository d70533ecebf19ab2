package producer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/ingestor/internal/producer"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

// Benchmarks of Produce against the embedded broker (acks=all): many concurrent callers
// of one event each, as single-event ingest does, and callers of 100-event batches.
// Events/s is the figure to compare; it includes the broker on the same machine.

func BenchmarkProduceSingle(b *testing.B) { benchmarkProduce(b, 1, 32) }

func BenchmarkProduceBatch100(b *testing.B) { benchmarkProduce(b, 100, 8) }

func benchmarkProduce(b *testing.B, perCall, parallelism int) {
	kc := kafkatest.New(b, 12)
	wo := kafkax.DefaultWriterOptions()
	p, err := producer.New(producer.Options{Brokers: kc.Brokers, Topic: kc.Topic, Writer: wo, Timeout: 10 * time.Second}, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close() })
	key := []byte("3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8") // one project: one partition
	value := []byte(`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","payload":{"data":"` + strings.Repeat("x", 200) + `"}}`)
	b.ReportAllocs()
	b.SetParallelism(parallelism) // callers wait for the broker: more of them than GOMAXPROCS
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		msgs := make([]kafka.Message, perCall)
		for pb.Next() {
			for i := range msgs {
				msgs[i] = kafka.Message{Key: key, Value: value, Time: time.Now()}
			}
			if err := p.Produce(context.Background(), msgs, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N*perCall)/b.Elapsed().Seconds(), "events/s")
}
