package live

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// topic is one project's Redis channel and the local clients fanned out from it. All
// fields are guarded by Hub.mu.
//
// Subscription state: requested means a SUBSCRIBE was sent and no UNSUBSCRIBE since;
// pending counts SUBSCRIBE/UNSUBSCRIBE commands whose confirmation has not arrived
// yet; confirmed (ready closed) means Redis confirmed the last SUBSCRIBE, so every
// message published from then on reaches this instance. Redis answers commands on one
// connection in order, so once pending is back to 0 after a SUBSCRIBE the channel is
// live; a "subscribe" confirmation with nothing pending is go-redis re-subscribing after
// a reconnect, and whatever was published in between is lost (docs/reliability.md R2).
type topic struct {
	channel   string
	clients   []*client
	nWS, nSSE int
	nSIO      int // Socket.IO subscriptions
	nFiltered int // clients with a label filter: the dispatcher reads each event's labels

	requested bool
	pending   int
	confirmed bool
	ready     chan struct{}
	lastCmd   time.Time
	// retry asks the reconcile loop to send SUBSCRIBE again: a joiner waited
	// SubscribeTimeout for a confirmation that never came.
	retry bool
}

func newTopic(channel string) *topic {
	return &topic{channel: channel, ready: make(chan struct{})}
}

func (t *topic) add(c *client) {
	c.topic, c.idx = t, len(t.clients)
	t.clients = append(t.clients, c)
	if c.filter.on {
		t.nFiltered++
	}
	switch c.transport {
	case transportWS:
		t.nWS++
	case transportSIO:
		t.nSIO++
	default:
		t.nSSE++
	}
}

func (t *topic) remove(c *client) {
	last := len(t.clients) - 1
	t.clients[c.idx] = t.clients[last]
	t.clients[c.idx].idx = c.idx
	t.clients[last] = nil
	t.clients = t.clients[:last]
	c.topic = nil
	if c.filter.on {
		t.nFiltered--
	}
	switch c.transport {
	case transportWS:
		t.nWS--
	case transportSIO:
		t.nSIO--
	default:
		t.nSSE--
	}
}

// unconfirm starts a new wait for a confirmation (after an UNSUBSCRIBE was decided).
func (t *topic) unconfirm() {
	if t.confirmed {
		t.confirmed = false
		t.ready = make(chan struct{})
	}
}

// join adds c to its project's topic and returns a channel closed once the topic's Redis
// subscription is confirmed. Subscribing itself is left to the reconcile loop, so no
// request ever waits on a Redis round trip while holding a lock.
func (h *Hub) join(c *client, channel string) <-chan struct{} {
	h.mu.Lock()
	t := h.topics[channel]
	if t == nil {
		t = newTopic(channel)
		h.topics[channel] = t
	}
	t.add(c)
	ready, needSub := t.ready, !t.requested
	h.mu.Unlock()
	if needSub {
		h.kickReconcile()
	}
	return ready
}

// leave removes c from its topic; the last client out makes the reconcile loop
// unsubscribe. Other clients of the project are untouched (the old backend unsubscribed
// everyone when one client left).
func (h *Hub) leave(c *client) {
	h.mu.Lock()
	t := c.topic
	if t == nil {
		h.mu.Unlock()
		return
	}
	t.remove(c)
	empty := len(t.clients) == 0
	h.mu.Unlock()
	if empty {
		h.kickReconcile()
	}
}

// resetSubscription is called when a joiner waited SubscribeTimeout for a confirmation
// that never came (a command or its answer lost with a dropped connection): forget what
// is pending and subscribe again; Redis answers a repeated SUBSCRIBE like the first.
func (h *Hub) resetSubscription(channel string) {
	h.mu.Lock()
	if t := h.topics[channel]; t != nil && t.requested && !t.confirmed {
		t.pending, t.retry = 0, true
	}
	h.mu.Unlock()
	h.kickReconcile()
}

func (h *Hub) kickReconcile() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// reconcileLoop makes the Redis subscriptions follow the topics: SUBSCRIBE for topics
// with clients, UNSUBSCRIBE for topics without. It is the only goroutine that sends
// subscription commands, so they reach Redis in the order the state changes decided.
func (h *Hub) reconcileLoop() {
	defer h.loops.Done()
	for {
		select {
		case <-h.kick:
		case <-h.stop:
			return
		}
		h.reconcile()
	}
}

// staleTopicAfter is how long an empty topic waits for outstanding confirmations
// before it is forgotten anyway (they were lost with a connection).
const staleTopicAfter = 30 * time.Second

func (h *Hub) reconcile() {
	var subs, unsubs []string
	now := time.Now()
	h.mu.Lock()
	for ch, t := range h.topics {
		switch {
		case len(t.clients) > 0 && (!t.requested || t.retry):
			// Decide under the lock: a client joining from now on waits for the
			// confirmation of this command.
			t.requested, t.retry, t.lastCmd = true, false, now
			t.pending++
			subs = append(subs, ch)
		case len(t.clients) == 0 && t.requested:
			// A client joining after this point must not be told "ready" by an old
			// confirmation: it waits for the next SUBSCRIBE's.
			t.requested, t.retry, t.lastCmd = false, false, now
			t.pending++
			t.unconfirm()
			unsubs = append(unsubs, ch)
		case len(t.clients) == 0 && (t.pending == 0 || now.Sub(t.lastCmd) > staleTopicAfter):
			delete(h.topics, ch)
		}
	}
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.SubscribeTimeout)
	defer cancel()
	// UNSUBSCRIBE first: a topic cannot be in both lists, and a SUBSCRIBE for a topic
	// emptied and re-joined goes out in the next pass, after its UNSUBSCRIBE.
	if len(unsubs) > 0 {
		if err := h.pubsub.Unsubscribe(ctx, unsubs...); err != nil {
			h.commandFailed(unsubs, "unsubscribe", err)
		}
	}
	if len(subs) > 0 {
		// On error go-redis keeps the channels and re-subscribes them when it
		// reconnects; that confirmation then completes the joiners' wait.
		if err := h.pubsub.Subscribe(ctx, subs...); err != nil {
			h.commandFailed(subs, "subscribe", err)
		}
	}
	h.mu.Lock()
	n := 0
	for _, t := range h.topics {
		if t.requested {
			n++
		}
	}
	h.mu.Unlock()
	h.m.subscriptions.Set(float64(n))
}

// commandFailed undoes the pending count of a command that did not reach Redis, so no
// confirmation is expected for it.
func (h *Hub) commandFailed(channels []string, cmd string, err error) {
	h.logger.Warn("live: Redis "+cmd+" failed; go-redis retries on reconnect", "channels", len(channels), "err", err)
	h.mu.Lock()
	for _, ch := range channels {
		if t := h.topics[ch]; t != nil && t.pending > 0 {
			t.pending--
		}
	}
	h.mu.Unlock()
}

// dispatchLoop is the single reader of the PubSub's Go channel. It never blocks on a
// client: each message goes into every local client's bounded queue with a non-blocking
// send, so go-redis never has to drop a message for us (R1).
func (h *Hub) dispatchLoop(ch <-chan any) {
	defer h.loops.Done()
	for v := range ch {
		switch v := v.(type) {
		case *redis.Message:
			h.fanOut(v)
		case *redis.Subscription:
			h.confirm(v)
		}
	}
}

func (h *Hub) fanOut(v *redis.Message) {
	var stuck []*client
	h.mu.RLock()
	t := h.topics[v.Channel]
	if t == nil || len(t.clients) == 0 {
		h.mu.RUnlock()
		return
	}
	m := newEventMessage(v.Payload, t.nWS > 0, t.nSSE > 0, t.nSIO > 0)
	var labels event.Labels
	labelsOK := false
	if t.nFiltered > 0 { // read once per event, and only when some client filters
		labels, labelsOK = event.PeekLabels([]byte(v.Payload))
	}
	for _, c := range t.clients {
		if c.muted {
			continue // a Socket.IO subscription not yet answered "subscribed" (sio.go)
		}
		if !c.filter.matches(&labels, labelsOK) {
			continue // not for this client: not missed either
		}
		if c.offer(m, h.cfg.WriteTimeout) {
			stuck = append(stuck, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range stuck {
		c.kill(closeSlow, "client too slow", slowQueueFull)
	}
}

func (h *Hub) confirm(s *redis.Subscription) {
	if s.Kind != "subscribe" && s.Kind != "unsubscribe" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.topics[s.Channel]
	if t == nil {
		return
	}
	if t.pending > 0 {
		t.pending--
	} else if s.Kind == "subscribe" && t.confirmed {
		// Nothing of ours was pending: go-redis re-subscribed after a reconnect.
		h.m.reconnects.Inc()
		h.logger.Info("live: Redis subscription restored; clients told to resync", "clients", len(t.clients))
		for _, c := range t.clients {
			if !c.muted {
				c.offerResync()
			}
		}
	}
	if s.Kind == "subscribe" && t.pending == 0 && t.requested && !t.confirmed {
		t.confirmed = true
		close(t.ready)
	}
	if len(t.clients) == 0 && !t.requested && t.pending == 0 {
		delete(h.topics, s.Channel) // unsubscribed and confirmed: forget it
	}
}
