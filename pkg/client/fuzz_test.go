package client

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzRetryAfter feeds arbitrary Retry-After values to the parser the retry loop waits
// on. A value it takes is never negative (a negative wait retries at once, hammering a
// server that asked for a pause); delay-seconds are exact while representable and
// saturate beyond, so a larger value never means a shorter wait; an HTTP date means the
// time until it, at least 0.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "1", " 30 ", "120", "9223372036", "9223372037", "18446744073709551615",
		"99999999999999999999", "-1", "+5", "1.5", "", "Wed, 21 Oct 2015 07:28:00 GMT",
		time.Now().Add(time.Hour).UTC().Format(http.TimeFormat), "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{}
		h.Set("Retry-After", v)
		before := time.Now()
		d, ok := retryAfter(h)
		if !ok {
			return
		}
		if d < 0 {
			t.Fatalf("Retry-After %q gives a negative wait %s", v, d)
		}
		if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
			const maxSeconds = math.MaxInt64 / int64(time.Second)
			switch {
			case int64(s) <= maxSeconds && d != time.Duration(s)*time.Second:
				t.Fatalf("Retry-After %q gives %s", v, d)
			case int64(s) > maxSeconds && d < time.Duration(maxSeconds)*time.Second:
				t.Fatalf("Retry-After %q (beyond the largest wait) gives only %s", v, d)
			}
			return
		}
		if at, err := http.ParseTime(strings.TrimSpace(v)); err == nil && d > max(0, at.Sub(before)) {
			t.Fatalf("Retry-After %q gives %s, longer than until the date", v, d)
		}
	})
}

// Found by FuzzRetryAfter: delay-seconds beyond the largest Duration (about 292 years)
// wrapped around to a negative wait, so the client retried at once; it now saturates.
func TestRetryAfterBeyondTheLargestDurationSaturates(t *testing.T) {
	for _, v := range []string{"9223372037", "9223372036854775807"} {
		if d, ok := retryAfter(http.Header{"Retry-After": {v}}); !ok || d != math.MaxInt64 {
			t.Errorf("Retry-After %s: %s, %v", v, d, ok)
		}
	}
}
