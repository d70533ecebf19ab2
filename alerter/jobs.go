package alerter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/pulseboard/pulseboard/alerter/internal/retention"
	"github.com/pulseboard/pulseboard/alerter/internal/store"
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
	last, state, err := s.store.LastJobRun(ctx, j.name)
	switch {
	case store.IsNotFound(err):
		j.slot = j.sched.Next(now)
	case err != nil:
		return err
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
	lock, err := s.store.TryJobLock(ctx, name)
	if err != nil {
		return res, err
	}
	if lock == nil {
		return JobResult{Outcome: OutcomeSkipped, Details: map[string]any{"reason": "locked"}}, nil
	}
	defer lock.Release(ctx)

	id, err := lock.StartRun(ctx, slot, s.instance, s.now())
	if store.IsNotFound(err) {
		return JobResult{Outcome: OutcomeSkipped, Details: map[string]any{"reason": "done"}}, nil
	}
	if err != nil {
		return res, err
	}

	details, outcome, runErr := run(ctx, slot)
	res = JobResult{Outcome: outcome, Details: details}
	state, errText := "succeeded", ""
	if runErr != nil {
		res.Outcome = OutcomeFailure
		state, errText = "failed", truncate(runErr.Error(), 2000)
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := lock.FinishRun(fctx, id, state, errText, details, s.now()); err != nil {
		return res, errors.Join(runErr, err)
	}
	return res, runErr
}

// digestJob creates the slot's digests and sends them. A failed email does not stop
// the others: it is rescheduled with backoff and retried by the delivery loop.
func (s *Service) digestJob(ctx context.Context, slot time.Time) (map[string]any, string, error) {
	from, to := slot.Add(-24*time.Hour), slot
	date := time.Date(slot.Year(), slot.Month(), slot.Day(), 0, 0, 0, 0, time.UTC)
	created, err := s.store.CreateDigests(ctx, date, from, to, s.now(), s.cfg.DigestMaxProjects)
	if err != nil {
		return nil, OutcomeFailure, err
	}
	details := map[string]any{"date": date.Format(time.DateOnly), "created": created}
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
	pending, failed, done, err := s.store.CountDigests(ctx, date)
	if err != nil {
		return details, OutcomeFailure, err
	}
	details["attempted"], details["pending"], details["failed"], details["sent"] = sent, pending, failed, done
	if pending > 0 || failed > 0 {
		return details, OutcomePartial, nil
	}
	return details, OutcomeSuccess, nil
}

// retentionJob applies retention (see internal/retention).
func (s *Service) retentionJob(ctx context.Context, _ time.Time) (map[string]any, string, error) {
	res, err := retention.Run(ctx, s.store, retention.Options{
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
