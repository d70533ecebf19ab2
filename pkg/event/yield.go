package event

import "runtime"

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

// Yielder counts the bytes of a long piece of work and yields the processor
// (runtime.Gosched) every YieldBytes. The zero value is ready.
type Yielder struct{ n int }

// Add counts n more bytes done.
func (y *Yielder) Add(n int) {
	if y.n += n; y.n >= YieldBytes {
		y.n = 0
		runtime.Gosched()
	}
}
