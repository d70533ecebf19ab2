package alerter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"

	"github.com/pulseboard/pulseboard/alerter/internal/retention"
	"github.com/pulseboard/pulseboard/pkg/failpoint"
)

// Scheduled jobs.
const (
	JobDigest    = "digest"
	JobRetention = "retention"
)

// Job outcomes (RunJob, job_runs, pulseboard_alerter_job_runs_total).
const (
	// OutcomeSuccess: the run did all its work.
	OutcomeSuccess = "success"
	// OutcomePartial: the run finished, but some emails failed and are retried by the
	// delivery loop.
	OutcomePartial = "partial"
	// OutcomeFailure: the run failed; the slot is tried again after JobRetry.
	OutcomeFailure = "failure"
	// OutcomeSkipped: another instance holds the job, or the slot already succeeded.
	OutcomeSkipped = "skipped"
)

// jobLockClass is the first key of the jobs' advisory locks ("PBJB").
const jobLockClass = 0x50424A42

// JobResult is what one run of a job did.
type JobResult struct {
	Outcome string
	// Details are also stored in job_runs.details.
	Details map[string]any
}

type jobFunc func(ctx context.Context, slot time.Time) (map[string]any, string, error)

type job struct {
	name  string
	sched cron.Schedule
	run   jobFunc
	// slot is the next slot to run; due is when to try it (slot, or a retry time).
	slot, due time.Time
	ready     bool
}

// schedulerLoop runs the digest and retention jobs on their cron schedules (UTC).
func (s *Service) schedulerLoop(ctx context.Context) error {
	jobs := []*job{
		{name: JobDigest, sched: s.digest, run: s.digestJob},
		{name: JobRetention, sched: s.retention, run: s.retentionJob},
	}
	t := time.NewTicker(s.cfg.JobTick)
	defer t.Stop()
	for {
		now := s.now()
		for _, j := range jobs {
			if !j.ready {
				if err := s.initJob(ctx, j, now); err != nil {
					if ctx.Err() == nil {
						s.logger.Warn("reading the job history failed; retrying", "job", j.name, "error", err)
					}
					continue
				}
			}
			if now.Before(j.due) {
				continue
			}
			res, _ := s.RunJob(ctx, j.name, j.slot)
			if ctx.Err() != nil {
				return nil
			}
			now = s.now()
			switch res.Outcome {
			case OutcomeSuccess, OutcomePartial, OutcomeSkipped:
				if res.Outcome == OutcomeSkipped && res.Details["reason"] == "locked" {
					j.due = now.Add(s.cfg.JobRetry) // the holder may die: look again
					break
				}
				j.slot = latestSlot(j.sched, j.slot, now, s.cfg.JobCatchUp)
				j.due = j.slot
			default:
				j.due = now.Add(s.cfg.JobRetry)
				// A newer slot has come: it supersedes the failing one.
				if n := j.sched.Next(j.slot); !n.After(now) {
					j.slot = latestSlot(j.sched, j.slot, now, s.cfg.JobCatchUp)
					j.due = j.slot
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// initJob decides the first slot: the last recorded slot again if it did not succeed
// (an interrupted run resumes), else the latest slot missed since, if within
// JobCatchUp, else the next one. A job never recorded starts with its next slot.
func (s *Service) initJob(ctx context.Context, j *job, now time.Time) error {
	var last time.Time
	var state string
	err := s.pool.QueryRow(ctx, `SELECT scheduled_for, state FROM job_runs WHERE job = $1 ORDER BY scheduled_for DESC LIMIT 1`, j.name).Scan(&last, &state)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		j.slot = j.sched.Next(now)
	case err != nil:
		return fmt.Errorf("reading job_runs: %w", err)
	case state != "succeeded" && now.Sub(last) <= s.cfg.JobCatchUp:
		j.slot = last.UTC()
	default:
		j.slot = latestSlot(j.sched, last.UTC(), now, s.cfg.JobCatchUp)
	}
	j.due, j.ready = j.slot, true
	return nil
}

// latestSlot returns the latest slot after `after` that is due at now (if it is at most
// catchUp old), else the next slot after now.
func latestSlot(sched cron.Schedule, after, now time.Time, catchUp time.Duration) time.Time {
	n := sched.Next(after)
	if n.After(now) || n.IsZero() {
		return n
	}
	for range 1_000_000 {
		nn := sched.Next(n)
		if nn.After(now) || nn.IsZero() {
			break
		}
		n = nn
	}
	if now.Sub(n) > catchUp {
		return sched.Next(now)
	}
	return n
}

// RunJob runs job ("digest" or "retention") for its cron slot, on one instance at a
// time: it takes the job's Postgres advisory lock (session level, on a connection held
// for the run, so a dead instance's lock goes with its connection) and records the run
// in job_runs. A slot that already succeeded is skipped; one that failed or was
// interrupted runs again (both jobs are idempotent and resumable). The scheduler calls
// it; operators and tests may too.
func (s *Service) RunJob(ctx context.Context, name string, slot time.Time) (JobResult, error) {
	var run jobFunc
	switch name {
	case JobDigest:
		run = s.digestJob
	case JobRetention:
		run = s.retentionJob
	default:
		return JobResult{Outcome: OutcomeFailure}, fmt.Errorf("unknown job %q", name)
	}
	slot = slot.UTC()
	start := time.Now()
	res, err := s.runLocked(ctx, name, slot, run)
	s.m.jobRuns.WithLabelValues(name, res.Outcome).Inc()
	if res.Outcome != OutcomeSkipped {
		s.m.jobDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	}
	log := s.logger.Info
	if err != nil {
		log = s.logger.Warn
	}
	log("job run", "job", name, "slot", slot, "outcome", res.Outcome, "details", res.Details,
		"duration", time.Since(start).String(), "error", err)
	return res, err
}

func (s *Service) runLocked(ctx context.Context, name string, slot time.Time, run jobFunc) (res JobResult, err error) {
	res.Outcome = OutcomeFailure
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("acquiring a connection for the job lock: %w", err)
	}
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, int32(jobLockClass), name).Scan(&locked); err != nil {
		conn.Release()
		return res, fmt.Errorf("taking the job lock: %w", err)
	}
	if !locked {
		conn.Release()
		return JobResult{Outcome: OutcomeSkipped, Details: map[string]any{"reason": "locked"}}, nil
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, int32(jobLockClass), name); uerr != nil {
			// Never hand a connection that may still hold the lock back to the pool.
			_ = conn.Conn().Close(uctx)
		}
		conn.Release()
	}()

	runID, err := uuid.NewV7()
	if err != nil {
		return res, err
	}
	var id uuid.UUID
	err = conn.QueryRow(ctx, `
		INSERT INTO job_runs (id, job, scheduled_for, state, attempts, instance, started_at)
		VALUES ($1, $2, $3, 'running', 1, $4, $5)
		ON CONFLICT (job, scheduled_for) DO UPDATE
		SET state = 'running', attempts = job_runs.attempts + 1, instance = EXCLUDED.instance,
		    started_at = EXCLUDED.started_at, finished_at = NULL, error = NULL
		WHERE job_runs.state <> 'succeeded'
		RETURNING id`, runID, name, slot, s.instance, s.now()).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return JobResult{Outcome: OutcomeSkipped, Details: map[string]any{"reason": "done"}}, nil
	}
	if err != nil {
		return res, fmt.Errorf("recording the job run: %w", err)
	}

	details, outcome, runErr := run(ctx, slot)
	res = JobResult{Outcome: outcome, Details: details}
	state, errText := "succeeded", ""
	if runErr != nil {
		res.Outcome = OutcomeFailure
		state, errText = "failed", truncate(runErr.Error(), 2000)
	}
	raw, err := json.Marshal(details)
	if err != nil {
		return res, errors.Join(runErr, err)
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(fctx, `
		UPDATE job_runs SET state = $2, finished_at = $3, error = nullif($4, ''), details = $5 WHERE id = $1`,
		id, state, s.now(), errText, raw); err != nil {
		return res, errors.Join(runErr, fmt.Errorf("recording the job outcome: %w", err))
	}
	return res, runErr
}

// digestSQL creates one pending digest per user with projects for the day of $1, with
// each project's events and errors in [$2, $3) from the rollups, busiest first, at most
// $5 projects listed. A user who already has this day's digest is left alone.
const digestSQL = `
INSERT INTO digest_sends (id, user_id, digest_date, state, recipient, content, next_attempt_at, created_at)
SELECT gen_random_uuid(), u.id, $1::date, 'pending', u.email,
       jsonb_build_object('from', $6::text, 'to', $7::text, 'projects', agg.projects, 'more', agg.more),
       $4, $4
FROM users u
JOIN LATERAL (
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', x.id, 'name', x.name, 'events', x.events, 'errors', x.errors)
                              ORDER BY x.rn) FILTER (WHERE x.rn <= $5), '[]'::jsonb) AS projects,
           count(*) FILTER (WHERE x.rn > $5) AS more,
           count(*) AS n
    FROM (
        SELECT p.id, p.name, coalesce(r.events, 0) AS events, coalesce(r.errors, 0) AS errors,
               row_number() OVER (ORDER BY coalesce(r.events, 0) DESC, p.name, p.id) AS rn
        FROM projects p
        LEFT JOIN LATERAL (
            SELECT sum(count)::bigint AS events, (sum(count) FILTER (WHERE type = 'error'))::bigint AS errors
            FROM event_rollups
            WHERE project_id = p.id AND minute >= $2 AND minute < $3
        ) r ON true
        WHERE p.user_id = u.id
    ) x
) agg ON agg.n > 0
ON CONFLICT (user_id, digest_date) DO NOTHING`

// digestJob creates the slot's digests and sends them. A failed email does not stop
// the others: it is rescheduled with backoff and retried by the delivery loop.
func (s *Service) digestJob(ctx context.Context, slot time.Time) (map[string]any, string, error) {
	from, to := slot.Add(-24*time.Hour), slot
	date := time.Date(slot.Year(), slot.Month(), slot.Day(), 0, 0, 0, 0, time.UTC)
	tag, err := s.pool.Exec(ctx, digestSQL, date, from, to, s.now(), s.cfg.DigestMaxProjects,
		from.Format(time.RFC3339), to.Format(time.RFC3339))
	if err != nil {
		return nil, OutcomeFailure, fmt.Errorf("creating the digests of %s: %w", date.Format(time.DateOnly), err)
	}
	details := map[string]any{"date": date.Format(time.DateOnly), "created": tag.RowsAffected()}
	// Failpoint: the day's digests are recorded pending, none of this run's sent yet.
	failpoint.Hit("alerter/digest-after-create")
	sent := 0
	for {
		ok, err := s.deliverDigest(ctx, ctx, &date)
		if err != nil {
			details["sent"] = sent
			return details, OutcomeFailure, err
		}
		if !ok {
			break
		}
		sent++
	}
	var pending, failed, done int
	if err := s.pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed'),
		       count(*) FILTER (WHERE state = 'sent')
		FROM digest_sends WHERE digest_date = $1`, date).Scan(&pending, &failed, &done); err != nil {
		return details, OutcomeFailure, fmt.Errorf("counting the digests of %s: %w", date.Format(time.DateOnly), err)
	}
	details["attempted"], details["pending"], details["failed"], details["sent"] = sent, pending, failed, done
	if pending > 0 || failed > 0 {
		return details, OutcomePartial, nil
	}
	return details, OutcomeSuccess, nil
}

// retentionJob applies retention (see internal/retention).
func (s *Service) retentionJob(ctx context.Context, _ time.Time) (map[string]any, string, error) {
	res, err := retention.Run(ctx, s.pool, retention.Options{
		Days:          s.cfg.RetentionDays,
		BatchSize:     s.cfg.RetentionBatchSize,
		LockTimeout:   s.cfg.RetentionLockTimeout,
		DetachTimeout: s.cfg.RetentionDetachTimeout,
		Now:           s.now(),
		Logger:        s.logger,
	})
	details := res.Details()
	if err != nil {
		return details, OutcomeFailure, err
	}
	return details, OutcomeSuccess, nil
}
