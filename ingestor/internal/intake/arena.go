package intake

import (
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// pooledArena is a batch request's arena (see encodeEvent). It goes back to arenas once
// both the handler and the producer let go of it: the producer may hold the events after
// the request was answered (a batch is retried past the request's deadline). A new arena
// per request was 94 % of the bytes the ingestor allocated under batch load, and the
// garbage collection it caused a tenth of its CPU.
type pooledArena struct {
	buf  []byte
	refs atomic.Int32
}

// arenas pools arenas by size class (bufClasses): the pool of class i holds arenas of at
// least bufClasses[i] bytes, so a 10 MiB batch reuses a 16 MiB arena instead of
// allocating one per request (issue 16 item 4: they were 8 % of the all-in-one's
// allocations while one project flooded). Larger arenas are not pooled.
var arenas [len(bufClasses)]sync.Pool // *pooledArena

// getArena returns an empty arena of at least n bytes, held by two: the handler and the
// producer each call drop once.
func getArena(n int) *pooledArena {
	var a *pooledArena
	if c := sizeClass(n); c >= 0 {
		a, _ = arenas[c].Get().(*pooledArena)
		n = bufClasses[c]
	}
	if a == nil {
		a = &pooledArena{buf: make([]byte, 0, n)}
	}
	a.buf = a.buf[:0]
	a.refs.Store(2)
	return a
}

// drop lets go of a; the last one returns it to the pool of the largest class its
// capacity covers. A nil a is a no-op.
func (a *pooledArena) drop() {
	if a == nil || a.refs.Add(-1) != 0 {
		return
	}
	for c := len(bufClasses) - 1; c >= 0; c-- {
		if cap(a.buf) >= bufClasses[c] {
			if cap(a.buf) <= 2*bufClasses[len(bufClasses)-1] {
				arenas[c].Put(a)
			}
			return
		}
	}
}

// encodeEvent appends the canonical event to arena, a buffer that belongs to the request,
// and returns it with the message's Kafka key (the project id) and value. Keys and values
// are slices of the arena, so a request allocates once for all its events; key is reused
// when it is the previous event's project's. Neither is ever written again after this
// (later appends only add bytes past them, or move to a new array), which the producer
// needs: it keeps them until the broker answered. enc is the request's.
func encodeEvent(arena []byte, ev *event.Event, key keyCache, enc *event.Encoder) (_ []byte, _ keyCache, value []byte) {
	if key.key == nil || key.project != ev.ProjectID {
		start := len(arena)
		arena = event.AppendUUID(arena, ev.ProjectID)
		key = keyCache{project: ev.ProjectID, key: arena[start:len(arena):len(arena)]}
	}
	start := len(arena)
	arena = enc.AppendJSON(arena, ev)
	return arena, key, arena[start:len(arena):len(arena)]
}

// keyCache is the Kafka key of the last project encoded.
type keyCache struct {
	project uuid.UUID
	key     []byte
}

// eventOverhead bounds the canonical encoding's bytes beyond name, payload and context:
// field names, ids, times and the Kafka key.
const eventOverhead = 256
