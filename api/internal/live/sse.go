package live

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// sseRetry is the reconnect delay EventSource is told to use.
const sseRetry = "retry: 3000\n"

// replayCountCap bounds the count query that tells a far-behind client how many events
// it missed beyond the replay bounds; "missed" is then at least this.
const replayCountCap = 100_000

// ServeSSE serves GET /realtime/{projectId}/sse. After "connected", a client that sent
// Last-Event-ID (header, or ?lastEventId=) first gets the events it missed from Postgres
// (bounded by ReplayLimit and ReplayWindow, with a resync when more were missed), then
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
// resync, with the count unknown.
func (s *sseStream) replay(ctx context.Context, last string) bool {
	from, err := parseCursor(last)
	if err != nil {
		return s.deadline() && s.writeResync(-1, resyncReplay) && s.flush()
	}
	events, missed, err := s.h.replay(ctx, s.c.project, from)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		s.h.logger.Warn("live: SSE replay failed; client told to resync", "err", err)
		missed = -1
		events = nil
	}
	if !s.deadline() {
		return false
	}
	if missed != 0 {
		if !s.writeResync(missed, resyncReplay) {
			return false
		}
	}
	buf := make([]byte, 0, 4096)
	for i, e := range events {
		buf = appendSSE(buf, e.cur.String(), e.json)
		// Write in chunks under fresh deadlines: a replay is up to ReplayLimit events.
		if len(buf) >= 32<<10 || i == len(events)-1 {
			if !s.deadline() || !s.bufWrite(buf) {
				return false
			}
			buf = buf[:0]
		}
		s.replayed = append(s.replayed, e.cur.id)
	}
	slices.SortFunc(s.replayed, compareUUID)
	s.h.m.replayed.Add(float64(len(events)))
	s.c.tm.sent.Add(float64(len(events)))
	return s.flush()
}

func compareUUID(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }

// replayedEvent is one event read back from Postgres.
type replayedEvent struct {
	cur  cursor
	json []byte
}

// replay reads the events of project after from, oldest first. It keeps the newest
// ReplayLimit events received within ReplayWindow: those are what a live view needs,
// and they continue seamlessly into the live events. missed counts the events after
// from that are not replayed (older than the window, or beyond the limit), capped at
// replayCountCap.
func (h *Hub) replay(ctx context.Context, project uuid.UUID, from cursor) (events []replayedEvent, missed int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.WriteTimeout)
	defer cancel()
	windowStart := time.Now().Add(-h.cfg.ReplayWindow)
	rows, err := h.pool.Query(ctx, `
		SELECT id, type, name, payload, context, "timestamp", received_at
		FROM events
		WHERE project_id = $1 AND received_at >= $2 AND (received_at, id) > ($3, $4)
		ORDER BY received_at DESC, id DESC
		LIMIT $5`, project, windowStart, from.receivedAt, from.id, h.cfg.ReplayLimit+1)
	if err != nil {
		return nil, 0, fmt.Errorf("querying events to replay: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var e event.Event
		var payload, ctxJSON []byte
		if err := rows.Scan(&e.ID, &e.Type, &e.Name, &payload, &ctxJSON, &e.Timestamp, &e.ReceivedAt); err != nil {
			return nil, 0, fmt.Errorf("scanning events to replay: %w", err)
		}
		e.ProjectID = project
		// jsonb prints with spaces; the live messages are compact.
		if e.Payload, err = compactJSON(payload); err != nil {
			return nil, 0, err
		}
		if ctxJSON != nil {
			if e.Context, err = compactJSON(ctxJSON); err != nil {
				return nil, 0, err
			}
		}
		events = append(events, replayedEvent{
			cur:  cursor{receivedAt: e.ReceivedAt.UTC(), id: e.ID},
			json: e.AppendJSON(make([]byte, 0, 256+len(e.Payload)+len(e.Context))),
		})
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("querying events to replay: %w", err)
	}
	truncated := len(events) > h.cfg.ReplayLimit
	if truncated {
		events = events[:h.cfg.ReplayLimit]
	}
	slices.Reverse(events)
	if !truncated && !from.receivedAt.Before(windowStart) {
		return events, 0, nil // everything after from is in the replay
	}
	// Count what lies between from and the first replayed event (or, with none, all
	// that lies after from: it is all older than the window).
	var bound *cursor
	if len(events) > 0 {
		bound = &events[0].cur
	}
	q := `SELECT count(*) FROM (SELECT 1 FROM events
		WHERE project_id = $1 AND (received_at, id) > ($2, $3)`
	args := []any{project, from.receivedAt, from.id}
	if bound != nil {
		q += ` AND (received_at, id) < ($4, $5)`
		args = append(args, bound.receivedAt, bound.id)
	}
	q += fmt.Sprintf(` LIMIT %d) s`, replayCountCap)
	if err := h.pool.QueryRow(ctx, q, args...).Scan(&missed); err != nil {
		return nil, 0, fmt.Errorf("counting missed events: %w", err)
	}
	return events, missed, nil
}

func compactJSON(b []byte) ([]byte, error) {
	var out bytes.Buffer
	out.Grow(len(b))
	if err := json.Compact(&out, b); err != nil {
		return nil, fmt.Errorf("compacting stored JSON: %w", err)
	}
	return out.Bytes(), nil
}
