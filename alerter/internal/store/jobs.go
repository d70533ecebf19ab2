package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// LastJobRun returns the latest recorded slot of job and its state; ErrNotFound when the
// job never ran.
func (s *Store) LastJobRun(ctx context.Context, job string) (time.Time, string, error) {
	var last time.Time
	var state string
	err := s.pool.QueryRow(ctx, `SELECT scheduled_for, state FROM job_runs WHERE job = $1 ORDER BY scheduled_for DESC LIMIT 1`, job).Scan(&last, &state)
	return last, state, mapErr("reading job_runs", err)
}

// jobLockClass is the first key of the jobs' advisory locks ("PBJB").
const jobLockClass = 0x50424A42

// JobLock is a job's session advisory lock, held on a connection of its own for the
// whole run: a dead instance's lock goes with its connection.
type JobLock struct {
	conn *pgxpool.Conn
	name string
}

// TryJobLock takes job's lock without waiting; nil (and no error) when another instance
// holds it.
func (s *Store) TryJobLock(ctx context.Context, job string) (*JobLock, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, mapErr("acquiring a connection for the job lock", err)
	}
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, int32(jobLockClass), job).Scan(&locked); err != nil {
		conn.Release()
		return nil, mapErr("taking the job lock", err)
	}
	if !locked {
		conn.Release()
		return nil, nil
	}
	return &JobLock{conn: conn, name: job}, nil
}

// Release unlocks and returns the connection. A connection whose unlock failed (and
// may still hold the lock) is closed rather than handed back to the pool.
func (l *JobLock) Release(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := l.conn.Exec(uctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, int32(jobLockClass), l.name); err != nil {
		_ = l.conn.Conn().Close(uctx)
	}
	l.conn.Release()
}

// StartRun records a run of the locked job for slot (again, if an earlier one failed or
// died) and returns its id; ErrNotFound when the slot already succeeded.
func (l *JobLock) StartRun(ctx context.Context, slot time.Time, instance string, now time.Time) (uuid.UUID, error) {
	runID, err := uuid.NewV7()
	if err != nil {
		return uuid.Nil, err
	}
	var id uuid.UUID
	err = l.conn.QueryRow(ctx, `
		INSERT INTO job_runs (id, job, scheduled_for, state, attempts, instance, started_at)
		VALUES ($1, $2, $3, 'running', 1, $4, $5)
		ON CONFLICT (job, scheduled_for) DO UPDATE
		SET state = 'running', attempts = job_runs.attempts + 1, instance = EXCLUDED.instance,
		    started_at = EXCLUDED.started_at, finished_at = NULL, error = NULL
		WHERE job_runs.state <> 'succeeded'
		RETURNING id`, runID, l.name, slot, instance, now).Scan(&id)
	return id, mapErr("recording the job run", err)
}

// FinishRun records the outcome of run id: state succeeded or failed, the error text
// (empty: none) and the details.
func (l *JobLock) FinishRun(ctx context.Context, id uuid.UUID, state, errText string, details map[string]any, now time.Time) error {
	raw, err := json.Marshal(details)
	if err != nil {
		return err
	}
	_, err = l.conn.Exec(ctx, `
		UPDATE job_runs SET state = $2, finished_at = $3, error = nullif($4, ''), details = $5 WHERE id = $1`,
		id, state, now, errText, raw)
	return mapErr("recording the job outcome", err)
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

// CreateDigests creates the digests of date (content: [from, to), at most maxProjects
// projects each) and returns how many were new.
func (s *Store) CreateDigests(ctx context.Context, date, from, to, now time.Time, maxProjects int) (int64, error) {
	tag, err := s.pool.Exec(ctx, digestSQL, date, from, to, now, maxProjects,
		from.Format(time.RFC3339), to.Format(time.RFC3339))
	if err != nil {
		return 0, mapErr("creating the digests of "+date.Format(time.DateOnly), err)
	}
	return tag.RowsAffected(), nil
}

// CountDigests counts the digests of date by state.
func (s *Store) CountDigests(ctx context.Context, date time.Time) (pending, failed, sent int, err error) {
	err = s.pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed'),
		       count(*) FILTER (WHERE state = 'sent')
		FROM digest_sends WHERE digest_date = $1`, date).Scan(&pending, &failed, &sent)
	return pending, failed, sent, mapErr("counting the digests of "+date.Format(time.DateOnly), err)
}
