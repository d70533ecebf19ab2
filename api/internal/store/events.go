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
	"github.com/jackc/pgx/v5/pgtype"

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
	Type string
	Name string
	// Labels filters on labels by equality; "" matches any.
	Labels event.Labels
	Since  *time.Time
	Until  *time.Time
	After  *Cursor
	Limit  int
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
	sb.WriteString(`SELECT ` + event.SelectList() + ` FROM events WHERE project_id = $1`)
	if q.Type != "" {
		sb.WriteString(" AND type = " + arg(q.Type))
	}
	if q.Name != "" {
		sb.WriteString(" AND name = " + arg(q.Name))
	}
	labelFilter(&sb, arg, &q.Labels)
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
	var r eventRow
	r.init()
	for rows.Next() {
		if err := rows.Scan(r.dest[:]...); err != nil {
			return mapErr("querying events", err)
		}
		e, err := r.event()
		if err != nil {
			return err
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

// ErrEventNotFound: the project is the caller's but holds no such event.
var ErrEventNotFound = errors.New("event not found")

// Event returns one event of a project by id; ErrEventNotFound when there is none. The
// dedup gate (event_ids) knows the receive time of every stored id, so the lookup reads
// one day's partition through the (project_id, received_at, id) index instead of every
// partition of the project. The caller has checked that the project is the user's.
func (s *Store) Event(ctx context.Context, projectID, eventID uuid.UUID) (event.Event, error) {
	rows, err := s.db.Query(ctx, `SELECT `+event.SelectList()+` FROM events
		WHERE project_id = $1 AND id = $2
		  AND received_at = (SELECT received_at FROM event_ids WHERE project_id = $1 AND id = $2)`, projectID, eventID)
	if err != nil {
		return event.Event{}, mapErr("reading an event", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return event.Event{}, mapErr("reading an event", err)
		}
		return event.Event{}, ErrEventNotFound
	}
	var r eventRow
	r.init()
	if err := rows.Scan(r.dest[:]...); err != nil {
		return event.Event{}, mapErr("reading an event", err)
	}
	return r.event()
}

// NameCount is an event name and how many events carry it.
type NameCount struct {
	Name  string
	Count int64
}

// TopErrorNames returns the most frequent names among a project's errors received in
// [since, until), most frequent first (ties by name), at most limit of them. It reads
// at most maxRows errors, the latest first (the (project_id, type, received_at) index),
// and returns how many it read: fewer than maxRows means every error of the range
// was counted. The caller has checked that the project is the user's.
func (s *Store) TopErrorNames(ctx context.Context, projectID uuid.UUID, since, until time.Time, limit, maxRows int) ([]NameCount, int64, error) {
	rows, err := s.db.Query(ctx, `
		SELECT name, count(*) AS n, sum(count(*)) OVER () AS scanned
		FROM (SELECT name FROM events
		      WHERE project_id = $1 AND type = 'error' AND received_at >= $2 AND received_at < $3
		      ORDER BY received_at DESC LIMIT $4) e
		GROUP BY name ORDER BY n DESC, name LIMIT $5`, projectID, since, until, maxRows, limit)
	if err != nil {
		return nil, 0, mapErr("counting error names", err)
	}
	defer rows.Close()
	var out []NameCount
	var scanned int64
	for rows.Next() {
		var nc NameCount
		if err := rows.Scan(&nc.Name, &nc.Count, &scanned); err != nil {
			return nil, 0, mapErr("counting error names", err)
		}
		out = append(out, nc)
	}
	return out, scanned, mapErr("counting error names", rows.Err())
}

// labelFilter appends an equality condition for every label set in ls (pkg/event's
// field table names the columns; the partial indexes of migrations/sql/00005 serve
// them).
func labelFilter(sb *strings.Builder, arg func(any) string, ls *event.Labels) {
	for l, v := range ls {
		if v != "" {
			sb.WriteString(" AND " + event.LabelField(event.Label(l)).Column + " = " + arg(v))
		}
	}
}

// eventRow scans a row of event.SelectList into an event.Event: each column into its
// field (event.Field.Ptr), except the nullable text and the jsonb ones, read into
// holders first. It is reused row after row.
type eventRow struct {
	ev    event.Event
	dest  [len(event.Fields)]any
	texts [len(event.Fields)]pgtype.Text
	jsons [len(event.Fields)][]byte
}

func (r *eventRow) init() {
	for i := range event.Fields {
		f := &event.Fields[i]
		switch p := f.Ptr(&r.ev).(type) {
		case *string:
			if f.Nullable {
				r.dest[i] = &r.texts[i]
			} else {
				r.dest[i] = p
			}
		case *[]byte:
			r.dest[i] = &r.jsons[i]
		default:
			r.dest[i] = p
		}
	}
}

// event returns the scanned row as an event of its own. jsonb comes back from Postgres
// in its own text form ({"a": 1}); it is compacted so that the event object matches what
// the ingestor answered and the live stream sent.
func (r *eventRow) event() (event.Event, error) {
	e := r.ev
	for i := range event.Fields {
		f := &event.Fields[i]
		switch p := f.Ptr(&e).(type) {
		case *string:
			if f.Nullable {
				*p = r.texts[i].String // "" when NULL
			}
		case *[]byte:
			*p = nil
			if r.jsons[i] == nil {
				continue
			}
			var c bytes.Buffer
			c.Grow(len(r.jsons[i]))
			if err := json.Compact(&c, r.jsons[i]); err != nil {
				return e, fmt.Errorf("compacting %s of %s: %w", f.Column, e.ID, err)
			}
			*p = c.Bytes()
		}
	}
	return e, nil
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
