package alerter

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/alerter/internal/store"
)

// Alert kinds (alerts.kind) and email kinds.
const (
	kindThreshold = "threshold"
	kindResolved  = "resolved"
	kindDigest    = "digest"
	// kindVerification is the api's address verification mail (email_verifications).
	kindVerification = "verification"
)

func (s *Service) defaults() store.Defaults {
	return store.Defaults{Threshold: s.cfg.Threshold, Window: s.cfg.Window, Cooldown: s.cfg.Cooldown}
}

// evaluate looks for threshold crossings of project among the errors received in
// [from, to] and records an alert for each one the cooldown allows, in one transaction
// that holds the project's alert_state row FOR UPDATE: replicas that evaluate the same
// crossing serialise on it and the later one finds last_fired_at set.
func (s *Service) evaluate(ctx context.Context, project uuid.UUID, from, to time.Time) error {
	tx, err := s.store.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the evaluation: %w", err)
	}
	defer tx.Rollback(ctx)
	st, err := tx.Settings(ctx, project, s.defaults())
	if store.IsNotFound(err) {
		return nil // deleted project
	}
	if err != nil {
		return err
	}
	if !st.Enabled {
		return nil
	}
	lastFired, err := tx.LockAlertState(ctx, project)
	if err != nil {
		return err
	}
	now := s.now()
	// Crossings older than MaxDelay never fire: a replay of old events stays silent
	// even where no alert had been recorded (alerts were disabled, or settings changed).
	eligible := maxTime(from, now.Add(-s.cfg.MaxDelay))
	if lastFired != nil {
		eligible = maxTime(eligible, lastFired.Add(st.Cooldown))
	}
	fired, deliveries := 0, 0
	for !eligible.After(to) {
		at, n, err := tx.Crossing(ctx, project, eligible, to, st.Window, st.Threshold)
		if store.IsNotFound(err) {
			break
		}
		if err != nil {
			return err
		}
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		// The alert and one delivery per enabled channel, under the row lock: a second
		// replica evaluating the same crossing waits here and then finds last_fired_at.
		inserted, nd, err := tx.RecordAlert(ctx, store.NewAlert{
			ID: id, Project: project, Kind: kindThreshold, WindowStart: at.Add(-st.Window), WindowEnd: at,
			ErrorCount: n, Threshold: st.Threshold, Owner: st.Owner, CreatedAt: now, NextAttemptAt: now,
		})
		if err != nil {
			return err
		}
		last := &id
		if !inserted {
			// The same window was recorded before (only if alert_state was reset):
			// last_alert_id keeps pointing at an alert that exists.
			last = nil
		}
		if err := tx.SetFired(ctx, project, at, last, now); err != nil {
			return err
		}
		if inserted {
			fired++
			deliveries += nd
		}
		eligible = at.Add(st.Cooldown)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the evaluation: %w", err)
	}
	if fired > 0 {
		s.m.alertsFired.WithLabelValues(kindThreshold).Add(float64(fired))
		s.logger.Info("threshold alert recorded", "project", project, "alerts", fired, "deliveries", deliveries)
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
	ids, err := s.store.FiringProjects(ctx, 1000)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.resolve(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// resolve records a "resolved" alert for a firing project whose error count has stayed
// below the threshold for a full window. The alert_state row is locked with SKIP
// LOCKED: a project another replica is evaluating is simply checked next time.
func (s *Service) resolve(ctx context.Context, project uuid.UUID) error {
	tx, err := s.store.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning the resolution check: %w", err)
	}
	defer tx.Rollback(ctx)
	firing, err := tx.LockFiring(ctx, project)
	if store.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !firing {
		return nil
	}
	now := s.now()
	st, err := tx.Settings(ctx, project, s.defaults())
	if err != nil && !store.IsNotFound(err) {
		return err
	}
	notify := err == nil && st.Enabled
	if notify {
		// Cheap first: still at or above the threshold right now?
		recent, err := tx.RecentErrors(ctx, project, now.Add(-st.Window), st.Threshold)
		if err != nil {
			return err
		}
		if recent >= st.Threshold {
			return nil
		}
		// At some instant of the last full window, were the errors within the window
		// ending there at the threshold? Errors received after now (a clock behind the
		// ingestors') count as above too.
		above, err := tx.StillAbove(ctx, project, now.Add(-2*st.Window), st.Threshold, st.Window)
		if err != nil {
			return err
		}
		if above {
			return nil
		}
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		if _, _, err := tx.RecordAlert(ctx, store.NewAlert{
			ID: id, Project: project, Kind: kindResolved, WindowStart: now.Add(-st.Window), WindowEnd: now,
			ErrorCount: recent, Threshold: st.Threshold, Owner: st.Owner, CreatedAt: now, NextAttemptAt: now,
		}); err != nil {
			return err
		}
	}
	// Disabled or deleted projects stop firing silently.
	if err := tx.MarkResolved(ctx, project, now); err != nil {
		return err
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
