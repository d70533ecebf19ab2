// Package fdlimit reads the process's open-file limit (RLIMIT_NOFILE) and derives the
// default connection caps of the public listeners from it.
//
// It does not raise the limit itself: since Go 1.19 the runtime does that for every Go
// program on Unix (syscall's init sets the soft limit to the hard limit minus one when it
// is lower; see $GOROOT/src/syscall/rlimit.go), so by the time main runs the soft limit
// already is as high as the process may go. Raising it again would only hide from
// os.StartProcess that the limit was changed. Init logs both values once at start.
package fdlimit

import (
	"log/slog"
	"sync/atomic"
	"syscall"
)

// Current returns the soft and hard RLIMIT_NOFILE of the process. On error both are 0.
func Current() (soft, hard uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0
	}
	return lim.Cur, lim.Max
}

// Bounds of the derived cap.
const (
	// MaxConnsCeiling bounds the derived cap on hosts with a huge or unlimited limit:
	// every open connection also costs buffers and a goroutine (tens of KiB), so memory,
	// not descriptors, becomes the limit there.
	MaxConnsCeiling = 65536
	// MinMaxConns is the smallest derived cap (a soft limit of a few dozen is a
	// misconfigured host; the service still starts).
	MinMaxConns = 16
)

// listeners is the number of public listeners of the process that share the budget.
var listeners atomic.Int32

// Init logs the limit once at start and records how many public listeners with a
// derived cap the process runs: 1 for the api and the ingestor, 2 for the all-in-one
// (api and ingestor share the budget), 0 for a process without one.
func Init(logger *slog.Logger, publicListeners int) {
	listeners.Store(int32(max(1, publicListeners)))
	soft, hard := Current()
	logger.Info("open file limit (RLIMIT_NOFILE; the Go runtime raises the soft limit to the hard limit at start)",
		"soft", soft, "hard", hard, "default_max_conns_per_listener", DefaultMaxConns())
}

// DefaultMaxConns is the default total connection cap of one public listener: half the
// soft limit, shared among the process's public listeners (Init), so the other half
// stays for everything else the process opens (PostgreSQL, Redis and Kafka pools, the
// admin port, log files, the all-in-one's embedded services); within [MinMaxConns,
// MaxConnsCeiling].
func DefaultMaxConns() int {
	soft, _ := Current()
	return defaultMaxConns(soft, int(max(1, listeners.Load())))
}

func defaultMaxConns(soft uint64, listeners int) int {
	if soft == 0 { // unknown
		return MaxConnsCeiling / 8
	}
	n := soft / 2 / uint64(listeners)
	return int(min(max(n, MinMaxConns), MaxConnsCeiling))
}
