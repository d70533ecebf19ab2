package live

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/google/uuid"
)

// Close codes the server uses for WebSocket streams (SSE streams just end).
const (
	closeTokenExpired ws.StatusCode = 4001 // access token expired or revoked: re-authenticate
	closeSlow                       = ws.StatusPolicyViolation
	closeGoingAway                  = ws.StatusGoingAway
)

// client is one live stream (WebSocket or SSE) of one project.
type client struct {
	transport transport
	tm        *transportMetrics
	project   uuid.UUID
	projectID string // canonical form, as sent in "connected"
	userID    uuid.UUID
	issuedAt  time.Time
	expires   time.Time
	session   uuid.UUID // the token's session, uuid.Nil for none; set before the client is admitted
	// filter selects the events the client gets (filter.go); guarded by Hub.mu once the
	// client joined its topic.
	filter filter

	// queue is the bounded buffer between the Redis dispatch loop (the only sender) and
	// the client's writer (the only receiver). The dispatcher never blocks on it.
	queue *msgQueue
	// missed counts messages dropped since the last resync was queued or written, -1
	// after a Redis reconnect (count unknown). Whoever swaps it to 0 owes the client a
	// resync: the dispatcher when it can queue a marker before the next message, or the
	// writer when it finds the queue drained.
	missed atomic.Int64
	// fullSince is when the dispatcher first found the queue full without a successful
	// send since; dispatcher-only.
	fullSince time.Time

	// topic and idx locate the client in its topic's client list; guarded by Hub.mu.
	topic *topic
	idx   int
	// muted: the dispatcher skips the client (guarded by Hub.mu). A Socket.IO
	// subscription is muted until its "subscribed" reply is queued, so that no event
	// precedes it.
	muted bool

	// sub marks a Socket.IO subscription: its socket (an admitted client of its own)
	// counts against MaxConnsPerUser and the connections gauge, the subscription does
	// not (Hub.attach). onKill, when set, is called once by kill (it must not block).
	sub    bool
	onKill func()

	killOnce   sync.Once
	killed     chan struct{}
	killCode   ws.StatusCode
	killReason string
	slowReason string // set by kill when the client is closed for being slow

	// forceClose, set once a WebSocket is upgraded, closes the TCP connection: Close
	// uses it when its context ends before the streams finished.
	forceMu    sync.Mutex
	forceClose func()
}

func newClient(t transport, tm *transportMetrics, project uuid.UUID, userID uuid.UUID, iat, exp time.Time, queueSize int, queueBytes int64) *client {
	return &client{
		transport: t,
		tm:        tm,
		project:   project,
		projectID: project.String(),
		userID:    userID,
		issuedAt:  iat,
		expires:   exp,
		queue:     newMsgQueue(t, queueSize, queueBytes),
		killed:    make(chan struct{}),
	}
}

// kill asks the client's writer to close the stream with code and reason (the first
// call wins); slow is the slow-client reason for the metric, or "". It never blocks.
func (c *client) kill(code ws.StatusCode, reason, slow string) {
	c.killOnce.Do(func() {
		c.killCode, c.killReason, c.slowReason = code, reason, slow
		close(c.killed)
		if c.onKill != nil {
			c.onKill()
		}
	})
}

func (c *client) setForceClose(f func()) {
	c.forceMu.Lock()
	c.forceClose = f
	c.forceMu.Unlock()
}

func (c *client) force() {
	c.forceMu.Lock()
	f := c.forceClose
	c.forceMu.Unlock()
	if f != nil {
		f()
	}
}

// offer queues m for the client without ever blocking (docs/reliability.md R1): the Redis
// receive loop must not wait for one slow client. It runs on the dispatch goroutine only.
// It reports whether the client was found stuck and should be closed as slow.
func (c *client) offer(m *message, stallLimit time.Duration) (stuck bool) {
	// A pending resync goes first, so the client learns of the gap at its position; it
	// is queued together with m or not at all.
	if n := c.missed.Swap(0); n != 0 {
		if c.queue.push(&message{missed: n, project: c.projectID}, m) {
			c.fullSince = time.Time{}
			return false
		}
		c.restoreMissed(n)
		c.restoreMissed(1) // m is dropped too
		return c.dropped(stallLimit)
	}
	if c.queue.push(m) {
		c.fullSince = time.Time{}
		return false
	}
	c.restoreMissed(1)
	return c.dropped(stallLimit)
}

// offerResync records that the client missed an unknown number of messages (a Redis
// reconnect) and queues a resync marker if there is room.
func (c *client) offerResync() {
	c.missed.Store(-1)
	if n := c.missed.Swap(0); n != 0 && !c.queue.push(&message{missed: n, project: c.projectID}) {
		c.restoreMissed(n)
	}
}

// restoreMissed adds n dropped messages back to the pending count; an unknown count
// (-1) absorbs any known one.
func (c *client) restoreMissed(n int64) {
	for {
		old := c.missed.Load()
		var next int64
		switch {
		case old < 0 || n < 0:
			next = -1
		default:
			next = old + n
		}
		if c.missed.CompareAndSwap(old, next) {
			return
		}
	}
}

func (c *client) dropped(stallLimit time.Duration) bool {
	c.tm.dropped.Inc()
	now := time.Now()
	if c.fullSince.IsZero() {
		c.fullSince = now
		return false
	}
	return now.Sub(c.fullSince) >= stallLimit
}

// takeMissed is the writer's side: when its queue is drained, a pending resync is
// written at once rather than waiting for the next published event.
func (c *client) takeMissed() int64 {
	if c.queue.len() != 0 {
		return 0
	}
	return c.missed.Swap(0)
}
