// Package ratelimit is the ingestor's per-project token bucket. Buckets live in a bounded
// LRU, so a flood of projects cannot grow memory; limits are per ingestor process (with N
// ingestors a project may reach N × its limit — documented in the README).
package ratelimit

import (
	"math"
	"sync"
	"time"

	"github.com/google/uuid"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// Limiter holds one bucket per project.
type Limiter struct {
	defaultRate float64
	mu          sync.Mutex
	buckets     *lru.Cache[uuid.UUID, *bucket]
	minBurst    int
}

type bucket struct {
	lim   *rate.Limiter
	limit float64
}

// Decision is the outcome for one request.
type Decision struct {
	Allowed bool
	// Limit is the sustained rate (events/s); 0 means unlimited and no headers are sent.
	Limit     int
	Remaining int
	// Reset is when the bucket is full again (RateLimit-Reset); RetryAfter is when the
	// refused request would fit (Retry-After).
	Reset      time.Duration
	RetryAfter time.Duration
}

// New returns a limiter with defaultRate events/s per project (0 = unlimited). minBurst
// is the smallest bucket size, so a maximal batch always fits an idle bucket.
func New(defaultRate float64, minBurst int) *Limiter {
	c, _ := lru.New[uuid.UUID, *bucket](100_000)
	return &Limiter{defaultRate: defaultRate, buckets: c, minBurst: minBurst}
}

// Allow takes n tokens from the project's bucket. override is the project's own rate
// (nil = the default; 0 = unlimited).
func (l *Limiter) Allow(project uuid.UUID, override *int, n int, now time.Time) Decision {
	limit := l.defaultRate
	if override != nil {
		limit = float64(*override)
	}
	if limit <= 0 {
		return Decision{Allowed: true}
	}
	burst := int(math.Max(2*limit, float64(l.minBurst)))
	l.mu.Lock()
	b, ok := l.buckets.Get(project)
	if !ok || b.limit != limit {
		b = &bucket{lim: rate.NewLimiter(rate.Limit(limit), burst), limit: limit}
		l.buckets.Add(project, b)
	}
	l.mu.Unlock()

	d := Decision{Limit: int(limit)}
	r := b.lim.ReserveN(now, n)
	if !r.OK() {
		d.RetryAfter = time.Duration(float64(n) / limit * float64(time.Second))
	} else if delay := r.DelayFrom(now); delay > 0 {
		r.CancelAt(now)
		d.RetryAfter = delay
	} else {
		d.Allowed = true
	}
	tokens := b.lim.TokensAt(now)
	d.Remaining = max(0, int(tokens))
	d.Reset = time.Duration((float64(burst) - tokens) / limit * float64(time.Second))
	return d
}
