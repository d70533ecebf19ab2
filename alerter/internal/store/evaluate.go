package store

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Settings are a project's effective alert settings.
type Settings struct {
	Enabled   bool
	Threshold int
	Window    time.Duration
	Cooldown  time.Duration
	// Owner is the owner's current address.
	Owner string
}

// Defaults are the alert settings of projects that set none.
type Defaults struct {
	Threshold int
	Window    time.Duration
	Cooldown  time.Duration
}

const settingsSQL = `
SELECT p.alerts_enabled,
       coalesce(p.alert_threshold, $2),
       coalesce(p.alert_window_seconds::bigint * 1000000, $3),
       coalesce(p.alert_cooldown_seconds::bigint * 1000000, $4),
       u.email
FROM projects p JOIN users u ON u.id = p.user_id
WHERE p.id = $1`

// Settings reads project's settings; ErrNotFound for a deleted project.
func (t *Tx) Settings(ctx context.Context, project uuid.UUID, d Defaults) (Settings, error) {
	var st Settings
	var windowUS, cooldownUS int64
	err := t.tx.QueryRow(ctx, settingsSQL, project, d.Threshold, d.Window.Microseconds(), d.Cooldown.Microseconds()).
		Scan(&st.Enabled, &st.Threshold, &windowUS, &cooldownUS, &st.Owner)
	if err != nil {
		return st, mapErr("reading the project's settings", err)
	}
	st.Window = time.Duration(windowUS) * time.Microsecond
	st.Cooldown = max(time.Duration(cooldownUS)*time.Microsecond, time.Microsecond)
	return st, nil
}

// LockAlertState creates project's alert_state row if missing and locks it FOR UPDATE
// (replicas evaluating the same crossing serialise here); it returns last_fired_at.
func (t *Tx) LockAlertState(ctx context.Context, project uuid.UUID) (*time.Time, error) {
	if _, err := t.tx.Exec(ctx, `INSERT INTO alert_state (project_id) VALUES ($1) ON CONFLICT DO NOTHING`, project); err != nil {
		return nil, mapErr("creating the alert state", err)
	}
	var lastFired *time.Time
	if err := t.tx.QueryRow(ctx, `SELECT last_fired_at FROM alert_state WHERE project_id = $1 FOR UPDATE`, project).Scan(&lastFired); err != nil {
		return nil, mapErr("locking the alert state", err)
	}
	return lastFired, nil
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

// Crossing returns the receive time and count of the first threshold crossing among the
// errors received in [from, to]; ErrNotFound when there is none.
func (t *Tx) Crossing(ctx context.Context, project uuid.UUID, from, to time.Time, window time.Duration, threshold int) (time.Time, int, error) {
	var at time.Time
	var n int
	err := t.tx.QueryRow(ctx, crossingSQL, project, from, to, window, threshold).Scan(&at, &n)
	return at, n, mapErr("counting errors in the window", err)
}

// NewAlert is an alert to record.
type NewAlert struct {
	ID, Project              uuid.UUID
	Kind                     string // threshold, resolved
	WindowStart, WindowEnd   time.Time
	ErrorCount, Threshold    int
	Owner                    string // alerts.recipient, and the target of owner-email deliveries
	CreatedAt, NextAttemptAt time.Time
}

// NoChannelError is alerts.last_error of an alert recorded for a project whose channels
// are all disabled.
const NoChannelError = "no enabled notification channel"

// RecordAlert inserts a pending alert and one pending delivery per enabled channel of
// the project (a project without any channel row gets one email delivery to the owner,
// channel_id NULL), and reports whether the alert was new (one per project, kind and
// window_start: a duplicate records nothing). Targets are resolved now: an email
// channel's address (its url, or the owner's address when NULL), a webhook's URL with its
// path redacted. It returns the number of deliveries recorded.
func (t *Tx) RecordAlert(ctx context.Context, a NewAlert) (bool, int, error) {
	tag, err := t.tx.Exec(ctx, `
		INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold,
		                    state, attempts, next_attempt_at, recipient, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9, $10)
		ON CONFLICT (project_id, kind, window_start) DO NOTHING`,
		a.ID, a.Project, a.Kind, a.WindowStart, a.WindowEnd, a.ErrorCount, a.Threshold, a.NextAttemptAt, a.Owner, a.CreatedAt)
	if err != nil {
		return false, 0, mapErr("recording the alert", err)
	}
	if tag.RowsAffected() == 0 {
		return false, 0, nil
	}
	rows, err := t.tx.Query(ctx, `
		SELECT id, kind, url, enabled FROM notification_channels WHERE project_id = $1 ORDER BY created_at, id`, a.Project)
	if err != nil {
		return false, 0, mapErr("reading the project's channels", err)
	}
	type channel struct {
		id      uuid.UUID
		kind    string
		url     *string
		enabled bool
	}
	channels, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (channel, error) {
		var c channel
		return c, r.Scan(&c.id, &c.kind, &c.url, &c.enabled)
	})
	if err != nil {
		return false, 0, mapErr("reading the project's channels", err)
	}
	if len(channels) == 0 {
		// No channel rows at all (a project created before channels, or by a path that
		// does not create one): the owner's email, as before channels existed.
		err := t.insertDelivery(ctx, a, nil, KindEmail, a.Owner)
		return true, 1, err
	}
	n := 0
	for _, c := range channels {
		if !c.enabled {
			continue
		}
		target := a.Owner
		switch {
		case c.kind == KindEmail && c.url != nil && *c.url != "":
			target = EmailAddress(*c.url)
		case c.kind != KindEmail:
			target = RedactURL(deref(c.url))
		}
		if err := t.insertDelivery(ctx, a, &c.id, c.kind, target); err != nil {
			return false, 0, err
		}
		n++
	}
	if n == 0 {
		if _, err := t.tx.Exec(ctx, `UPDATE alerts SET state = 'failed', last_error = $2 WHERE id = $1`, a.ID, NoChannelError); err != nil {
			return false, 0, mapErr("recording the alert without channels", err)
		}
	}
	return true, n, nil
}

func (t *Tx) insertDelivery(ctx context.Context, a NewAlert, channel *uuid.UUID, kind, target string) error {
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, `
		INSERT INTO notification_deliveries (id, alert_id, channel_id, kind, target, state, attempts, next_attempt_at, created_at)
		VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7)`,
		id, a.ID, channel, kind, target, a.NextAttemptAt, a.CreatedAt); err != nil {
		return mapErr("recording a delivery", err)
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// SetFired records a fired threshold alert in the (locked) alert state; alert nil keeps
// last_alert_id.
func (t *Tx) SetFired(ctx context.Context, project uuid.UUID, at time.Time, alert *uuid.UUID, now time.Time) error {
	_, err := t.tx.Exec(ctx, `
		UPDATE alert_state SET firing = true, last_fired_at = $2, last_alert_id = coalesce($3, last_alert_id), updated_at = $4
		WHERE project_id = $1`, project, at, alert, now)
	return mapErr("updating the alert state", err)
}

// FiringProjects lists up to limit firing projects, least recently updated first.
func (s *Store) FiringProjects(ctx context.Context, limit int) ([]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT project_id FROM alert_state WHERE firing ORDER BY updated_at LIMIT $1`, limit)
	if err != nil {
		return nil, mapErr("listing firing projects", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	return ids, mapErr("listing firing projects", err)
}

// LockFiring locks project's alert_state row FOR UPDATE SKIP LOCKED and reports whether
// it is firing; ErrNotFound when the row is missing or another transaction holds it.
func (t *Tx) LockFiring(ctx context.Context, project uuid.UUID) (bool, error) {
	var firing bool
	err := t.tx.QueryRow(ctx, `SELECT firing FROM alert_state WHERE project_id = $1 FOR UPDATE SKIP LOCKED`, project).Scan(&firing)
	return firing, mapErr("locking the alert state", err)
}

// RecentErrors counts project's errors received since since, stopping at limit.
func (t *Tx) RecentErrors(ctx context.Context, project uuid.UUID, since time.Time, limit int) (int, error) {
	var n int
	err := t.tx.QueryRow(ctx, `
		SELECT count(*) FROM (
			SELECT 1 FROM events WHERE project_id = $1 AND type = 'error' AND received_at >= $2 LIMIT $3
		) c`, project, since, limit).Scan(&n)
	return n, mapErr("counting recent errors", err)
}

// stillAboveSQL reports whether, at some instant since $2 + window, the errors
// within the window ending there reached the threshold: whether some $3 consecutive
// errors, the first received at or after $2, span at most one window.
const stillAboveSQL = `
SELECT EXISTS (
    SELECT 1 FROM (
        SELECT received_at, lead(received_at, $3 - 1) OVER (ORDER BY received_at) AS nth
        FROM events
        WHERE project_id = $1 AND type = 'error' AND received_at >= $2
    ) r
    WHERE r.nth - r.received_at <= $4::interval
)`

// StillAbove reports whether threshold consecutive errors of project, the first received
// at or after since, span at most window.
func (t *Tx) StillAbove(ctx context.Context, project uuid.UUID, since time.Time, threshold int, window time.Duration) (bool, error) {
	var above bool
	err := t.tx.QueryRow(ctx, stillAboveSQL, project, since, threshold, window).Scan(&above)
	return above, mapErr("checking the last window", err)
}

// MarkResolved records that project stopped firing.
func (t *Tx) MarkResolved(ctx context.Context, project uuid.UUID, now time.Time) error {
	_, err := t.tx.Exec(ctx, `UPDATE alert_state SET firing = false, resolved_at = $2, updated_at = $2 WHERE project_id = $1`, project, now)
	return mapErr("updating the alert state", err)
}

// IsNotFound reports whether err is ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
