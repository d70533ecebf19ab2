package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// Cursor is a keyset position: rows strictly after it in (time DESC, id DESC) order.
type Cursor struct {
	Time time.Time
	ID   uuid.UUID
}

// EventQuery selects events of one project. Since and Until bound receivedAt
// ([Since, Until)); Limit is the page size.
type EventQuery struct {
	Type  string
	Name  string
	Since *time.Time
	Until *time.Time
	After *Cursor
	Limit int
}

// ErrStop, returned by an EachEvent callback, ends the iteration without an error.
var ErrStop = errors.New("store: stop")

// Events returns a page of a project's events, newest first by (received_at, id); see
// EachEvent.
func (s *Store) Events(ctx context.Context, projectID uuid.UUID, q EventQuery) ([]event.Event, error) {
	var evs []event.Event
	err := s.EachEvent(ctx, projectID, q, func(e *event.Event) error {
		evs = append(evs, *e)
		return nil
	})
	return evs, err
}

// EachEvent calls fn with each event of a page of a project's events, newest first by
// (received_at, id), as the rows are read: the caller decides what to keep (the query
// API stops at its response byte budget). fn returning ErrStop ends the iteration; *e
// is fn's to keep. The caller has checked that the project is the user's. jsonb comes
// back from Postgres in its own text form ({"a": 1}); it is compacted so that the event
// object matches what the ingestor answered and the live stream sent.
func (s *Store) EachEvent(ctx context.Context, projectID uuid.UUID, q EventQuery, fn func(e *event.Event) error) error {
	var sb strings.Builder
	args := []any{projectID}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	sb.WriteString(`SELECT id, project_id, type, name, payload, context, "timestamp", received_at FROM events WHERE project_id = $1`)
	if q.Type != "" {
		sb.WriteString(" AND type = " + arg(q.Type))
	}
	if q.Name != "" {
		sb.WriteString(" AND name = " + arg(q.Name))
	}
	if q.Since != nil {
		sb.WriteString(" AND received_at >= " + arg(*q.Since))
	}
	if q.Until != nil {
		sb.WriteString(" AND received_at < " + arg(*q.Until))
	}
	if q.After != nil {
		sb.WriteString(" AND (received_at, id) < (" + arg(q.After.Time) + ", " + arg(q.After.ID) + ")")
	}
	sb.WriteString(" ORDER BY received_at DESC, id DESC LIMIT " + arg(q.Limit))
	rows, err := s.db.Query(ctx, sb.String(), args...)
	if err != nil {
		return mapErr("querying events", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e              event.Event
			payload, evCtx []byte
		)
		if err := rows.Scan(&e.ID, &e.ProjectID, &e.Type, &e.Name, &payload, &evCtx, &e.Timestamp, &e.ReceivedAt); err != nil {
			return mapErr("querying events", err)
		}
		var compactP bytes.Buffer
		compactP.Grow(len(payload))
		if err := json.Compact(&compactP, payload); err != nil {
			return fmt.Errorf("compacting payload of %s: %w", e.ID, err)
		}
		e.Payload = compactP.Bytes()
		if evCtx != nil {
			var compactC bytes.Buffer
			compactC.Grow(len(evCtx))
			if err := json.Compact(&compactC, evCtx); err != nil {
				return fmt.Errorf("compacting context of %s: %w", e.ID, err)
			}
			e.Context = compactC.Bytes()
		}
		if err := fn(&e); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return mapErr("querying events", rows.Err())
}

// Bucket is one stats bucket: stored events per type.
type Bucket struct {
	Start                time.Time
	Error, Event, Metric int64
}

// Stats sums the project's rollups into buckets of width interval (aligned on the Unix
// epoch, so UTC days and hours) with start in [since, until). Only buckets with data
// are returned, in order; the caller fills the gaps.
func (s *Store) Stats(ctx context.Context, projectID uuid.UUID, interval time.Duration, since, until time.Time) ([]Bucket, error) {
	rows, err := s.db.Query(ctx, `
		SELECT date_bin($2::interval, minute, TIMESTAMPTZ 'epoch') AS bucket, type, sum(count)::bigint
		FROM event_rollups
		WHERE project_id = $1 AND minute >= $3 AND minute < $4
		GROUP BY 1, 2
		ORDER BY 1`, projectID, interval, since, until)
	if err != nil {
		return nil, mapErr("querying stats", err)
	}
	defer rows.Close()
	var out []Bucket
	for rows.Next() {
		var (
			start time.Time
			typ   string
			n     int64
		)
		if err := rows.Scan(&start, &typ, &n); err != nil {
			return nil, mapErr("querying stats", err)
		}
		if len(out) == 0 || !out[len(out)-1].Start.Equal(start) {
			out = append(out, Bucket{Start: start})
		}
		b := &out[len(out)-1]
		switch typ {
		case event.TypeError:
			b.Error += n
		case event.TypeEvent:
			b.Event += n
		case event.TypeMetric:
			b.Metric += n
		}
	}
	return out, mapErr("querying stats", rows.Err())
}

// Alert is one row of a project's alert history.
type Alert struct {
	ID          uuid.UUID
	Kind        string
	State       string
	WindowStart time.Time
	WindowEnd   time.Time
	ErrorCount  int32
	Threshold   int32
	Attempts    int32
	LastError   *string
	CreatedAt   time.Time
	SentAt      *time.Time
}

// Alerts returns a page of a project's alerts, newest first by (created_at, id).
func (s *Store) Alerts(ctx context.Context, projectID uuid.UUID, after *Cursor, limit int) ([]Alert, error) {
	q := `SELECT id, kind, state, window_start, window_end, error_count, threshold, attempts, last_error, created_at, sent_at
		FROM alerts WHERE project_id = $1`
	args := []any{projectID, limit}
	if after != nil {
		q += ` AND (created_at, id) < ($3, $4)`
		args = append(args, after.Time, after.ID)
	}
	q += ` ORDER BY created_at DESC, id DESC LIMIT $2`
	rows, err := s.db.Query(ctx, q, args...)
	if err != nil {
		return nil, mapErr("querying alerts", err)
	}
	as, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Alert, error) {
		var a Alert
		err := r.Scan(&a.ID, &a.Kind, &a.State, &a.WindowStart, &a.WindowEnd, &a.ErrorCount, &a.Threshold,
			&a.Attempts, &a.LastError, &a.CreatedAt, &a.SentAt)
		return a, err
	})
	if err != nil {
		return nil, mapErr("querying alerts", err)
	}
	return as, nil
}
