package loadgen

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// hist is a concurrent latency histogram with microsecond resolution below 2 ms and a
// relative error under 0.1 % above: memory stays fixed however many events a run sends.
type hist struct {
	n       atomic.Int64
	max     atomic.Int64 // microseconds
	buckets [histBuckets]atomic.Int64
}

const (
	histLinear  = 2048 // exact microseconds below this
	histSub     = 1024 // buckets per power of two above
	histBuckets = histLinear + 44*histSub
)

func histIndex(us int64) int {
	if us < histLinear {
		return int(max(us, 0))
	}
	e := bits.Len64(uint64(us)) - 11 // us>>e is in [1024, 2048)
	i := histLinear + (e-1)*histSub + int(us>>e) - histSub
	return min(i, histBuckets-1)
}

// histValue is the lowest value of bucket i.
func histValue(i int) int64 {
	if i < histLinear {
		return int64(i)
	}
	e := (i-histLinear)/histSub + 1
	return int64((i-histLinear)%histSub+histSub) << e
}

func (h *hist) add(d time.Duration) {
	us := d.Microseconds()
	h.buckets[histIndex(us)].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// Percentiles of latency in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func (h *hist) count() int64 { return h.n.Load() }

func (h *hist) percentiles() Percentiles {
	n := h.n.Load()
	if n == 0 {
		return Percentiles{}
	}
	// The value of rank q·(n-1) in the sorted samples, like the sort this replaced.
	want := []float64{.50, .90, .99}
	out := make([]float64, len(want))
	var seen int64
	k := 0
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		for k < len(want) && float64(seen) > want[k]*float64(n-1) {
			out[k] = float64(histValue(i)) / 1000
			k++
		}
		if k == len(want) {
			break
		}
	}
	return Percentiles{P50: out[0], P90: out[1], P99: out[2], Max: float64(h.max.Load()) / 1000}
}
