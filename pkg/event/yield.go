package event

import (
	"runtime"
	"time"
)

// YieldBytes is how much input a long piece of work (decompressing, scanning or encoding
// a big request body) handles between two yields of its processor.
//
// Go preempts a goroutine that keeps its processor only after 10 ms. The ingestor's work
// on a 10 MiB body is 6-12 ms of one core, and a small request that became runnable
// meanwhile waited for all of it: on a machine of two cores, a neighbour's single event
// waited behind a flooding project's bodies (issue 16 item 4). Yielding every 256 KiB
// (about 0.2 ms of work) lets such a request run between two slices of the big one, at
// the cost of a scheduler call per slice.
const YieldBytes = 256 << 10

// Yielder counts the bytes of a long piece of work and yields the processor every
// YieldBytes: runtime.Gosched, or a sleep of Pause when it is set. The zero value yields.
//
// Gosched alone lets goroutines that are already runnable in, but the runtime polls the
// network only when it has nothing else to run (or every 10 ms): a request that just
// arrived waits until the big work is done. A short sleep leaves the processor idle for a
// moment, so it reads the network. The ingestor's bulk lane pauses (bench step 8: the
// neighbour's p99 under a flood, 3.5 ms with Gosched, 2.6 ms with 200 µs pauses, median
// of three runs each); 40 pauses make a 10 MiB body's decoding some 10 ms longer, which
// only its own sender notices.
type Yielder struct {
	Pause time.Duration
	n     int
}

// Add counts n more bytes done.
func (y *Yielder) Add(n int) {
	if y.n += n; y.n >= YieldBytes {
		y.n = 0
		if y.Pause > 0 {
			time.Sleep(y.Pause)
			return
		}
		runtime.Gosched()
	}
}
