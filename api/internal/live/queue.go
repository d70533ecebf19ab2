package live

import (
	"net"
	"sync"
)

// queueMinCap is the first allocation of a queue's ring. An idle client holds no ring at
// all: a queue that drains releases it (see pop), so an idle connection costs a few
// words, not QueueSize pointers.
const queueMinCap = 16

// markerBytes is what a resync marker counts against the byte cap: it is per client.
const markerBytes = 64

// ptrBytes is what every queued message costs the client beyond its (shared) encoding.
const ptrBytes = 8

// msgQueue is a client's bounded FIFO between the dispatch loop (the only pusher) and
// the client's writer (the only popper). It is bounded both in messages (maxLen) and in
// bytes (maxBytes: the encodings this client's transport writes, plus a pointer each),
// and it grows on demand: a burst the size of a consumer batch (thousands of events
// published at once) fits, yet an idle client holds nothing. A chan of that capacity
// would preallocate capacity × 8 bytes per client.
//
// push never blocks: the dispatcher must not wait for one client (docs/reliability.md R1).
type msgQueue struct {
	t        transport // which encoding the client writes, for the byte count
	maxLen   int
	maxBytes int64
	// ready has room for one signal: push sends one (without blocking) whenever it
	// queued something, so a writer waiting in select wakes up.
	ready chan struct{}

	mu    sync.Mutex
	ring  []*message // nil while empty; len(ring) is a power of two
	head  int
	n     int
	bytes int64
}

func newMsgQueue(t transport, maxLen int, maxBytes int64) *msgQueue {
	return &msgQueue{
		t:        t,
		maxLen:   maxLen,
		maxBytes: maxBytes,
		ready:    make(chan struct{}, 1),
	}
}

// size is what m counts against the byte cap.
func (q *msgQueue) size(m *message) int64 {
	switch {
	case m.missed != 0:
		return markerBytes
	case q.t == transportSSE:
		return int64(len(m.sse)) + ptrBytes
	case q.t == transportSIO:
		return int64(len(m.sio)) + ptrBytes
	default:
		return int64(len(m.ws)) + ptrBytes
	}
}

// push queues all of ms, in order, or none of them when they do not fit; it reports
// which. (A resync marker and the message it precedes go in together, so that a queue
// full in bytes does not fill up with markers.)
func (q *msgQueue) push(ms ...*message) bool {
	var add int64
	for _, m := range ms {
		add += q.size(m)
	}
	q.mu.Lock()
	if q.n+len(ms) > q.maxLen || q.bytes+add > q.maxBytes {
		q.mu.Unlock()
		return false
	}
	if q.n+len(ms) > len(q.ring) {
		q.grow(q.n + len(ms))
	}
	mask := len(q.ring) - 1
	for _, m := range ms {
		q.ring[(q.head+q.n)&mask] = m
		q.n++
	}
	q.bytes += add
	q.mu.Unlock()
	q.signal()
	return true
}

// signal wakes the writer (or leaves a wake-up for its next select).
func (q *msgQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// grow replaces the ring by one of at least want slots (a power of two, at most maxLen
// rounded up), keeping the order. Called with mu held.
func (q *msgQueue) grow(want int) {
	c := max(len(q.ring)*2, queueMinCap)
	for c < want {
		c *= 2
	}
	ring := make([]*message, c)
	if q.n > 0 {
		mask := len(q.ring) - 1
		for i := range q.n {
			ring[i] = q.ring[(q.head+i)&mask]
		}
	}
	q.ring, q.head = ring, 0
}

// pop appends to dst, oldest first, queued messages until maxN were taken or their
// encodings reach maxBytes (at least one is taken if any is queued), and reports whether
// more remain. A queue that drains releases its ring.
func (q *msgQueue) pop(dst []*message, maxN int, maxBytes int64) ([]*message, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	mask := len(q.ring) - 1
	var took int64
	for k := 0; q.n > 0 && k < maxN && (k == 0 || took < maxBytes); k++ {
		i := q.head & mask
		m := q.ring[i]
		q.ring[i] = nil
		q.head = (q.head + 1) & mask
		q.n--
		s := q.size(m)
		q.bytes -= s
		took += s
		dst = append(dst, m)
	}
	if q.n == 0 {
		q.head = 0
		if len(q.ring) > queueMinCap {
			q.ring = nil // a burst's ring is not kept for an idle client
		}
	}
	return dst, q.n > 0
}

// len is the number of queued messages.
func (q *msgQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// writeBatchBuf is a writer's scratch space for one batch; pooled, so that an idle
// connection does not keep one.
type writeBatchBuf struct {
	msgs []*message
	bufs net.Buffers
}

var batchPool = sync.Pool{New: func() any {
	return &writeBatchBuf{msgs: make([]*message, 0, writeBatch), bufs: make(net.Buffers, 0, writeBatch)}
}}

func getBatch() *writeBatchBuf { return batchPool.Get().(*writeBatchBuf) }

// putBatch returns b to the pool without keeping the sent messages alive.
func putBatch(b *writeBatchBuf) {
	clear(b.msgs)
	clear(b.bufs[:cap(b.bufs)])
	b.msgs, b.bufs = b.msgs[:0], b.bufs[:0]
	batchPool.Put(b)
}
