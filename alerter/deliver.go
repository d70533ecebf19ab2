package alerter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pulseboard/pulseboard/alerter/internal/mail"
	"github.com/pulseboard/pulseboard/pkg/failpoint"
	"github.com/pulseboard/pulseboard/pkg/retry"
)

// deliveryLoop sends pending emails (verification mails first: someone is waiting for
// them; then alerts, then digests) until none is due,
// then waits for DeliveryInterval or a wake-up. Sends run on work, which outlives ctx
// by ShutdownTimeout, so an email in flight at shutdown is finished and recorded.
func (s *Service) deliveryLoop(ctx, work context.Context) error {
	t := time.NewTicker(s.cfg.DeliveryInterval)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			sent, err := s.deliverVerification(ctx, work)
			if err == nil && !sent {
				sent, err = s.deliverAlert(ctx, work)
			}
			if err == nil && !sent {
				sent, err = s.deliverDigest(ctx, work, nil)
			}
			if err != nil {
				if ctx.Err() == nil {
					s.logger.Warn("email delivery failed", "error", err)
				}
				break
			}
			if !sent {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.wake:
		}
	}
}

// recordTimeout bounds recording an email the server accepted, which is done even
// while stopping.
const recordTimeout = 5 * time.Second

// sendTimeout bounds one Mailer.Send, whatever the Mailer.
func (s *Service) sendTimeout() time.Duration { return s.cfg.SMTP.Timeout + 5*time.Second }

// claimAlertSQL claims the oldest due pending alert. The row stays locked while the
// email is sent and its outcome recorded, so no other replica can send it at the same
// time, and a replica that dies mid-send releases it at once (its connection closes).
const claimAlertSQL = `
SELECT a.id, a.project_id, a.kind, a.window_start, a.window_end, a.error_count, a.threshold,
       a.attempts, a.recipient, p.name,
       coalesce(p.alert_cooldown_seconds::bigint * 1000000, $2),
       u.email_verified_at IS NOT NULL AND lower(u.email) = lower(a.recipient)
FROM alerts a JOIN projects p ON p.id = a.project_id JOIN users u ON u.id = p.user_id
WHERE a.state = 'pending' AND a.next_attempt_at <= $1
ORDER BY a.next_attempt_at, a.id
LIMIT 1
FOR UPDATE OF a SKIP LOCKED`

// deliverAlert sends one due alert; it reports whether there was one.
func (s *Service) deliverAlert(ctx, work context.Context) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the alert delivery: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var (
		id, project          uuid.UUID
		kind, rcpt, name     string
		start, end           time.Time
		count, threshold, at int
		cooldownUS           int64
		verified             bool
	)
	err = tx.QueryRow(ctx, claimAlertSQL, s.now(), s.cfg.Cooldown.Microseconds()).
		Scan(&id, &project, &kind, &start, &end, &count, &threshold, &at, &rcpt, &name, &cooldownUS, &verified)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claiming an alert: %w", err)
	}
	if held, err := s.gate(ctx, tx, "alerts", kind, id, rcpt, verified); held || err != nil {
		return true, err
	}
	var msg Message
	switch kind {
	case kindThreshold:
		top, err := topErrors(ctx, tx, project, start, end)
		if err != nil {
			return false, err
		}
		msg, err = mail.ComposeThreshold(rcpt, mail.Threshold{
			AlertID: id.String(), ProjectID: project.String(), ProjectName: name,
			Count: count, Threshold: threshold, Window: end.Sub(start),
			Cooldown:    time.Duration(cooldownUS) * time.Microsecond,
			WindowStart: start, WindowEnd: end, TopErrors: top,
		})
		if err != nil {
			return false, err
		}
	default:
		msg, err = mail.ComposeResolved(rcpt, mail.Resolved{
			AlertID: id.String(), ProjectID: project.String(), ProjectName: name,
			Threshold: threshold, Window: end.Sub(start), At: end,
		})
		if err != nil {
			return false, err
		}
	}
	return true, s.send(ctx, work, tx, msg, id, at, "alerts")
}

// topErrors returns the most frequent error names of the window.
func topErrors(ctx context.Context, tx pgx.Tx, project uuid.UUID, start, end time.Time) ([]mail.NameCount, error) {
	rows, err := tx.Query(ctx, `
		SELECT name, count(*) FROM events
		WHERE project_id = $1 AND type = 'error' AND received_at >= $2 AND received_at <= $3
		GROUP BY name ORDER BY count(*) DESC, name LIMIT 5`, project, start, end)
	if err != nil {
		return nil, fmt.Errorf("reading the window's errors: %w", err)
	}
	top, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (mail.NameCount, error) {
		var nc mail.NameCount
		return nc, r.Scan(&nc.Name, &nc.Count)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the window's errors: %w", err)
	}
	return top, nil
}

// digestContent is digest_sends.content.
type digestContent struct {
	From     string               `json:"from"`
	To       string               `json:"to"`
	Projects []mail.DigestProject `json:"projects"`
	More     int                  `json:"more"`
}

// deliverDigest sends one due digest (of date, when set); it reports whether there was
// one.
func (s *Service) deliverDigest(ctx, work context.Context, date *time.Time) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the digest delivery: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var (
		id             uuid.UUID
		rcpt, userName string
		raw            []byte
		attempts       int
		verified       bool
	)
	err = tx.QueryRow(ctx, `
		SELECT d.id, d.recipient, d.content, d.attempts, u.name,
		       u.email_verified_at IS NOT NULL AND lower(u.email) = lower(d.recipient)
		FROM digest_sends d JOIN users u ON u.id = d.user_id
		WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND ($2::date IS NULL OR d.digest_date = $2::date)
		ORDER BY d.next_attempt_at, d.id
		LIMIT 1
		FOR UPDATE OF d SKIP LOCKED`, s.now(), date).Scan(&id, &rcpt, &raw, &attempts, &userName, &verified)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claiming a digest: %w", err)
	}
	if held, err := s.gate(ctx, tx, "digest_sends", kindDigest, id, rcpt, verified); held || err != nil {
		return true, err
	}
	var c digestContent
	if err := json.Unmarshal(raw, &c); err != nil {
		return false, fmt.Errorf("decoding digest %s: %w", id, err)
	}
	from, err1 := time.Parse(time.RFC3339, c.From)
	to, err2 := time.Parse(time.RFC3339, c.To)
	if err := errors.Join(err1, err2); err != nil {
		return false, fmt.Errorf("decoding digest %s: %w", id, err)
	}
	msg, err := mail.ComposeDigest(rcpt, mail.Digest{
		SendID: id.String(), UserName: userName, From: from, To: to, Projects: c.Projects, More: c.More,
	})
	if err != nil {
		return false, err
	}
	return true, s.send(ctx, work, tx, msg, id, attempts, "digest_sends")
}

// send sends msg (the claimed row id of table, after attempts earlier attempts) and
// records the outcome in the claiming transaction: sent (plus an email_deliveries row),
// pending with a later next_attempt_at, or failed with the reason. If the process dies
// between the server's acceptance and this commit the email is sent again later: the
// one duplicate docs/reliability.md promise 14 allows.
//
// Failpoints (pkg/failpoint): alerter/before-smtp right before the email is handed to
// the Mailer, alerter/after-smtp-before-record after the server accepted it and before
// "sent" is recorded (the documented duplicate window).
func (s *Service) send(ctx, work context.Context, tx pgx.Tx, msg Message, id uuid.UUID, attempts int, table string) error {
	failpoint.Hit("alerter/before-smtp")
	sctx, cancel := context.WithTimeout(work, s.sendTimeout())
	err := s.mailer.Send(sctx, msg)
	cancel()
	if err == nil {
		failpoint.Hit("alerter/after-smtp-before-record")
	}
	now := s.now()
	if err != nil && ctx.Err() != nil {
		// Stopping: the failure is most likely ours. Leave the row as it was (the
		// rollback releases it) for the next replica.
		return fmt.Errorf("sending %s %s while stopping: %w", msg.Kind, id, err)
	}
	if err == nil {
		// The server accepted the email: record it even if we are stopping (work may be
		// cancelled by now, and RunJob passes its own ctx as work), or the next replica
		// sends it again. The record is a few milliseconds; recordTimeout bounds it.
		rec, cancel := context.WithTimeout(context.WithoutCancel(work), recordTimeout)
		defer cancel()
		if _, err := tx.Exec(rec, `UPDATE `+table+` SET state = 'sent', sent_at = $2, attempts = attempts + 1, last_error = NULL`+clearLink(table)+` WHERE id = $1`, id, now); err != nil {
			return fmt.Errorf("recording %s %s as sent: %w", msg.Kind, id, err)
		}
		did, err := uuid.NewV7()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(rec, `
			INSERT INTO email_deliveries (id, kind, ref_id, recipient, transport, message_id, delivered_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, did, msg.Kind, id, msg.To, s.mailer.Transport(), msg.MessageID(), now); err != nil {
			return fmt.Errorf("recording the delivery of %s %s: %w", msg.Kind, id, err)
		}
		if err := tx.Commit(rec); err != nil {
			return fmt.Errorf("recording %s %s as sent: %w", msg.Kind, id, err)
		}
		s.m.emailsSent.WithLabelValues(msg.Kind).Inc()
		s.logger.Info("email sent", "kind", msg.Kind, "id", id, "transport", s.mailer.Transport(), "attempts", attempts+1)
		return nil
	}
	permanent := IsPermanent(err)
	state, label := "pending", "transient"
	if permanent || attempts+1 >= s.cfg.MaxAttempts {
		state = "failed"
	}
	if permanent {
		label = "permanent"
	}
	next := now.Add(retry.Backoff(s.cfg.RetryMin, s.cfg.RetryMax, attempts))
	clear := ""
	if state == "failed" {
		clear = clearLink(table)
	}
	if _, uerr := tx.Exec(work, `
		UPDATE `+table+` SET state = $2, attempts = attempts + 1, last_error = $3, next_attempt_at = $4`+clear+` WHERE id = $1`,
		id, state, truncate(err.Error(), 1000), next); uerr != nil {
		return fmt.Errorf("recording the failed delivery of %s %s: %w (delivery: %w)", msg.Kind, id, uerr, err)
	}
	if cerr := tx.Commit(work); cerr != nil {
		return fmt.Errorf("recording the failed delivery of %s %s: %w (delivery: %w)", msg.Kind, id, cerr, err)
	}
	s.m.emailsFailed.WithLabelValues(msg.Kind, label).Inc()
	s.logger.Warn("email delivery failed", "kind", msg.Kind, "id", id, "attempts", attempts+1, "state", state,
		"next_attempt_at", next, "error", err)
	return nil
}
