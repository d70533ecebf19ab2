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
// could queue ahead of ingest are bounded by LockTimeout. The statements themselves
// (partition DDL included) are internal/store's Maintenance; this package decides
// what runs when.
package retention

import (
	"context"
	"log/slog"
	"time"

	"github.com/pulseboard/pulseboard/alerter/internal/store"
	"github.com/pulseboard/pulseboard/pkg/failpoint"
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
func Run(ctx context.Context, st *store.Store, o Options) (Result, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	res := Result{Cutoff: Cutoff(o.Now, o.Days)}
	m, err := st.Maintenance(ctx)
	if err != nil {
		return res, err
	}
	defer m.Close(ctx)
	r := &runner{m: m, o: o, res: &res}
	if err := m.SetTimeouts(ctx, o.LockTimeout, 0); err != nil {
		return res, err
	}
	return res, r.run(ctx)
}

type runner struct {
	m   *store.Maintenance
	o   Options
	res *Result
}

func (r *runner) run(ctx context.Context) error {
	now := r.o.Now.UTC()
	n, err := r.m.EnsurePartitions(ctx, now.AddDate(0, 0, -1), now.AddDate(0, 0, 7))
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

func (r *runner) dropPartitions(ctx context.Context) error {
	parts, err := r.m.ExpiredPartitions(ctx, r.res.Cutoff)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if err := r.m.RecordDrop(ctx, p, r.o.Now); err != nil {
			return err
		}
	}
	// The ledger holds this run's partitions plus any an earlier run left undropped.
	names, err := r.m.PendingDrops(ctx)
	if err != nil {
		return err
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
	attached, pending, err := r.m.AttachState(ctx, name)
	if err != nil {
		return err
	}
	if attached {
		if err := r.m.SetTimeouts(ctx, r.o.DetachTimeout, r.o.DetachTimeout); err != nil {
			return err
		}
		// pending: an earlier DETACH … CONCURRENTLY was interrupted after its first
		// phase, and is finalized.
		err := r.m.Detach(ctx, name, pending)
		if terr := r.m.SetTimeouts(ctx, r.o.LockTimeout, 0); terr != nil && err == nil {
			err = terr
		}
		if err != nil {
			return err
		}
		if pending {
			r.res.DetachesFinalized++
		}
		r.o.Logger.Info("retention: partition detached", "partition", name, "finalized", pending)
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
	if err := r.m.DropTable(ctx, name); err != nil {
		return err
	}
	// Failpoint: dropped, but the ledger still says it is to be dropped.
	failpoint.Hit("alerter/retention-after-drop")
	if err := r.m.MarkDropped(ctx, name, r.o.Now); err != nil {
		return err
	}
	r.res.PartitionsDropped++
	r.o.Logger.Info("retention: partition dropped", "partition", name)
	return nil
}

func (r *runner) pruneEventIDs(ctx context.Context) error {
	for {
		n, err := r.m.PruneEventIDs(ctx, r.res.Cutoff, r.o.BatchSize)
		if err != nil {
			return err
		}
		r.res.EventIDsDeleted += n
		if n < int64(r.o.BatchSize) {
			return nil
		}
	}
}

func (r *runner) perProject(ctx context.Context) error {
	projects, err := r.m.ProjectRetentions(ctx)
	if err != nil {
		return err
	}
	for _, p := range projects {
		if err := ctx.Err(); err != nil {
			return err
		}
		cutoff := r.res.Cutoff
		if p.Days != nil && *p.Days < r.o.Days {
			// The project's own, shorter retention: exact to the minute, not the day.
			cutoff = r.o.Now.UTC().AddDate(0, 0, -*p.Days).Truncate(time.Minute)
			r.res.ProjectsWithRetention++
			for {
				n, err := r.m.DeleteProjectEvents(ctx, p.ID, cutoff, r.o.BatchSize)
				if err != nil {
					return err
				}
				r.res.ProjectEventsDeleted += n
				if n < int64(r.o.BatchSize) {
					break
				}
			}
		}
		for {
			n, err := r.m.DeleteRollups(ctx, p.ID, cutoff, r.o.BatchSize)
			if err != nil {
				return err
			}
			r.res.RollupsDeleted += n
			if n < int64(r.o.BatchSize) {
				break
			}
		}
	}
	return nil
}
