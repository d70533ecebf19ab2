package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// The SSE replay's queries (api/internal/live, sse.go): the live package decides what to
// replay and writes it; the SQL and its driver errors are here (issue 19 item 2). Every
// query of one replay runs in one REPEATABLE READ, READ ONLY snapshot, taken after the
// stream's subscription was confirmed (see the live package docs, "SSE replay and the
// splice").

// ReplayScope is what a replay reads: one project's events received at or after Since
// (the replay window) that carry the labels set in Labels.
type ReplayScope struct {
	Project uuid.UUID
	Since   time.Time
	Labels  event.Labels
}

// Replay is one replay's snapshot. Close it.
type Replay struct {
	tx pgx.Tx
}

// BeginReplay takes the snapshot of a replay.
func (s *Store) BeginReplay(ctx context.Context) (*Replay, error) {
	tx, err := s.db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, mapErr("starting the replay snapshot", err)
	}
	return &Replay{tx: tx}, nil
}

// Close ends the snapshot. A read-only snapshot has nothing to undo; ending it is
// bounded, so that a stuck server cannot hold the stream.
func (r *Replay) Close(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = r.tx.Rollback(rctx)
}

// replayQuery is a query of a replay being built: its text and its arguments.
type replayQuery struct {
	sb   strings.Builder
	args []any
}

// arg adds v to the arguments and returns its placeholder.
func (q *replayQuery) arg(v any) string {
	q.args = append(q.args, v)
	return "$" + strconv.Itoa(len(q.args))
}

// from appends the FROM clause and the conditions of the scope's project and labels.
func (q *replayQuery) from(sc *ReplayScope) {
	q.sb.WriteString(" FROM events WHERE project_id = " + q.arg(sc.Project))
	labelFilter(&q.sb, q.arg, &sc.Labels)
}

// replaySizeSQL is an upper bound of what an event's encoding adds beyond a fixed
// overhead, from its columns: the jsonb text (which compacting only shrinks), the name
// and every label counted six times over (a control character is escaped as \u00XX),
// and each label's member name.
var replaySizeSQL = func() string {
	var sb strings.Builder
	sb.WriteString("octet_length(payload::text) + coalesce(octet_length(context::text), 0) + 6 * octet_length(name) + octet_length(type)")
	for l := event.Label(0); l < event.NumLabels; l++ {
		f := event.LabelField(l)
		fmt.Fprintf(&sb, " + coalesce(6 * octet_length(%s) + %d, 0)", f.Column, len(f.Wire)+4)
	}
	return sb.String()
}()

// Positions calls fn with the position and the estimated size (see replaySizeSQL) of
// each event of the scope after from, newest first, at most limit; fn returning false
// stops.
func (r *Replay) Positions(ctx context.Context, sc ReplayScope, from Cursor, limit int, fn func(c Cursor, size int64) bool) error {
	var q replayQuery
	q.sb.WriteString("SELECT received_at, id, " + replaySizeSQL)
	q.from(&sc)
	q.sb.WriteString(" AND received_at >= " + q.arg(sc.Since) + " AND (received_at, id) > (" + q.arg(from.Time) + ", " + q.arg(from.ID) + ")")
	q.sb.WriteString(" ORDER BY received_at DESC, id DESC LIMIT " + q.arg(limit))
	rows, err := r.tx.Query(ctx, q.sb.String(), q.args...)
	if err != nil {
		return mapErr("sizing the events to replay", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c Cursor
		var size int64
		if err := rows.Scan(&c.Time, &c.ID, &size); err != nil {
			return mapErr("sizing the events to replay", err)
		}
		c.Time = c.Time.UTC()
		if !fn(c, size) {
			return nil
		}
	}
	return mapErr("sizing the events to replay", rows.Err())
}

// CountMissed counts, up to limit, the events of the project with the scope's labels
// after from (whatever the window) that are at or before upTo when set, else before
// before when set.
func (r *Replay) CountMissed(ctx context.Context, sc ReplayScope, from Cursor, upTo *Cursor, before *time.Time, limit int) (int64, error) {
	var q replayQuery
	q.sb.WriteString("SELECT count(*) FROM (SELECT 1")
	q.from(&sc)
	q.sb.WriteString(" AND (received_at, id) > (" + q.arg(from.Time) + ", " + q.arg(from.ID) + ")")
	switch {
	case upTo != nil:
		q.sb.WriteString(" AND (received_at, id) <= (" + q.arg(upTo.Time) + ", " + q.arg(upTo.ID) + ")")
	case before != nil:
		q.sb.WriteString(" AND received_at < " + q.arg(*before))
	}
	q.sb.WriteString(" LIMIT " + q.arg(limit) + ") s")
	var n int64
	if err := r.tx.QueryRow(ctx, q.sb.String(), q.args...).Scan(&n); err != nil {
		return 0, mapErr("counting missed events", err)
	}
	return n, nil
}

// Events calls fn with each of the first n events of the scope after after, oldest
// first, as they are read (one at a time). An error fn returns ends the iteration and is
// returned as it is.
func (r *Replay) Events(ctx context.Context, sc ReplayScope, after Cursor, n int, fn func(e *event.Event) error) error {
	var q replayQuery
	q.sb.WriteString("SELECT " + event.SelectList())
	q.from(&sc)
	q.sb.WriteString(" AND received_at >= " + q.arg(sc.Since) + " AND (received_at, id) > (" + q.arg(after.Time) + ", " + q.arg(after.ID) + ")")
	q.sb.WriteString(" ORDER BY received_at, id LIMIT " + q.arg(n))
	rows, err := r.tx.Query(ctx, q.sb.String(), q.args...)
	if err != nil {
		return mapErr("querying events to replay", err)
	}
	defer rows.Close()
	var row eventRow
	row.init()
	for rows.Next() {
		if err := rows.Scan(row.dest[:]...); err != nil {
			return mapErr("scanning events to replay", err)
		}
		e, err := row.event()
		if err != nil {
			return err
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return mapErr("querying events to replay", rows.Err())
}
