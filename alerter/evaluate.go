package alerter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Alert kinds (alerts.kind) and email kinds.
const (
	kindThreshold = "threshold"
	kindResolved  = "resolved"
	kindDigest    = "digest"
	// kindVerification is the api's address verification mail (email_verifications).
	kindVerification = "verification"
)

// settings are a project's effective alert settings.
type settings struct {
	enabled   bool
	threshold int
	window    time.Duration
	cooldown  time.Duration
	owner     string
}

const settingsSQL = `
SELECT p.alerts_enabled,
       coalesce(p.alert_threshold, $2),
       coalesce(p.alert_window_seconds::bigint * 1000000, $3),
       coalesce(p.alert_cooldown_seconds::bigint * 1000000, $4),
       u.email
FROM projects p JOIN users u ON u.id = p.user_id
WHERE p.id = $1`

func (s *Service) settings(ctx context.Context, tx pgx.Tx, project uuid.UUID) (settings, error) {
	var st settings
	var windowUS, cooldownUS int64
	err := tx.QueryRow(ctx, settingsSQL, project, s.cfg.Threshold, s.cfg.Window.Microseconds(), s.cfg.Cooldown.Microseconds()).
		Scan(&st.enabled, &st.threshold, &windowUS, &cooldownUS, &st.owner)
	if err != nil {
		return st, err
	}
	st.window = time.Duration(windowUS) * time.Microsecond
	st.cooldown = max(time.Duration(cooldownUS)*time.Microsecond, time.Microsecond)
	return st, nil
}

// crossingSQL finds the first error received in [$2, $3] at which the project's errors
// within the window ending there ([t − window, t], by receive time) reached the
// threshold. Counting runs over events, i.e. deduplicated stored events, so
// redeliveries, replays and producer retries never inflate a count.
const crossingSQL = `
SELECT received_at, n FROM (
    SELECT received_at,
           count(*) OVER (ORDER BY received_at RANGE BETWEEN $4::interval PRECEDING AND CURRENT ROW) AS n
    FROM events
    WHERE project_id = $1 AND type = 'error'
      AND received_at >= $2::timestamptz - $4::interval AND received_at <= $3
) w
WHERE n >= $5 AND received_at >= $2
ORDER BY received_at
LIMIT 1`

// evaluate looks for threshold crossings of project among the errors received in
// [from, to] and records an alert for each one the cooldown allows, in one transaction
// that holds the project's alert_state row FOR UPDATE: replicas that evaluate the same
// crossing serialise on it and the later one finds last_fired_at set.
func (s *Service) evaluate(ctx context.Context, project uuid.UUID, from, to time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the evaluation: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	st, err := s.settings(ctx, tx, project)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // deleted project
	}
	if err != nil {
		return fmt.Errorf("reading the project's settings: %w", err)
	}
	if !st.enabled {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO alert_state (project_id) VALUES ($1) ON CONFLICT DO NOTHING`, project); err != nil {
		return fmt.Errorf("creating the alert state: %w", err)
	}
	var lastFired *time.Time
	if err := tx.QueryRow(ctx, `SELECT last_fired_at FROM alert_state WHERE project_id = $1 FOR UPDATE`, project).Scan(&lastFired); err != nil {
		return fmt.Errorf("locking the alert state: %w", err)
	}
	now := s.now()
	// Crossings older than MaxDelay never fire: a replay of old events stays silent
	// even where no alert had been recorded (alerts were disabled, or settings changed).
	eligible := maxTime(from, now.Add(-s.cfg.MaxDelay))
	if lastFired != nil {
		eligible = maxTime(eligible, lastFired.Add(st.cooldown))
	}
	fired := 0
	for !eligible.After(to) {
		var at time.Time
		var n int
		err := tx.QueryRow(ctx, crossingSQL, project, eligible, to, st.window, st.threshold).Scan(&at, &n)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return fmt.Errorf("counting errors in the window: %w", err)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold,
			                    state, attempts, next_attempt_at, recipient, created_at)
			VALUES ($1, $2, 'threshold', $3, $4, $5, $6, 'pending', 0, $7, $8, $7)
			ON CONFLICT (project_id, kind, window_start) DO NOTHING`,
			id, project, at.Add(-st.window), at, n, st.threshold, now, st.owner); err != nil {
			return fmt.Errorf("recording the alert: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE alert_state SET firing = true, last_fired_at = $2, last_alert_id = $3, updated_at = $4
			WHERE project_id = $1`, project, at, id, now); err != nil {
			return fmt.Errorf("updating the alert state: %w", err)
		}
		fired++
		eligible = at.Add(st.cooldown)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the evaluation: %w", err)
	}
	if fired > 0 {
		s.m.alertsFired.WithLabelValues(kindThreshold).Add(float64(fired))
		s.logger.Info("threshold alert recorded", "project", project, "alerts", fired)
		s.notify()
	}
	return nil
}

// resolveLoop checks the firing projects every ResolveInterval.
func (s *Service) resolveLoop(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ResolveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.resolveAll(ctx); err != nil && ctx.Err() == nil {
			s.m.evalErrors.Inc()
			s.logger.Warn("checking firing projects failed", "error", err)
		}
	}
}

func (s *Service) resolveAll(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, `SELECT project_id FROM alert_state WHERE firing ORDER BY updated_at LIMIT 1000`)
	if err != nil {
		return fmt.Errorf("listing firing projects: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return fmt.Errorf("listing firing projects: %w", err)
	}
	for _, id := range ids {
		if err := s.resolve(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// stillAboveSQL reports whether, at some instant of the last full window, the errors
// within the window ending there reached the threshold: whether some $3 consecutive
// errors, the first received at or after now − 2·window, span at most one window.
// Errors received after now (a clock behind the ingestors') count as above too.
const stillAboveSQL = `
SELECT EXISTS (
    SELECT 1 FROM (
        SELECT received_at, lead(received_at, $3 - 1) OVER (ORDER BY received_at) AS nth
        FROM events
        WHERE project_id = $1 AND type = 'error' AND received_at >= $2
    ) r
    WHERE r.nth - r.received_at <= $4::interval
)`

// resolve records a "resolved" alert for a firing project whose error count has stayed
// below the threshold for a full window. The alert_state row is locked with SKIP
// LOCKED: a project another replica is evaluating is simply checked next time.
func (s *Service) resolve(ctx context.Context, project uuid.UUID) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the resolution check: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var firing bool
	err = tx.QueryRow(ctx, `SELECT firing FROM alert_state WHERE project_id = $1 FOR UPDATE SKIP LOCKED`, project).Scan(&firing)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("locking the alert state: %w", err)
	}
	if !firing {
		return nil
	}
	now := s.now()
	st, err := s.settings(ctx, tx, project)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("reading the project's settings: %w", err)
	}
	notify := err == nil && st.enabled
	if notify {
		// Cheap first: still at or above the threshold right now?
		var recent int
		if err := tx.QueryRow(ctx, `
			SELECT count(*) FROM (
				SELECT 1 FROM events WHERE project_id = $1 AND type = 'error' AND received_at >= $2 LIMIT $3
			) c`, project, now.Add(-st.window), st.threshold).Scan(&recent); err != nil {
			return fmt.Errorf("counting recent errors: %w", err)
		}
		if recent >= st.threshold {
			return nil
		}
		var above bool
		if err := tx.QueryRow(ctx, stillAboveSQL, project, now.Add(-2*st.window), st.threshold, st.window).Scan(&above); err != nil {
			return fmt.Errorf("checking the last window: %w", err)
		}
		if above {
			return nil
		}
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold,
			                    state, attempts, next_attempt_at, recipient, created_at)
			VALUES ($1, $2, 'resolved', $3, $4, $5, $6, 'pending', 0, $4, $7, $4)
			ON CONFLICT (project_id, kind, window_start) DO NOTHING`,
			id, project, now.Add(-st.window), now, recent, st.threshold, st.owner); err != nil {
			return fmt.Errorf("recording the resolved alert: %w", err)
		}
	}
	// Disabled or deleted projects stop firing silently.
	if _, err := tx.Exec(ctx, `UPDATE alert_state SET firing = false, resolved_at = $2, updated_at = $2 WHERE project_id = $1`, project, now); err != nil {
		return fmt.Errorf("updating the alert state: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the resolution: %w", err)
	}
	if notify {
		s.m.alertsFired.WithLabelValues(kindResolved).Inc()
		s.logger.Info("resolved alert recorded", "project", project)
		s.notify()
	}
	return nil
}
