// Package ratelimit is the ingestor's per-project token buckets: one counting events and
// one counting bytes (issue 16 item 4: rate limits that count only events let 15 KB of
// gzip on the wire become 10 MiB of events). Buckets live in a bounded LRU, so a flood of
// projects cannot grow memory; limits are per ingestor process (with N ingestors a
// project may reach N × its limit — documented in the README).
package ratelimit

import (
	"math"
	"sync"
	"time"

	"github.com/google/uuid"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// Reasons a request is refused, and which bucket a Decision's numbers describe: the
// reason label of pulseboard_ingest_rate_limited_requests_total.
const (
	ReasonEvents = "events"
	ReasonBytes  = "bytes"
)

// Limiter holds the buckets of every project.
type Limiter struct {
	defaultRate  float64 // events/s; 0 = unlimited
	minBurst     int     // events
	defaultBytes float64 // bytes/s; 0 = unlimited
	minBurstB    int     // bytes
	mu           sync.Mutex
	buckets      *lru.Cache[uuid.UUID, *bucket]
}

// bucket is one project's pair of token buckets; a nil limiter is unlimited. eventRate
// and byteRate are the rates they were made for, so a changed project setting (or a
// changed default) makes new ones.
type bucket struct {
	events, bytes       *rate.Limiter
	eventRate, byteRate float64
}

// Decision is the outcome for one request.
type Decision struct {
	Allowed bool
	// Reason is the bucket the numbers below describe: the one that refused the request
	// (the events bucket when both would have), or, when it was allowed, the one closest
	// to exhaustion relative to its size (RateLimit header fields, draft-ietf-httpapi-
	// ratelimit-headers: the policy closest to being exhausted is the one reported).
	Reason string
	// Limit is the sustained rate of that bucket (events/s or bytes/s); 0 means both
	// buckets are unlimited and no headers are sent.
	Limit     int64
	Remaining int64
	// Reset is when that bucket is full again (RateLimit-Reset); RetryAfter is when the
	// refused request would fit (Retry-After).
	Reset      time.Duration
	RetryAfter time.Duration
}

// New returns a limiter with defaultRate events/s per project (0 = unlimited). minBurst
// is the smallest events bucket, so a maximal batch always fits an idle bucket. Bytes are
// unlimited until SetBytes.
func New(defaultRate float64, minBurst int) *Limiter {
	c, _ := lru.New[uuid.UUID, *bucket](100_000)
	return &Limiter{defaultRate: defaultRate, buckets: c, minBurst: minBurst}
}

// SetBytes limits every project to bytesPerSecond (0 = unlimited) as well; minBurst is the
// smallest bytes bucket: the largest charge one request can make, so a maximal request
// always fits an idle bucket. Call it before the limiter is used.
//
// A project whose own events/s setting differs from the default gets the byte rate scaled
// by the same ratio (a project allowed ten times the events is allowed ten times the
// bytes, the average event size the default implies stays the same), and none with its
// events unlimited. Without a default event rate there is no ratio: every limited project
// gets bytesPerSecond.
func (l *Limiter) SetBytes(bytesPerSecond float64, minBurst int) {
	l.defaultBytes, l.minBurstB = bytesPerSecond, minBurst
}

// rates are the event and byte rates of a project whose own setting is override (nil =
// the defaults; 0 = unlimited).
func (l *Limiter) rates(override *int) (events, bytes float64) {
	events, bytes = l.defaultRate, l.defaultBytes
	if override == nil {
		return events, bytes
	}
	o := float64(*override)
	switch {
	case o <= 0:
		return 0, 0
	case l.defaultRate > 0:
		bytes = bytes * o / l.defaultRate
	}
	return o, bytes
}

// ByteRate is the bytes/s limit of a project whose own setting is override (0 =
// unlimited).
func (l *Limiter) ByteRate(override *int) float64 {
	_, bytes := l.rates(override)
	return bytes
}

// Burst is the size of a bucket refilling at r per second: two seconds' worth, at least
// minBurst.
func Burst(r float64, minBurst int) int {
	return int(math.Min(math.Max(2*r, float64(minBurst)), math.MaxInt32))
}

// Allow takes n events and size bytes from the project's buckets, from both or from
// neither. override is the project's own events/s setting (nil = the default; 0 =
// unlimited).
func (l *Limiter) Allow(project uuid.UUID, override *int, n, size int, now time.Time) Decision {
	eventRate, byteRate := l.rates(override)
	if eventRate <= 0 && byteRate <= 0 {
		return Decision{Allowed: true}
	}
	l.mu.Lock()
	b, ok := l.buckets.Get(project)
	if !ok || b.eventRate != eventRate || b.byteRate != byteRate {
		b = &bucket{eventRate: eventRate, byteRate: byteRate}
		if eventRate > 0 {
			b.events = rate.NewLimiter(rate.Limit(eventRate), Burst(eventRate, l.minBurst))
		}
		if byteRate > 0 {
			b.bytes = rate.NewLimiter(rate.Limit(byteRate), Burst(byteRate, l.minBurstB))
		}
		l.buckets.Add(project, b)
	}
	l.mu.Unlock()

	ev := take(b.events, n, now)
	by := take(b.bytes, size, now)
	var d Decision
	switch {
	case ev.allowed && by.allowed:
		d.Allowed = true
		if by.lim != nil && (ev.lim == nil || by.fill() < ev.fill()) {
			d.describe(ReasonBytes, by)
		} else {
			d.describe(ReasonEvents, ev)
		}
	case !ev.allowed && (by.allowed || ev.retryAfter >= by.retryAfter):
		// Refused on events (or on both, events being the longer wait): the request's
		// bytes, if taken, go back.
		by.cancel(now)
		d.describe(ReasonEvents, ev)
	default:
		ev.cancel(now)
		d.describe(ReasonBytes, by)
	}
	return d
}

// Fits reports whether the project's bytes bucket holds size bytes now, taking nothing:
// a request that will be charged at least size can be refused before the work that
// finds its exact charge. A refusal is described like Allow's; an allowed Decision has
// no numbers (Limit 0), since nothing was taken yet.
func (l *Limiter) Fits(project uuid.UUID, override *int, size int, now time.Time) Decision {
	eventRate, byteRate := l.rates(override)
	if byteRate <= 0 {
		return Decision{Allowed: true}
	}
	l.mu.Lock()
	b, ok := l.buckets.Peek(project)
	l.mu.Unlock()
	if !ok || b.bytes == nil || b.eventRate != eventRate || b.byteRate != byteRate {
		return Decision{Allowed: true} // a new bucket is full, and holds any request
	}
	t := taken{lim: b.bytes, tokens: b.bytes.TokensAt(now)}
	if t.tokens >= float64(size) {
		return Decision{Allowed: true}
	}
	t.retryAfter = time.Duration((float64(size) - t.tokens) / byteRate * float64(time.Second))
	var d Decision
	d.describe(ReasonBytes, t)
	return d
}

// taken is the outcome of one bucket.
type taken struct {
	lim        *rate.Limiter // nil: unlimited
	allowed    bool
	res        *rate.Reservation // to give the tokens back; nil when none were taken
	retryAfter time.Duration
	tokens     float64 // left after the request
}

// take reserves n tokens of lim if they are there now, and otherwise takes nothing.
func take(lim *rate.Limiter, n int, now time.Time) taken {
	if lim == nil {
		return taken{allowed: true}
	}
	t := taken{lim: lim}
	r := lim.ReserveN(now, n)
	switch {
	case !r.OK(): // more than the bucket holds: cannot happen with the minimum bursts
		t.retryAfter = time.Duration(float64(n) / float64(lim.Limit()) * float64(time.Second))
	case r.DelayFrom(now) > 0:
		t.retryAfter = r.DelayFrom(now)
		r.CancelAt(now)
	default:
		t.allowed, t.res = true, r
	}
	t.tokens = lim.TokensAt(now)
	return t
}

// cancel gives back the tokens t took.
func (t *taken) cancel(now time.Time) {
	if t.res != nil {
		t.res.CancelAt(now)
		t.res = nil
	}
}

// fill is the share of the bucket left.
func (t taken) fill() float64 { return t.tokens / float64(t.lim.Burst()) }

// describe sets d's numbers from the bucket t.
func (d *Decision) describe(reason string, t taken) {
	limit := float64(t.lim.Limit())
	d.Reason = reason
	d.Limit = int64(limit)
	d.Remaining = max(0, int64(t.tokens))
	d.Reset = time.Duration((float64(t.lim.Burst()) - t.tokens) / limit * float64(time.Second))
	d.RetryAfter = t.retryAfter
}
