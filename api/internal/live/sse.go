package live

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// sseRetry is the reconnect delay EventSource is told to use.
const sseRetry = "retry: 3000\n"

// replayCountCap bounds the count query that tells a far-behind client how many events
// it missed beyond the replay bounds; "missed" is then at least this.
const replayCountCap = 100_000

// ServeSSE serves GET /realtime/{projectId}/sse. After "connected", a client that sent
// Last-Event-ID (header, or ?lastEventId=) first gets the events it missed from Postgres
// (bounded by ReplayLimit, ReplayMaxBytes and ReplayWindow, with a resync when more were
// missed; see the package docs for the concurrency bound and the deadline), then
// live events, with no gap and no duplicate between the two (see the package docs).
func (h *Hub) ServeSSE(w http.ResponseWriter, r *http.Request) {
	c, _, ok := h.open(w, r, transportSSE)
	if !ok {
		return
	}
	defer h.release(c)
	s := &sseStream{h: h, c: c, w: w, rc: http.NewResponseController(w)}
	// A server ReadTimeout must not end a long-lived response: net/http cancels the
	// request when its background read hits the deadline.
	_ = s.rc.SetReadDeadline(time.Time{})
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)

	// Everything published since the subscription was confirmed is already queuing up
	// in c.queue; replaying first and then draining the queue splices the two.
	first := append([]byte(sseRetry), appendSSE(nil, "", connectedJSON(c.projectID))...)
	if !s.write(first) {
		return
	}
	if last := lastEventID(r); last != "" {
		if !s.replay(r.Context(), last) {
			return
		}
	}
	s.loop(r.Context())
}

type sseStream struct {
	h  *Hub
	c  *client
	w  http.ResponseWriter
	rc *http.ResponseController
	// replayed holds the ids sent by the replay, sorted. A replayed event can still be
	// published live afterwards (the consumer publishes after its commit, which the
	// replay query may already see); those copies are skipped.
	replayed []uuid.UUID
}

func lastEventID(r *http.Request) string {
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		return v
	}
	return r.URL.Query().Get("lastEventId")
}

func (s *sseStream) loop(ctx context.Context) {
	h, c := s.h, s.c
	ping := time.NewTicker(h.cfg.SSEPingInterval)
	defer ping.Stop()
	expiry := time.NewTimer(time.Until(c.expires))
	defer expiry.Stop()
	for {
		select {
		case <-c.queue.ready:
			if !s.deadline() {
				return
			}
			b := getBatch()
			var more bool
			b.msgs, more = c.queue.pop(b.msgs, writeBatch, writeBatchBytes)
			sent := 0
			ok := true
			for _, m := range b.msgs {
				if ok = s.writeMessage(m, &sent); !ok {
					break
				}
			}
			putBatch(b)
			if !ok {
				return
			}
			if !more {
				if missed := c.takeMissed(); missed != 0 {
					if !s.writeResync(missed, resyncReason(missed)) {
						return
					}
				}
			}
			if !s.flush() {
				return
			}
			c.tm.sent.Add(float64(sent))
			if more {
				c.queue.signal() // the rest after a turn through the select
			}
		case <-ping.C:
			if !s.write([]byte(": ping\n\n")) {
				return
			}
		case <-expiry.C:
			return // the token expired: end the stream; the client must re-authenticate
		case <-c.killed:
			if c.slowReason != "" {
				h.m.slowClosed.WithLabelValues(string(transportSSE), c.slowReason).Inc()
			}
			return
		case <-ctx.Done():
			return // the client went away
		}
	}
}

// writeMessage buffers one queued message (an event or a resync marker).
func (s *sseStream) writeMessage(m *message, sent *int) bool {
	if m.missed != 0 {
		return s.writeResync(m.missed, resyncReason(m.missed))
	}
	if m.hasCur && len(s.replayed) > 0 {
		if _, dup := slices.BinarySearchFunc(s.replayed, m.cur.id, compareUUID); dup {
			return true
		}
	}
	*sent++
	return s.bufWrite(m.sse)
}

func (s *sseStream) writeResync(missed int64, reason string) bool {
	s.h.m.resyncs.WithLabelValues(string(transportSSE), reason).Inc()
	return s.bufWrite(appendSSE(nil, "", resyncJSON(missed)))
}

// deadline arms the write deadline for the writes and the flush that follow (W5).
func (s *sseStream) deadline() bool {
	err := s.rc.SetWriteDeadline(time.Now().Add(s.h.cfg.WriteTimeout))
	return err == nil || errors.Is(err, http.ErrNotSupported)
}

func (s *sseStream) bufWrite(b []byte) bool {
	if _, err := s.w.Write(b); err != nil {
		s.writeFailed(err)
		return false
	}
	return true
}

func (s *sseStream) flush() bool {
	if err := s.rc.Flush(); err != nil {
		s.writeFailed(err)
		return false
	}
	return true
}

// write writes and flushes b under a fresh deadline.
func (s *sseStream) write(b []byte) bool {
	return s.deadline() && s.bufWrite(b) && s.flush()
}

func (s *sseStream) writeFailed(err error) {
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		s.h.m.slowClosed.WithLabelValues(string(transportSSE), slowWriteTimeout).Inc()
		s.h.logger.Info("live: SSE client stopped reading; disconnected", "timeout", s.h.cfg.WriteTimeout)
	}
}

// replay sends the events after the client's Last-Event-ID. A cursor that does not
// parse (another server's id, say) cannot be replayed from: the client is told to
// resync, with the count unknown. So is a client that finds no free replay slot within
// replayWait. The whole replay (the wait, the queries and the writes) has ReplayTimeout:
// a client that does not read is disconnected when it passes (false).
func (s *sseStream) replay(ctx context.Context, last string) bool {
	from, err := parseCursor(last)
	if err != nil {
		return s.deadline() && s.writeResync(-1, resyncReplay) && s.flush()
	}
	h, c := s.h, s.c
	ctx, cancel := context.WithTimeout(ctx, h.cfg.ReplayTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	// One write deadline for the whole replay, not a fresh one per write: a client
	// that reads a byte now and then cannot stretch it. A stream the hub kills (close,
	// revocation) or whose replay context ends is unblocked at once.
	if err := s.rc.SetWriteDeadline(deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return false
	}
	unblocked := make(chan struct{})
	stopUnblock := context.AfterFunc(ctx, func() {
		defer close(unblocked)
		_ = s.rc.SetWriteDeadline(time.Now())
	})
	defer func() {
		if !stopUnblock() {
			<-unblocked
		}
	}()
	go func() {
		select {
		case <-c.killed:
			cancel()
		case <-ctx.Done():
		}
	}()

	release, ok := h.acquireReplay(ctx, c.userID)
	if !ok {
		if ctx.Err() != nil {
			return false
		}
		return s.writeResync(-1, resyncBusy) && s.flush()
	}
	defer release()
	ok, err = s.streamReplay(ctx, from)
	if err != nil && ctx.Err() == nil {
		// A query failed before any event was written (at most the resync with the
		// count): the client must refetch.
		h.logger.Warn("live: SSE replay failed; client told to resync", "err", err)
		return s.writeResync(-1, resyncReplay) && s.flush()
	}
	return ok && s.flush()
}

// replayWait is how long a reconnect waits for a replay slot before it is sent a resync
// instead.
const replayWait = time.Second

// acquireReplay takes a replay slot for user: one of ReplayConcurrency, and at most
// ReplayPerUser of the user's, waiting up to replayWait.
func (h *Hub) acquireReplay(ctx context.Context, user uuid.UUID) (release func(), ok bool) {
	timer := time.NewTimer(replayWait)
	defer timer.Stop()
	tick := time.NewTicker(replayWait / 20)
	defer tick.Stop()
	for {
		h.connMu.Lock()
		if h.replaying[user] < h.cfg.ReplayPerUser {
			h.replaying[user]++
			h.connMu.Unlock()
			break
		}
		h.connMu.Unlock()
		select {
		case <-tick.C:
		case <-timer.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
	userDone := func() {
		h.connMu.Lock()
		if n := h.replaying[user]; n <= 1 {
			delete(h.replaying, user)
		} else {
			h.replaying[user] = n - 1
		}
		h.connMu.Unlock()
	}
	select {
	case h.replaySlots <- struct{}{}:
		h.m.replaysRunning.Inc()
		return func() {
			h.m.replaysRunning.Dec()
			<-h.replaySlots
			userDone()
		}, true
	case <-timer.C:
	case <-ctx.Done():
	}
	userDone()
	return nil, false
}

// replaySizeOverhead bounds what an event's SSE block adds to the text of its name,
// type, payload and context: the id: line with the cursor, the data: prefix, the ids,
// times and keys of the JSON object. The name is counted six times over (a control
// character is escaped as \u00XX).
const replaySizeOverhead = 512

// streamReplay writes the newest events after from that fit ReplayLimit and
// ReplayMaxBytes, oldest first, each as it is read from Postgres: the api holds one
// event at a time, never the replay. Both queries run in one REPEATABLE READ snapshot,
// taken after the subscription was confirmed: the first reads only positions and sizes
// (newest first) and picks the oldest event to replay; the second streams the events
// from there. If more were missed than fit, a resync with their count goes first. A
// rendering larger than the estimate (it should not be: compacting only removes
// spaces) cannot overrun the cap: the replay stops and the client is sent a resync with
// the count not sent.
//
// ok is false when the stream must end (a write failed: its deadline passed or the
// client went away). err is a query failure before anything was written.
func (s *sseStream) streamReplay(ctx context.Context, from cursor) (ok bool, err error) {
	h, c := s.h, s.c
	rp, err := h.store.BeginReplay(ctx)
	if err != nil {
		return false, err
	}
	defer rp.Close(ctx)
	windowStart := time.Now().Add(-h.cfg.ReplayWindow)
	scope := store.ReplayScope{Project: c.project, Since: windowStart, Labels: c.filter.labels}
	fromCur := store.Cursor{Time: from.receivedAt, ID: from.id}

	// Positions and estimated sizes, newest first.
	var (
		n         int           // events to replay
		estimated int64         // their estimated size
		boundary  *store.Cursor // the newest event not replayed, if any
	)
	err = rp.Positions(ctx, scope, fromCur, h.cfg.ReplayLimit+1, func(cur store.Cursor, size int64) bool {
		size += replaySizeOverhead
		if n == h.cfg.ReplayLimit || estimated+size > h.cfg.ReplayMaxBytes {
			boundary = &cur
			return false
		}
		n++
		estimated += size
		return true
	})
	if err != nil {
		return false, err
	}

	// Missed beyond the bounds: what lies between from and the oldest replayed event
	// (with none replayed, all that lies after from). Older than the window is missed
	// too.
	if boundary != nil || from.receivedAt.Before(windowStart) {
		var before *time.Time
		if boundary == nil && n > 0 {
			before = &windowStart // everything before the window that is after from
		}
		missed, err := rp.CountMissed(ctx, scope, fromCur, boundary, before, replayCountCap)
		if err != nil {
			return false, err
		}
		if missed > 0 {
			if !s.writeResync(missed, resyncReplay) {
				return false, nil
			}
		}
	}
	if n == 0 {
		return true, nil
	}

	// The events, oldest first, from the same snapshot: exactly the n sized above.
	lower := fromCur
	if boundary != nil {
		lower = *boundary
	}
	var (
		buf     []byte
		written int64
		sent    int
		stopped bool // the stream failed, or the rest is reported as missed
		wrote   bool
		called  bool
	)
	s.replayed = make([]uuid.UUID, 0, n)
	defer func() {
		slices.SortFunc(s.replayed, compareUUID)
		h.m.replayed.Add(float64(sent))
		c.tm.sent.Add(float64(sent))
	}()
	err = rp.Events(ctx, scope, lower, n, func(e *event.Event) error {
		called = true
		cur := cursor{receivedAt: e.ReceivedAt.UTC(), id: e.ID}
		buf = appendSSE(buf[:0], cur.String(), e.AppendJSON(make([]byte, 0, 256+len(e.Payload)+len(e.Context))))
		if written+int64(len(buf)) > h.cfg.ReplayMaxBytes {
			// Larger than estimated: the rest is missed.
			wrote, stopped = s.writeResync(int64(n-sent), resyncReplay), true
			return errReplayStop
		}
		if !s.bufWrite(buf) {
			wrote, stopped = false, true
			return errReplayStop
		}
		written += int64(len(buf))
		sent++
		s.replayed = append(s.replayed, e.ID)
		if cap(buf) > 64<<10 {
			buf = nil // do not keep an outsized event's buffer
		}
		return nil
	})
	if stopped {
		return wrote, nil
	}
	if err != nil && !called {
		return false, err // nothing written: the client is told to resync, count unknown
	}
	if err != nil {
		return s.replayFailed(sent, n, err)
	}
	return true, nil
}

// errReplayStop ends the replay's row iteration from its callback.
var errReplayStop = errors.New("replay stopped")

// replayFailed ends a replay whose query failed after some events were written: the
// rest is missed, which the client is told (unless the stream itself failed).
func (s *sseStream) replayFailed(sent, n int, err error) (bool, error) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false, nil
	}
	s.h.logger.Warn("live: SSE replay failed; client told to resync", "err", err)
	return s.writeResync(int64(n-sent), resyncReplay), nil
}

func compareUUID(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }
