// Package retry holds the backoff the services wait with between retries of a failed
// step (a fetch, a store transaction, an offset commit, a delivery): exponential, with
// "equal jitter", so that replicas that failed together do not retry together.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff returns the delay before retry number attempt (0-based): exponential from minD
// to maxD, with "equal jitter" (half fixed, half random).
func Backoff(minD, maxD time.Duration, attempt int) time.Duration {
	d := minD
	for i := 0; i < attempt && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// Sleep waits d or until ctx ends; it reports whether the full delay passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
