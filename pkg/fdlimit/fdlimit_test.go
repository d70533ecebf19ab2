package fdlimit

import (
	"math"
	"testing"
)

func TestDefaultMaxConnsIsHalfTheSoftLimitSharedAmongListeners(t *testing.T) {
	for _, c := range []struct {
		soft      uint64
		listeners int
		want      int
	}{
		{20000, 1, 10000},
		{20000, 2, 5000},
		{256, 1, 128},
		{1 << 20, 1, MaxConnsCeiling},
		{1 << 62, 2, MaxConnsCeiling}, // unlimited
		{10, 1, MinMaxConns},
		{0, 1, MaxConnsCeiling / 8}, // unknown
	} {
		if got := defaultMaxConns(c.soft, c.listeners); got != c.want {
			t.Errorf("defaultMaxConns(%d, %d) = %d, want %d", c.soft, c.listeners, got, c.want)
		}
	}
}

// Go raises the soft limit itself at start (syscall's init, Go 1.19+): the process
// starts with it at the hard limit (minus one, or equal if it already was), which is why
// this package does not raise it.
func TestTheGoRuntimeRaisedTheSoftLimit(t *testing.T) {
	soft, hard := Current()
	if soft == 0 || hard == 0 {
		t.Fatal("Getrlimit failed")
	}
	if hard != math.MaxUint64 && soft+1 < hard {
		t.Fatalf("soft limit %d well below the hard limit %d: the runtime did not raise it", soft, hard)
	}
}
