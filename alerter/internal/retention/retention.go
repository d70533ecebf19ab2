// Package retention keeps PostgreSQL within the retention period without ever stalling
// ingest (docs/reliability.md promise 12, pitfall X7):
//
//  1. Partitions ahead: pulseboard_ensure_event_partitions from yesterday to a week ahead.
//  2. Whole day partitions of events whose upper bound is at or before the cutoff (the
//     start of the UTC day RETENTION_DAYS ago) are recorded in retention_drops, then
//     detached with DETACH PARTITION … CONCURRENTLY (a SHARE UPDATE EXCLUSIVE lock on
//     events, which inserts never wait for), then dropped. A detach that was
//     interrupted leaves the partition "detach pending": the next run FINALIZEs it. A
//     partition detached but not dropped is found in the ledger and dropped.
//  3. event_ids older than the cutoff are pruned in bounded batches.
//  4. Per project: event_rollups older than the cutoff, and, for projects with a shorter
//     retention_days, events and rollups older than that, are deleted in bounded batches
//     of short transactions that lock only the rows they delete.
//
// Every step is idempotent, so a run that died is simply run again. Lock waits that
// could queue ahead of ingest are bounded by LockTimeout.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/failpoint"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Options configure one run.
type Options struct {
	// Days is the global retention; whole day partitions older than that are dropped.
	Days int
	// BatchSize bounds one DELETE.
	BatchSize int
	// LockTimeout bounds lock waits (lock_timeout) of everything but the detach.
	LockTimeout time.Duration
	// DetachTimeout bounds DETACH … CONCURRENTLY, which waits for every transaction
	// using events but blocks nobody while it does.
	DetachTimeout time.Duration
	// Now is the run's reference time.
	Now    time.Time
	Logger *slog.Logger
	// AfterDetach, when set, runs after each detach and before the drop (tests use it to
	// interrupt a run there).
	AfterDetach func(partition string) error
}

// Result counts what a run did.
type Result struct {
	Cutoff                time.Time
	PartitionsCreated     int
	PartitionsDropped     int
	DetachesFinalized     int
	EventIDsDeleted       int64
	RollupsDeleted        int64
	ProjectEventsDeleted  int64
	ProjectsWithRetention int
}

// Details is r for job_runs.details.
func (r Result) Details() map[string]any {
	return map[string]any{
		"cutoff":                  r.Cutoff.Format(time.RFC3339),
		"partitions_created":      r.PartitionsCreated,
		"partitions_dropped":      r.PartitionsDropped,
		"detaches_finalized":      r.DetachesFinalized,
		"event_ids_deleted":       r.EventIDsDeleted,
		"rollups_deleted":         r.RollupsDeleted,
		"project_events_deleted":  r.ProjectEventsDeleted,
		"projects_with_retention": r.ProjectsWithRetention,
	}
}

// Cutoff is the start of the UTC day `days` days before now: a partition is dropped when
// it lies wholly before it.
func Cutoff(now time.Time, days int) time.Time {
	d := now.UTC().AddDate(0, 0, -days)
	return time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, time.UTC)
}

// Run applies retention once.
func Run(ctx context.Context, pool *pgxpool.Pool, o Options) (Result, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	res := Result{Cutoff: Cutoff(o.Now, o.Days)}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("acquiring a connection: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(rctx, "RESET lock_timeout"); err == nil {
			if _, err := conn.Exec(rctx, "RESET statement_timeout"); err == nil {
				conn.Release()
				return
			}
		}
		// Never hand a connection with changed settings back to the pool.
		_ = conn.Conn().Close(rctx)
		conn.Release()
	}()
	r := &runner{conn: conn, o: o, res: &res}
	if err := r.setTimeouts(ctx, o.LockTimeout, 0); err != nil {
		return res, err
	}
	return res, r.run(ctx)
}

type runner struct {
	conn *pgxpool.Conn
	o    Options
	res  *Result
}

func (r *runner) setTimeouts(ctx context.Context, lock, statement time.Duration) error {
	if _, err := r.conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = %d", lock.Milliseconds())); err != nil {
		return fmt.Errorf("setting lock_timeout: %w", err)
	}
	if _, err := r.conn.Exec(ctx, fmt.Sprintf("SET statement_timeout = %d", statement.Milliseconds())); err != nil {
		return fmt.Errorf("setting statement_timeout: %w", err)
	}
	return nil
}

func (r *runner) run(ctx context.Context) error {
	now := r.o.Now.UTC()
	n, err := pgstore.EnsurePartitions(ctx, r.conn, now.AddDate(0, 0, -1), now.AddDate(0, 0, 7))
	if err != nil {
		return err
	}
	r.res.PartitionsCreated = n
	if err := r.dropPartitions(ctx); err != nil {
		return err
	}
	if err := r.pruneEventIDs(ctx); err != nil {
		return err
	}
	return r.perProject(ctx)
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

func (r *runner) dropPartitions(ctx context.Context) error {
	rows, err := r.conn.Query(ctx, partitionsSQL, r.res.Cutoff)
	if err != nil {
		return fmt.Errorf("listing partitions: %w", err)
	}
	type part struct {
		name  string
		upper time.Time
	}
	parts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (part, error) {
		var p part
		return p, row.Scan(&p.name, &p.upper)
	})
	if err != nil {
		return fmt.Errorf("listing partitions: %w", err)
	}
	for _, p := range parts {
		if _, err := r.conn.Exec(ctx, `
			INSERT INTO retention_drops (partition, upper_bound, started_at) VALUES ($1, $2, $3)
			ON CONFLICT (partition) DO UPDATE SET dropped_at = NULL, started_at = EXCLUDED.started_at`,
			p.name, p.upper, r.o.Now); err != nil {
			return fmt.Errorf("recording %s in the retention ledger: %w", p.name, err)
		}
	}
	// The ledger holds this run's partitions plus any an earlier run left undropped.
	rows, err = r.conn.Query(ctx, `SELECT partition FROM retention_drops WHERE dropped_at IS NULL ORDER BY upper_bound`)
	if err != nil {
		return fmt.Errorf("reading the retention ledger: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("reading the retention ledger: %w", err)
	}
	for _, name := range names {
		if err := r.dropPartition(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// dropPartition takes one ledger entry from wherever an earlier run left it to dropped.
func (r *runner) dropPartition(ctx context.Context, name string) error {
	ident := quoteQualified(name)
	var pending *bool
	err := r.conn.QueryRow(ctx, `
		SELECT i.inhdetachpending FROM pg_inherits i
		WHERE i.inhrelid = to_regclass($1) AND i.inhparent = 'events'::regclass`, name).Scan(&pending)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("reading the state of %s: %w", name, err)
	}
	if err == nil && pending != nil {
		if err := r.setTimeouts(ctx, r.o.DetachTimeout, r.o.DetachTimeout); err != nil {
			return err
		}
		var stmt string
		if *pending {
			// An earlier DETACH … CONCURRENTLY was interrupted after its first phase.
			stmt = "ALTER TABLE events DETACH PARTITION " + ident + " FINALIZE"
		} else {
			stmt = "ALTER TABLE events DETACH PARTITION " + ident + " CONCURRENTLY"
		}
		_, err := r.conn.Exec(ctx, stmt)
		if terr := r.setTimeouts(ctx, r.o.LockTimeout, 0); terr != nil && err == nil {
			err = terr
		}
		if err != nil {
			return fmt.Errorf("detaching %s: %w", name, err)
		}
		if *pending {
			r.res.DetachesFinalized++
		}
		r.o.Logger.Info("retention: partition detached", "partition", name, "finalized", *pending)
		// Failpoint: detached, not yet dropped nor recorded as dropped.
		failpoint.Hit("alerter/retention-after-detach")
		if r.o.AfterDetach != nil {
			if err := r.o.AfterDetach(name); err != nil {
				return err
			}
		}
	}
	// Detached now (or before): nothing reads it any more, so the drop's ACCESS
	// EXCLUSIVE lock is on a table no query uses.
	if _, err := r.conn.Exec(ctx, "DROP TABLE IF EXISTS "+ident); err != nil {
		return fmt.Errorf("dropping %s: %w", name, err)
	}
	// Failpoint: dropped, but the ledger still says it is to be dropped.
	failpoint.Hit("alerter/retention-after-drop")
	if _, err := r.conn.Exec(ctx, `UPDATE retention_drops SET dropped_at = $2 WHERE partition = $1`, name, r.o.Now); err != nil {
		return fmt.Errorf("recording the drop of %s: %w", name, err)
	}
	r.res.PartitionsDropped++
	r.o.Logger.Info("retention: partition dropped", "partition", name)
	return nil
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

func (r *runner) pruneEventIDs(ctx context.Context) error {
	for {
		tag, err := r.conn.Exec(ctx, `
			DELETE FROM event_ids WHERE ctid = ANY (ARRAY(
				SELECT ctid FROM event_ids WHERE received_at < $1 LIMIT $2))`, r.res.Cutoff, r.o.BatchSize)
		if err != nil {
			return fmt.Errorf("pruning event_ids: %w", err)
		}
		r.res.EventIDsDeleted += tag.RowsAffected()
		if tag.RowsAffected() < int64(r.o.BatchSize) {
			return nil
		}
	}
}

func (r *runner) perProject(ctx context.Context) error {
	rows, err := r.conn.Query(ctx, `SELECT id, retention_days FROM projects ORDER BY id`)
	if err != nil {
		return fmt.Errorf("listing projects: %w", err)
	}
	type project struct {
		id   uuid.UUID
		days *int
	}
	projects, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (project, error) {
		var p project
		return p, row.Scan(&p.id, &p.days)
	})
	if err != nil {
		return fmt.Errorf("listing projects: %w", err)
	}
	for _, p := range projects {
		if err := ctx.Err(); err != nil {
			return err
		}
		cutoff := r.res.Cutoff
		if p.days != nil && *p.days < r.o.Days {
			// The project's own, shorter retention: exact to the minute, not the day.
			cutoff = r.o.Now.UTC().AddDate(0, 0, -*p.days).Truncate(time.Minute)
			r.res.ProjectsWithRetention++
			for {
				tag, err := r.conn.Exec(ctx, `
					DELETE FROM events
					WHERE project_id = $1 AND received_at < $2 AND (received_at, id) IN (
						SELECT received_at, id FROM events
						WHERE project_id = $1 AND received_at < $2
						ORDER BY received_at LIMIT $3)`, p.id, cutoff, r.o.BatchSize)
				if err != nil {
					return fmt.Errorf("deleting old events of project %s: %w", p.id, err)
				}
				r.res.ProjectEventsDeleted += tag.RowsAffected()
				if tag.RowsAffected() < int64(r.o.BatchSize) {
					break
				}
			}
		}
		for {
			tag, err := r.conn.Exec(ctx, `
				DELETE FROM event_rollups WHERE ctid = ANY (ARRAY(
					SELECT ctid FROM event_rollups WHERE project_id = $1 AND minute < $2 LIMIT $3))`,
				p.id, cutoff, r.o.BatchSize)
			if err != nil {
				return fmt.Errorf("deleting old rollups of project %s: %w", p.id, err)
			}
			r.res.RollupsDeleted += tag.RowsAffected()
			if tag.RowsAffected() < int64(r.o.BatchSize) {
				break
			}
		}
	}
	return nil
}
