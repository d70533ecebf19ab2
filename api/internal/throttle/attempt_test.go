package throttle

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// Begin is an atomic check-and-count: of 50 concurrent attempts, exactly Free+1 are
// admitted; Succeeded takes one back (and lifts the lock it set); Allow counts atomically.
func TestBeginIsAtomic(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, rdb := range map[string]*redis.Client{"redis": redistest.Client(t), "memory": nil} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := &clock{now: time.Now()}
			l := New(rdb, "pbtest:"+uuid.NewString()+":", c.Now, logger)
			ctx := context.Background()
			var admitted atomic.Int32
			var wg sync.WaitGroup
			for range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if d, _ := l.Begin(ctx, "acct:x", policy); d == 0 {
						admitted.Add(1)
					}
				}()
			}
			wg.Wait()
			require.Equal(t, int32(policy.Free+1), admitted.Load())
			require.Equal(t, time.Second, l.Locked(ctx, "acct:x"))

			d, a := l.Begin(ctx, "acct:y", policy)
			require.Zero(t, d)
			l.Succeeded(ctx, a)
			for range policy.Free {
				d, _ := l.Begin(ctx, "acct:y", policy)
				require.Zero(t, d, "a taken-back attempt is not a failure")
			}
			d, a = l.Begin(ctx, "acct:y", policy) // sets the lock…
			require.Zero(t, d)
			require.Positive(t, l.Locked(ctx, "acct:y"))
			l.Succeeded(ctx, a) // …and taking it back lifts it
			require.Zero(t, l.Locked(ctx, "acct:y"))

			var allowed atomic.Int32
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if l.Allow(ctx, "reg", 7, time.Minute) == 0 {
						allowed.Add(1)
					}
				}()
			}
			wg.Wait()
			require.Equal(t, int32(7), allowed.Load())
			c.Advance(time.Minute)
			require.Zero(t, l.Allow(ctx, "reg", 7, time.Minute), "a new window")
		})
	}
}
