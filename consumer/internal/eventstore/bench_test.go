package eventstore

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// BenchmarkStore measures the store transaction (the dedup gate, COPY into events, the
// rollups, commit) for batches of new, realistic events:
//
//	go test ./internal/eventstore -run '^$' -bench BenchmarkStore -benchtime 20x
func BenchmarkStore(b *testing.B) {
	for _, size := range []int{1000, 5000} {
		b.Run("rows="+strconv.Itoa(size), func(b *testing.B) {
			tb := setup(b, 4)
			s := New(tb.pool, Options{})
			ctx := context.Background()
			// Warm up: partitions, cached statements.
			_, err := s.Store(ctx, makeEvents(b, tb.projects[0], 10, time.Now()))
			require.NoError(b, err)

			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				evs := make([]event.Event, 0, size)
				for _, p := range tb.projects {
					evs = append(evs, makeEvents(b, p, size/len(tb.projects), time.Now())...)
				}
				b.StartTimer()
				res, err := s.Store(ctx, evs)
				if err != nil {
					b.Fatal(err)
				}
				if n := res.Count(Stored); n != size {
					b.Fatalf("stored %d of %d", n, size)
				}
			}
			b.ReportMetric(float64(size*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
