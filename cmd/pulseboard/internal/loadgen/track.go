package loadgen

import "sync/atomic"

// Per-event state indexed by sequence number, in chunks allocated on first use, so that
// memory follows the events actually sent and concurrent writers need no lock.
const (
	chunkBits = 16
	chunkLen  = 1 << chunkBits
	maxChunks = 1 << 14 // 2^30 events; later ones are not tracked
)

// sendTimes holds when each event was handed to the client (nanoseconds since the run
// started, plus one so that zero means unknown).
type sendTimes struct {
	chunks [maxChunks]atomic.Pointer[[chunkLen]atomic.Int64]
}

func (s *sendTimes) set(seq uint64, ns int64) {
	c := seq >> chunkBits
	if c >= maxChunks {
		return
	}
	p := s.chunks[c].Load()
	if p == nil {
		s.chunks[c].CompareAndSwap(nil, new([chunkLen]atomic.Int64))
		p = s.chunks[c].Load()
	}
	p[seq&(chunkLen-1)].Store(ns + 1)
}

func (s *sendTimes) get(seq uint64) (int64, bool) {
	c := seq >> chunkBits
	if c >= maxChunks {
		return 0, false
	}
	p := s.chunks[c].Load()
	if p == nil {
		return 0, false
	}
	v := p[seq&(chunkLen-1)].Load()
	return v - 1, v != 0
}

// bitset marks events, e.g. the ones already delivered, to count each once.
type bitset struct {
	chunks [maxChunks]atomic.Pointer[[chunkLen / 64]atomic.Uint64]
}

// set marks seq and reports whether it was unmarked.
func (b *bitset) set(seq uint64) bool {
	c := seq >> chunkBits
	if c >= maxChunks {
		return false
	}
	p := b.chunks[c].Load()
	if p == nil {
		b.chunks[c].CompareAndSwap(nil, new([chunkLen / 64]atomic.Uint64))
		p = b.chunks[c].Load()
	}
	w, bit := &p[(seq&(chunkLen-1))/64], uint64(1)<<(seq%64)
	for {
		old := w.Load()
		if old&bit != 0 {
			return false
		}
		if w.CompareAndSwap(old, old|bit) {
			return true
		}
	}
}
