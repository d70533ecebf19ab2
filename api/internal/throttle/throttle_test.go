package throttle

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var policy = Policy{Free: 2, Base: time.Second, Max: 8 * time.Second, Forget: time.Hour}

func TestPolicyBackoffIsExponentialAndCapped(t *testing.T) {
	t.Parallel()
	want := []time.Duration{0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	for i, w := range want {
		require.Equal(t, w, policy.lockFor(int64(i+1)), "failure %d", i+1)
	}
}

// The same rule holds in Redis, in the in-process table, and when Redis fails (the
// fallback keeps throttling instead of letting guesses through or blocking logins).
func TestLimiter(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	broken := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = broken.Close() })
	for name, rdb := range map[string]*redis.Client{"redis": redistest.Client(t), "memory": nil, "redis down": broken} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := &clock{now: time.Now()}
			l := New(rdb, "pbtest:"+uuid.NewString()+":", c.Now, logger)
			fallbacks := 0
			var mu sync.Mutex
			l.OnFallback = func() { mu.Lock(); fallbacks++; mu.Unlock() }
			ctx := context.Background()
			key := "acct:x"
			require.Zero(t, l.Locked(ctx, key))
			require.Zero(t, l.Fail(ctx, key, policy))
			require.Zero(t, l.Fail(ctx, key, policy))
			require.Zero(t, l.Locked(ctx, key), "free failures")
			require.Equal(t, time.Second, l.Fail(ctx, key, policy))
			require.Equal(t, time.Second, l.Locked(ctx, key))
			c.Advance(600 * time.Millisecond)
			require.Equal(t, 400*time.Millisecond, l.Locked(ctx, key))
			require.Zero(t, l.Locked(ctx, "acct:other"), "keys are independent")
			c.Advance(400 * time.Millisecond)
			require.Zero(t, l.Locked(ctx, key), "no permanent lockout")
			require.Equal(t, 2*time.Second, l.Fail(ctx, key, policy))
			l.Reset(ctx, key)
			require.Zero(t, l.Locked(ctx, key))
			require.Zero(t, l.Fail(ctx, key, policy), "a reset forgets the failures")
			mu.Lock()
			defer mu.Unlock()
			if name == "redis down" {
				require.Positive(t, fallbacks)
			} else {
				require.Zero(t, fallbacks)
			}
		})
	}
}

// The in-process table forgets failures after Forget and stays bounded.
func TestMemoryForgetsAndIsBounded(t *testing.T) {
	t.Parallel()
	m := newMemory(100)
	now := time.Now()
	for i := range 3 {
		m.fail("k", policy, now.Add(time.Duration(i)))
	}
	require.Positive(t, m.locked("k", now))
	later := now.Add(policy.Forget + policy.Max + time.Second)
	require.Zero(t, m.locked("k", later))
	require.Zero(t, m.fail("k", policy, later), "forgotten: a first failure again")
	for i := range 1000 {
		m.fail(uuid.NewString(), policy, later)
		_ = i
	}
	require.LessOrEqual(t, len(m.entries), 100)
}
