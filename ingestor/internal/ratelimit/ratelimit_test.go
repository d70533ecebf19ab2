package ratelimit

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

func intp(n int) *int { return &n }

// A project is refused on bytes while far under its event limit; the refusal takes
// nothing from either bucket, and its numbers are the bytes bucket's.
func TestBytesBucketRefusesAndGivesEventsBack(t *testing.T) {
	t.Parallel()
	l := New(10, 10) // events: 10/s, bucket 20
	l.SetBytes(1000, 2000)
	p, now := uuid.New(), time.Now()

	d := l.Allow(p, nil, 1, 1500, now)
	require.True(t, d.Allowed)
	require.Equal(t, ReasonBytes, d.Reason, "bytes (500/2000 left) are closer to exhaustion than events (19/20)")
	require.EqualValues(t, 1000, d.Limit)
	require.EqualValues(t, 500, d.Remaining)

	d = l.Allow(p, nil, 1, 1000, now)
	require.False(t, d.Allowed)
	require.Equal(t, ReasonBytes, d.Reason)
	require.EqualValues(t, 1000, d.Limit)
	require.EqualValues(t, 500, d.Remaining)
	require.Equal(t, 500*time.Millisecond, d.RetryAfter, "500 bytes missing at 1000/s")
	require.Equal(t, 1500*time.Millisecond, d.Reset, "1500 bytes to refill at 1000/s")

	// The refused request's event went back: 19 events are still there.
	d = l.Allow(p, nil, 19, 0, now)
	require.True(t, d.Allowed, "%+v", d)
	require.Equal(t, ReasonEvents, d.Reason)
	require.EqualValues(t, 0, d.Remaining)
	// And the refused request's bytes were never taken: 500 fit exactly.
	l2 := New(0, 1)
	l2.SetBytes(1000, 2000)
	require.True(t, l2.Allow(p, nil, 1, 1500, now).Allowed)
	require.False(t, l2.Allow(p, nil, 1, 501, now).Allowed)
	require.True(t, l2.Allow(p, nil, 1, 500, now).Allowed)
	require.False(t, l2.Allow(p, nil, 1, 1, now).Allowed)
	// Refilled at the byte rate.
	require.True(t, l2.Allow(p, nil, 1, 100, now.Add(100*time.Millisecond)).Allowed)
}

// Refused on events, the request's bytes go back.
func TestEventsRefusalGivesBytesBack(t *testing.T) {
	t.Parallel()
	l := New(1, 5) // bucket 5
	l.SetBytes(100, 1000)
	p, now := uuid.New(), time.Now()
	require.True(t, l.Allow(p, nil, 5, 10, now).Allowed)
	d := l.Allow(p, nil, 1, 500, now)
	require.False(t, d.Allowed)
	require.Equal(t, ReasonEvents, d.Reason)
	require.EqualValues(t, 1, d.Limit)
	require.Equal(t, time.Second, d.RetryAfter)
	// 990 bytes are still there.
	require.True(t, l.Allow(p, nil, 0, 990, now).Allowed)
}

// Both refuse: the numbers and Retry-After are those of the longer wait, so a client
// that waits Retry-After is not refused by the other bucket.
func TestBothRefuseLongerWaitWins(t *testing.T) {
	t.Parallel()
	l := New(1, 2) // events bucket 2
	l.SetBytes(100, 1000)
	p, now := uuid.New(), time.Now()
	require.True(t, l.Allow(p, nil, 2, 1000, now).Allowed)
	d := l.Allow(p, nil, 1, 1000, now) // events: 1 s; bytes: 10 s
	require.False(t, d.Allowed)
	require.Equal(t, ReasonBytes, d.Reason)
	require.Equal(t, 10*time.Second, d.RetryAfter)
	d = l.Allow(p, nil, 2, 50, now) // events: 2 s; bytes: 0.5 s
	require.False(t, d.Allowed)
	require.Equal(t, ReasonEvents, d.Reason)
	require.Equal(t, 2*time.Second, d.RetryAfter)
}

// The burst always admits one maximal request to an idle bucket, however low the rate.
func TestIdleBucketAdmitsAMaximalRequest(t *testing.T) {
	t.Parallel()
	l := New(5, 1000)
	l.SetBytes(10, 10<<20)
	require.Equal(t, 10<<20, Burst(10, 10<<20))
	require.Equal(t, 16<<20, Burst(8<<20, 10<<20), "two seconds' worth when that is more")
	p, now := uuid.New(), time.Now()
	d := l.Allow(p, nil, 1000, 10<<20, now)
	require.True(t, d.Allowed, "%+v", d)
	require.False(t, l.Allow(p, nil, 1, 1, now).Allowed)
}

// A project's own events/s setting scales its byte rate by the same ratio; 0 makes both
// unlimited; without a default event rate there is no ratio.
func TestProjectOverrideScalesBytes(t *testing.T) {
	t.Parallel()
	now := time.Now()
	l := New(100, 1)
	l.SetBytes(1000, 1)
	// 10× the events: 10× the bytes (bucket 20,000).
	p := uuid.New()
	require.True(t, l.Allow(p, intp(1000), 1, 20_000, now).Allowed)
	d := l.Allow(p, intp(1000), 1, 1, now)
	require.False(t, d.Allowed)
	require.Equal(t, ReasonBytes, d.Reason)
	require.EqualValues(t, 10_000, d.Limit)
	// A tenth of the events: a tenth of the bytes.
	p = uuid.New()
	d = l.Allow(p, intp(10), 1, 200, now)
	require.True(t, d.Allowed)
	d = l.Allow(p, intp(10), 1, 1, now)
	require.False(t, d.Allowed)
	require.EqualValues(t, 100, d.Limit)
	// Unlimited.
	d = l.Allow(uuid.New(), intp(0), 1_000_000, 1<<30, now)
	require.True(t, d.Allowed)
	require.Zero(t, d.Limit, "no headers for an unlimited project")
	// A changed setting makes new buckets.
	d = l.Allow(p, intp(20), 1, 400, now)
	require.True(t, d.Allowed, "%+v", d)

	noDefault := New(0, 1)
	noDefault.SetBytes(1000, 1)
	d = noDefault.Allow(uuid.New(), intp(3), 1, 2000, now)
	require.True(t, d.Allowed)
	d = noDefault.Allow(uuid.New(), intp(3), 4, 1, now) // events: 3/s, bucket 6
	require.True(t, d.Allowed)
	d = noDefault.Allow(uuid.New(), nil, 1_000_000, 2001, now)
	require.False(t, d.Allowed)
	require.Equal(t, ReasonBytes, d.Reason)
	require.EqualValues(t, 1000, d.Limit, "the byte default, unscaled")
}

// Fits takes nothing and refuses exactly when Allow would refuse on bytes.
func TestFitsTakesNothing(t *testing.T) {
	t.Parallel()
	l := New(0, 1)
	l.SetBytes(100, 1000)
	p, now := uuid.New(), time.Now()
	require.True(t, l.Fits(p, nil, 1000, now).Allowed, "an unseen project's bucket is full")
	require.True(t, l.Allow(p, nil, 1, 600, now).Allowed)
	require.True(t, l.Fits(p, nil, 400, now).Allowed)
	require.True(t, l.Fits(p, nil, 400, now).Allowed, "Fits took nothing")
	d := l.Fits(p, nil, 401, now)
	require.False(t, d.Allowed)
	require.Equal(t, ReasonBytes, d.Reason)
	require.EqualValues(t, 400, d.Remaining)
	require.Equal(t, 10*time.Millisecond, d.RetryAfter)
	require.True(t, l.Allow(p, nil, 1, 400, now).Allowed)
	require.True(t, New(10, 1).Fits(p, nil, 1<<30, now).Allowed, "bytes unlimited")
}
