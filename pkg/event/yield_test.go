package event

import (
	"testing"
	"time"
)

// A Yielder with a Pause sleeps it once per YieldBytes of work, and not before.
func TestYielderPausesEveryYieldBytes(t *testing.T) {
	t.Parallel()
	long := Yielder{Pause: time.Second}
	start := time.Now()
	long.Add(YieldBytes - 1)
	if d := time.Since(start); d >= long.Pause {
		t.Fatalf("paused (%v) before YieldBytes of work", d)
	}

	y := Yielder{Pause: 20 * time.Millisecond}
	start = time.Now()
	for range 3 {
		y.Add(YieldBytes / 2)
		y.Add(YieldBytes / 2)
	}
	if d := time.Since(start); d < 3*y.Pause {
		t.Fatalf("3 × YieldBytes took %v: fewer than 3 pauses of %v", d, y.Pause)
	}
}
