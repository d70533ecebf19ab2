package retry

import (
	"context"
	"testing"
	"time"
)

func TestBackoffGrowsWithinBounds(t *testing.T) {
	minD, maxD := 100*time.Millisecond, 5*time.Second
	for attempt := range 20 {
		want := min(minD<<min(attempt, 10), maxD)
		for range 50 {
			d := Backoff(minD, maxD, attempt)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
}

func TestSleepStopsWithTheContext(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("a full sleep reported false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Fatal("a cancelled sleep reported true")
	}
	if time.Since(start) > time.Second {
		t.Fatal("a cancelled sleep waited")
	}
}
