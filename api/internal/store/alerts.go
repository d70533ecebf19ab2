package store

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Alert is one row of a project's alert history.
type Alert struct {
	ID          uuid.UUID
	Kind        string
	State       string
	WindowStart time.Time
	WindowEnd   time.Time
	ErrorCount  int32
	Threshold   int32
	Attempts    int32
	LastError   *string
	CreatedAt   time.Time
	SentAt      *time.Time
	// Deliveries are the alert's per-channel deliveries (notification_deliveries),
	// oldest first; filled by Alerts when asked for.
	Deliveries []Delivery
}

// Delivery is one channel's delivery of an alert: the one state machine of every
// channel kind (pending → sent | failed, or skipped_unverified, skipped_rate_limited).
// ChannelID is nil once the channel is deleted; Target is the recipient address or the
// redacted URL (scheme://host/…) as the alerter recorded it.
type Delivery struct {
	ID             uuid.UUID
	AlertID        uuid.UUID
	ChannelID      *uuid.UUID
	Kind           string
	Target         string
	State          string
	Attempts       int32
	LastError      *string
	ResponseStatus *int32
	SentAt         *time.Time
}

// Alerts returns a page of a project's alerts, newest first by (created_at, id), each
// with at most maxDeliveries of its deliveries (0: none are read).
func (s *Store) Alerts(ctx context.Context, projectID uuid.UUID, after *Cursor, limit, maxDeliveries int) ([]Alert, error) {
	q := `SELECT id, kind, state, window_start, window_end, error_count, threshold, attempts, last_error, created_at, sent_at
		FROM alerts WHERE project_id = $1`
	args := []any{projectID, limit}
	if after != nil {
		q += ` AND (created_at, id) < ($3, $4)`
		args = append(args, after.Time, after.ID)
	}
	q += ` ORDER BY created_at DESC, id DESC LIMIT $2`
	rows, err := s.db.Query(ctx, q, args...)
	if err != nil {
		return nil, mapErr("querying alerts", err)
	}
	as, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Alert, error) {
		var a Alert
		err := r.Scan(&a.ID, &a.Kind, &a.State, &a.WindowStart, &a.WindowEnd, &a.ErrorCount, &a.Threshold,
			&a.Attempts, &a.LastError, &a.CreatedAt, &a.SentAt)
		return a, err
	})
	if err != nil {
		return nil, mapErr("querying alerts", err)
	}
	if len(as) == 0 || maxDeliveries <= 0 {
		return as, nil
	}
	ids := make([]uuid.UUID, len(as))
	index := make(map[uuid.UUID]int, len(as))
	for i, a := range as {
		ids[i] = a.ID
		index[a.ID] = i
	}
	// One query for the page: per alert (the (alert_id, channel_id) unique index), at
	// most maxDeliveries rows, so an answer stays bounded whatever the table holds
	// (deliveries of deleted channels, a cap lowered since).
	rows, err = s.db.Query(ctx, `
		SELECT d.id, d.alert_id, d.channel_id, d.kind, d.target, d.state, d.attempts, d.last_error, d.response_status, d.sent_at
		FROM unnest($1::uuid[]) AS a(id)
		CROSS JOIN LATERAL (
			SELECT * FROM notification_deliveries nd WHERE nd.alert_id = a.id
			ORDER BY nd.created_at, nd.id LIMIT $2
		) d
		ORDER BY d.alert_id, d.created_at, d.id`, ids, maxDeliveries)
	if err != nil {
		return nil, mapErr("querying alert deliveries", err)
	}
	ds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) {
		var d Delivery
		err := r.Scan(&d.ID, &d.AlertID, &d.ChannelID, &d.Kind, &d.Target, &d.State, &d.Attempts, &d.LastError,
			&d.ResponseStatus, &d.SentAt)
		return d, err
	})
	if err != nil {
		return nil, mapErr("querying alert deliveries", err)
	}
	for _, d := range ds {
		a := &as[index[d.AlertID]]
		a.Deliveries = append(a.Deliveries, d)
	}
	return as, nil
}
