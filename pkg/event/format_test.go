package event

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAppendTime: the fast formatter gives what the generic one gives, for every year
// (fallback outside 0000–9999), every millisecond digit and non-UTC zones.
func TestAppendTime(t *testing.T) {
	t.Parallel()
	zones := []*time.Location{time.UTC, time.FixedZone("plus", 5*3600+30*60), time.FixedZone("minus", -11*3600)}
	check := func(tm time.Time) {
		t.Helper()
		want := tm.UTC().AppendFormat([]byte("x"), TimeLayout)
		require.Equal(t, string(want), string(AppendTime([]byte("x"), tm)), "%v", tm)
	}
	for _, y := range []int{-10001, -1, 0, 1, 9, 10, 99, 100, 999, 1000, 1969, 1970, 2024, 9999, 10000, 123456} {
		for _, z := range zones {
			check(time.Date(y, time.January, 1, 0, 0, 0, 0, z))
			check(time.Date(y, time.December, 31, 23, 59, 59, 999_999_999, z))
			check(time.Date(y, time.February, 28, 12, 30, 45, 1_000_000, z))
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		tm := time.Unix(r.Int64N(253402300800+62135596800)-62135596800, r.Int64N(1e9)).In(zones[r.IntN(len(zones))])
		check(tm)
	}
	check(time.Now())
	check(time.Time{})
	for _, sec := range []int64{minFastUnix - 1, minFastUnix, maxFastUnix, maxFastUnix + 1, 1 << 62, -1 << 62} {
		check(time.Unix(sec, 999_999_999))
		check(time.Unix(sec, 0))
	}

}
