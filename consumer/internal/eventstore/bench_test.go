package eventstore

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// BenchmarkStore measures the store transaction (COPY into staging + the dedup/insert/
// rollup statement + commit) for batches of new, realistic events, for each way of
// providing the staging table (see the package doc for the choice):
//
//	go test ./internal/eventstore -run '^$' -bench BenchmarkStore -benchtime 20x
func BenchmarkStore(b *testing.B) {
	modes := []struct {
		name string
		mode stagingMode
	}{
		{"staging=per-tx-delete-rows", stagingPerTx},
		{"staging=per-tx-drop", stagingDropPerTx},
		{"staging=after-connect", stagingAfterConnect},
	}
	for _, size := range []int{1000, 5000} {
		for _, m := range modes {
			b.Run("rows="+strconv.Itoa(size)+"/"+m.name, func(b *testing.B) {
				tb := setup(b, 4)
				pool := tb.pool
				if m.mode == stagingAfterConnect {
					var err error
					pool, err = pgstore.Open(context.Background(), tb.url, pgstore.PoolOptions{AfterConnect: createStaging})
					require.NoError(b, err)
					defer pool.Close()
				}
				s := New(pool, Options{})
				s.mode = m.mode
				ctx := context.Background()
				// Warm up: partitions, the connection's staging table, cached statements.
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
}
