package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Maintenance is one connection for the retention job, with session timeouts of its
// own (lock_timeout, statement_timeout); Close resets them or closes the connection.
// Its statements (partition DDL included) are retention's; internal/retention decides
// their order.
type Maintenance struct {
	conn *pgxpool.Conn
}

// Maintenance acquires a connection for the retention job.
func (s *Store) Maintenance(ctx context.Context) (*Maintenance, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, mapErr("acquiring a connection", err)
	}
	return &Maintenance{conn: conn}, nil
}

// Close resets the session timeouts and returns the connection to the pool; a
// connection that cannot be reset is closed instead.
func (m *Maintenance) Close(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := m.conn.Exec(rctx, "RESET lock_timeout"); err == nil {
		if _, err := m.conn.Exec(rctx, "RESET statement_timeout"); err == nil {
			m.conn.Release()
			return
		}
	}
	_ = m.conn.Conn().Close(rctx)
	m.conn.Release()
}

// SetTimeouts sets lock_timeout and statement_timeout (0: none) for the session.
func (m *Maintenance) SetTimeouts(ctx context.Context, lock, statement time.Duration) error {
	if _, err := m.conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = %d", lock.Milliseconds())); err != nil {
		return mapErr("setting lock_timeout", err)
	}
	if _, err := m.conn.Exec(ctx, fmt.Sprintf("SET statement_timeout = %d", statement.Milliseconds())); err != nil {
		return mapErr("setting statement_timeout", err)
	}
	return nil
}

// EnsurePartitions creates the missing daily partitions of events from `from` to `to`.
func (m *Maintenance) EnsurePartitions(ctx context.Context, from, to time.Time) (int, error) {
	n, err := pgstore.EnsurePartitions(ctx, m.conn, from, to)
	return n, mapErr("ensuring partitions", err)
}

// Partition is a partition of events and its upper bound.
type Partition struct {
	Name  string
	Upper time.Time
}

// partitionsSQL lists the partitions of events (attached or detach-pending) whose upper
// bound is at or before $1, oldest first, by their bound as PostgreSQL prints it
// (re-read as timestamptz under the same session settings, so the round trip is exact;
// a DEFAULT partition has no TO bound and is never listed).
const partitionsSQL = `
SELECT c.oid::regclass::text, b.upper
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL (
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS upper
) b
WHERE i.inhparent = 'events'::regclass AND b.upper <= $1
ORDER BY b.upper`

// ExpiredPartitions lists the partitions of events wholly before cutoff.
func (m *Maintenance) ExpiredPartitions(ctx context.Context, cutoff time.Time) ([]Partition, error) {
	rows, err := m.conn.Query(ctx, partitionsSQL, cutoff)
	if err != nil {
		return nil, mapErr("listing partitions", err)
	}
	parts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Partition, error) {
		var p Partition
		return p, row.Scan(&p.Name, &p.Upper)
	})
	return parts, mapErr("listing partitions", err)
}

// RecordDrop writes p in the retention ledger (to be dropped).
func (m *Maintenance) RecordDrop(ctx context.Context, p Partition, now time.Time) error {
	_, err := m.conn.Exec(ctx, `
		INSERT INTO retention_drops (partition, upper_bound, started_at) VALUES ($1, $2, $3)
		ON CONFLICT (partition) DO UPDATE SET dropped_at = NULL, started_at = EXCLUDED.started_at`,
		p.Name, p.Upper, now)
	return mapErr("recording "+p.Name+" in the retention ledger", err)
}

// PendingDrops lists the ledger's partitions not yet dropped, oldest first.
func (m *Maintenance) PendingDrops(ctx context.Context) ([]string, error) {
	rows, err := m.conn.Query(ctx, `SELECT partition FROM retention_drops WHERE dropped_at IS NULL ORDER BY upper_bound`)
	if err != nil {
		return nil, mapErr("reading the retention ledger", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return names, mapErr("reading the retention ledger", err)
}

// AttachState reports whether name is still a partition of events and whether an
// earlier DETACH … CONCURRENTLY of it was interrupted (detach pending).
func (m *Maintenance) AttachState(ctx context.Context, name string) (attached, detachPending bool, err error) {
	var pending *bool
	err = m.conn.QueryRow(ctx, `
		SELECT i.inhdetachpending FROM pg_inherits i
		WHERE i.inhrelid = to_regclass($1) AND i.inhparent = 'events'::regclass`, name).Scan(&pending)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil
	}
	if err != nil {
		return false, false, mapErr("reading the state of "+name, err)
	}
	if pending == nil {
		return false, false, nil
	}
	return true, *pending, nil
}

// Detach detaches partition name from events: CONCURRENTLY, or FINALIZE for an
// interrupted one.
func (m *Maintenance) Detach(ctx context.Context, name string, finalize bool) error {
	stmt := "ALTER TABLE events DETACH PARTITION " + quoteQualified(name) + " CONCURRENTLY"
	if finalize {
		stmt = "ALTER TABLE events DETACH PARTITION " + quoteQualified(name) + " FINALIZE"
	}
	_, err := m.conn.Exec(ctx, stmt)
	return mapErr("detaching "+name, err)
}

// DropTable drops the (detached) table name if it exists.
func (m *Maintenance) DropTable(ctx context.Context, name string) error {
	_, err := m.conn.Exec(ctx, "DROP TABLE IF EXISTS "+quoteQualified(name))
	return mapErr("dropping "+name, err)
}

// MarkDropped records name as dropped in the ledger.
func (m *Maintenance) MarkDropped(ctx context.Context, name string, now time.Time) error {
	_, err := m.conn.Exec(ctx, `UPDATE retention_drops SET dropped_at = $2 WHERE partition = $1`, name, now)
	return mapErr("recording the drop of "+name, err)
}

// quoteQualified returns name (as regclass::text prints it: already quoted where
// needed) for use in SQL. Anything that does not look like such a name is quoted whole.
func quoteQualified(name string) string {
	for _, c := range name {
		if !(c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return pgx.Identifier{name}.Sanitize()
		}
	}
	return name
}

// PruneEventIDs deletes up to batch event_ids received before cutoff.
func (m *Maintenance) PruneEventIDs(ctx context.Context, cutoff time.Time, batch int) (int64, error) {
	tag, err := m.conn.Exec(ctx, `
		DELETE FROM event_ids WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM event_ids WHERE received_at < $1 LIMIT $2))`, cutoff, batch)
	if err != nil {
		return 0, mapErr("pruning event_ids", err)
	}
	return tag.RowsAffected(), nil
}

// ProjectRetention is a project and its own retention (nil: the global one).
type ProjectRetention struct {
	ID   uuid.UUID
	Days *int
}

// ProjectRetentions lists every project with its retention_days.
func (m *Maintenance) ProjectRetentions(ctx context.Context) ([]ProjectRetention, error) {
	rows, err := m.conn.Query(ctx, `SELECT id, retention_days FROM projects ORDER BY id`)
	if err != nil {
		return nil, mapErr("listing projects", err)
	}
	ps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ProjectRetention, error) {
		var p ProjectRetention
		return p, row.Scan(&p.ID, &p.Days)
	})
	return ps, mapErr("listing projects", err)
}

// DeleteProjectEvents deletes up to batch of project's oldest events received before
// cutoff.
func (m *Maintenance) DeleteProjectEvents(ctx context.Context, project uuid.UUID, cutoff time.Time, batch int) (int64, error) {
	tag, err := m.conn.Exec(ctx, `
		DELETE FROM events
		WHERE project_id = $1 AND received_at < $2 AND (received_at, id) IN (
			SELECT received_at, id FROM events
			WHERE project_id = $1 AND received_at < $2
			ORDER BY received_at LIMIT $3)`, project, cutoff, batch)
	if err != nil {
		return 0, mapErr("deleting old events of project "+project.String(), err)
	}
	return tag.RowsAffected(), nil
}

// DeleteRollups deletes up to batch of project's rollups before cutoff.
func (m *Maintenance) DeleteRollups(ctx context.Context, project uuid.UUID, cutoff time.Time, batch int) (int64, error) {
	tag, err := m.conn.Exec(ctx, `
		DELETE FROM event_rollups WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM event_rollups WHERE project_id = $1 AND minute < $2 LIMIT $3))`,
		project, cutoff, batch)
	if err != nil {
		return 0, mapErr("deleting old rollups of project "+project.String(), err)
	}
	return tag.RowsAffected(), nil
}
