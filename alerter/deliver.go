package alerter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/alerter/internal/channel"
	"github.com/pulseboard/pulseboard/alerter/internal/mail"
	"github.com/pulseboard/pulseboard/alerter/internal/store"
	"github.com/pulseboard/pulseboard/pkg/failpoint"
	"github.com/pulseboard/pulseboard/pkg/retry"
)

// deliveryLoop runs two senders side by side, so a slow webhook never delays mail:
//
//   - mail: verification mails first (someone is waiting for them), then email
//     deliveries of alerts, then digests;
//   - hooks: webhook and Slack deliveries of alerts.
//
// Each sends until nothing is due, then waits for DeliveryInterval or a wake-up. Sends
// run on work, which outlives ctx by ShutdownTimeout, so a send in flight at shutdown is
// finished and recorded.
func (s *Service) deliveryLoop(ctx, work context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		s.sendLoop(ctx, work, s.wake, "email delivery failed",
			s.deliverVerification, s.deliverEmail,
			func(ctx, work context.Context) (bool, error) { return s.deliverDigest(ctx, work, nil) })
	})
	wg.Go(func() { s.sendLoop(ctx, work, s.wakeHooks, "notification delivery failed", s.deliverHook) })
	wg.Wait()
	return nil
}

func (s *Service) sendLoop(ctx, work context.Context, wake <-chan struct{}, what string, steps ...func(ctx, work context.Context) (bool, error)) {
	t := time.NewTicker(s.cfg.DeliveryInterval)
	defer t.Stop()
	for {
	drain:
		for ctx.Err() == nil {
			for _, step := range steps {
				sent, err := step(ctx, work)
				if err != nil {
					if ctx.Err() == nil {
						s.logger.Warn(what, "error", err)
					}
					break drain
				}
				if sent {
					continue drain
				}
			}
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
	}
}

// recordTimeout bounds recording a delivery the receiver accepted, which is done even
// while stopping.
const recordTimeout = 5 * time.Second

// sendTimeout bounds one Mailer.Send, whatever the Mailer.
func (s *Service) sendTimeout() time.Duration { return s.cfg.SMTP.Timeout + 5*time.Second }

// aborted reports whether a failed send was most likely our own doing: the replica is
// stopping (ctx, or work after ShutdownTimeout) or the send's context was cancelled
// (only a stop cancels it; its timeout is a deadline, a genuine failure). Such a send is
// not an attempt: the claim is rolled back for the next replica, attempts unchanged.
func aborted(ctx, work context.Context, err error) bool {
	return ctx.Err() != nil || work.Err() != nil || errors.Is(err, context.Canceled)
}

// row is a claimed outbox row being sent.
type row struct {
	o  store.Outbox
	id uuid.UUID
	// ref is email_deliveries.ref_id: the alert for a delivery, else id.
	ref      uuid.UUID
	attempts int
	// alert is set for notification_deliveries: its summary is updated with every
	// outcome.
	alert *uuid.UUID
	// kind is the channel kind of a delivery (email, webhook, slack); created is when
	// the delivery was recorded (latency).
	kind    string
	created time.Time
}

// settle updates the alert summary of a delivery row (a no-op for other outboxes).
func settle(ctx context.Context, tx *store.Tx, r row) error {
	if r.alert == nil {
		return nil
	}
	return tx.SummarizeAlert(ctx, *r.alert)
}

// deliverEmail sends one due email delivery of an alert; it reports whether there was
// one.
func (s *Service) deliverEmail(ctx, work context.Context) (bool, error) {
	tx, err := s.store.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the alert delivery: %w", err)
	}
	defer tx.Rollback(ctx)
	d, err := tx.ClaimDelivery(ctx, s.now(), []string{store.KindEmail}, s.cfg.Cooldown)
	if store.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r := row{o: store.Deliveries, id: d.ID, ref: d.AlertID, attempts: d.Attempts, alert: &d.AlertID, kind: d.Kind, created: d.CreatedAt}
	if d.ChannelExists && !d.ChannelEnabled {
		return true, s.giveUp(ctx, tx, r, "the channel was disabled before the notification could be sent")
	}
	if held, err := s.gate(ctx, tx, r, d.AlertKind, d.Target, d.Verified); held || err != nil {
		return true, err
	}
	var msg Message
	switch d.AlertKind {
	case kindThreshold:
		top, err := tx.TopErrors(ctx, d.Project, d.WindowStart, d.WindowEnd, 5)
		if err != nil {
			return false, err
		}
		msg, err = mail.ComposeThreshold(d.Target, mail.Threshold{
			AlertID: d.AlertID.String(), ProjectID: d.Project.String(), ProjectName: d.ProjectName,
			Count: d.ErrorCount, Threshold: d.Threshold, Window: d.WindowEnd.Sub(d.WindowStart),
			Cooldown: d.Cooldown, WindowStart: d.WindowStart, WindowEnd: d.WindowEnd, TopErrors: mailTop(top),
		})
		if err != nil {
			return false, err
		}
	default:
		msg, err = mail.ComposeResolved(d.Target, mail.Resolved{
			AlertID: d.AlertID.String(), ProjectID: d.Project.String(), ProjectName: d.ProjectName,
			Threshold: d.Threshold, Window: d.WindowEnd.Sub(d.WindowStart), At: d.WindowEnd,
		})
		if err != nil {
			return false, err
		}
	}
	return true, s.send(ctx, work, tx, msg, r)
}

func mailTop(top []store.NameCount) []mail.NameCount {
	out := make([]mail.NameCount, len(top))
	for i, t := range top {
		out[i] = mail.NameCount{Name: t.Name, Count: t.Count}
	}
	return out
}

// giveUp records a delivery failed without an attempt (its channel is gone or
// disabled: nothing to send to).
func (s *Service) giveUp(ctx context.Context, tx *store.Tx, r row, why string) error {
	if err := tx.Fail(ctx, r.o, r.id, why); err != nil {
		return err
	}
	if err := settle(ctx, tx, r); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	s.m.notifications.WithLabelValues(r.kind, outcomeFailed).Inc()
	s.logger.Info("notification given up", "kind", r.kind, "id", r.id, "reason", why)
	return nil
}

// deliverHook sends one due webhook or Slack delivery; it reports whether there was
// one. The row stays locked while the request runs, as for email.
//
// Failpoints: alerter/before-webhook right before the request, alerter/after-webhook-
// before-record after a 2xx and before "sent" is recorded (the duplicate window: the
// receiver dedupes on X-PulseBoard-Delivery).
func (s *Service) deliverHook(ctx, work context.Context) (bool, error) {
	tx, err := s.store.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the notification delivery: %w", err)
	}
	defer tx.Rollback(ctx)
	d, err := tx.ClaimDelivery(ctx, s.now(), s.hookKinds, s.cfg.Cooldown)
	if store.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r := row{o: store.Deliveries, id: d.ID, ref: d.AlertID, attempts: d.Attempts, alert: &d.AlertID, kind: d.Kind, created: d.CreatedAt}
	switch {
	case !d.ChannelExists:
		return true, s.giveUp(ctx, tx, r, "the channel was deleted before the notification could be sent")
	case !d.ChannelEnabled:
		return true, s.giveUp(ctx, tx, r, "the channel was disabled before the notification could be sent")
	}
	sender := s.senders[d.Kind]
	n := channel.Notification{
		AlertID: d.AlertID, DeliveryID: d.ID, ProjectID: d.Project, ProjectName: d.ProjectName,
		Kind: d.AlertKind, WindowStart: d.WindowStart, WindowEnd: d.WindowEnd,
		ErrorCount: d.ErrorCount, Threshold: d.Threshold, Attempt: d.Attempts + 1,
	}
	if d.AlertKind == kindThreshold {
		n.Cooldown = d.Cooldown
		top, err := tx.TopErrors(ctx, d.Project, d.WindowStart, d.WindowEnd, 5)
		if err != nil {
			return false, err
		}
		for _, t := range top {
			n.TopErrors = append(n.TopErrors, channel.NameCount{Name: t.Name, Count: t.Count})
		}
	}
	failpoint.Hit("alerter/before-webhook")
	sctx, cancel := context.WithTimeout(work, s.cfg.WebhookTimeout+5*time.Second)
	status, err := sender.Send(sctx, channel.Target{URL: d.URL, Secret: d.Secret}, n)
	cancel()
	if err != nil && aborted(ctx, work, err) {
		return true, fmt.Errorf("sending %s delivery %s while stopping: %w", d.Kind, d.ID, err)
	}
	now := s.now()
	var st *int
	if status != 0 {
		st = &status
	}
	if err == nil {
		failpoint.Hit("alerter/after-webhook-before-record")
		// The receiver took it: record it even while stopping, or the next replica
		// sends it again.
		rec, cancel := context.WithTimeout(context.WithoutCancel(work), recordTimeout)
		defer cancel()
		if err := tx.RecordSent(rec, r.o, r.id, now, st); err != nil {
			return true, err
		}
		if err := settle(rec, tx, r); err != nil {
			return true, err
		}
		if err := tx.Commit(rec); err != nil {
			return true, fmt.Errorf("recording %s delivery %s as sent: %w", d.Kind, d.ID, err)
		}
		s.m.notifications.WithLabelValues(d.Kind, outcomeSent).Inc()
		s.m.notificationLatency.WithLabelValues(d.Kind).Observe(max(0, now.Sub(d.CreatedAt).Seconds()))
		s.logger.Info("notification sent", "kind", d.Kind, "id", d.ID, "alert", d.AlertID, "status", status, "attempts", d.Attempts+1)
		return true, nil
	}
	perm, retryAfter, _ := channel.Classify(err)
	failed := perm || d.Attempts+1 >= s.cfg.WebhookMaxAttempts
	wait := retry.Backoff(s.cfg.WebhookRetryMin, s.cfg.WebhookRetryMax, d.Attempts)
	if retryAfter > 0 {
		// The receiver's Retry-After, bounded by ALERT_WEBHOOK_RETRY_MAX.
		wait = max(wait, min(retryAfter, s.cfg.WebhookRetryMax))
	}
	next := now.Add(wait)
	if err := tx.RecordAttempt(work, r.o, r.id, failed, truncate(err.Error(), 1000), next, st); err != nil {
		return true, err
	}
	if err := settle(work, tx, r); err != nil {
		return true, err
	}
	if err := tx.Commit(work); err != nil {
		return true, fmt.Errorf("recording the failed delivery %s: %w", d.ID, err)
	}
	outcome := outcomeRetry
	if failed {
		outcome = outcomeFailed
	}
	s.m.notifications.WithLabelValues(d.Kind, outcome).Inc()
	s.logger.Warn("notification delivery failed", "kind", d.Kind, "id", d.ID, "alert", d.AlertID, "status", status,
		"attempts", d.Attempts+1, "given_up", failed, "next_attempt_at", next, "error", err)
	return true, nil
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
	tx, err := s.store.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the digest delivery: %w", err)
	}
	defer tx.Rollback(ctx)
	d, err := tx.ClaimDigest(ctx, s.now(), date)
	if store.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r := row{o: store.Digests, id: d.ID, ref: d.ID, attempts: d.Attempts}
	if held, err := s.gate(ctx, tx, r, kindDigest, d.Recipient, d.Verified); held || err != nil {
		return true, err
	}
	var c digestContent
	if err := json.Unmarshal(d.Content, &c); err != nil {
		return false, fmt.Errorf("decoding digest %s: %w", d.ID, err)
	}
	from, err1 := time.Parse(time.RFC3339, c.From)
	to, err2 := time.Parse(time.RFC3339, c.To)
	if err := errors.Join(err1, err2); err != nil {
		return false, fmt.Errorf("decoding digest %s: %w", d.ID, err)
	}
	msg, err := mail.ComposeDigest(d.Recipient, mail.Digest{
		SendID: d.ID.String(), UserName: d.UserName, From: from, To: to, Projects: c.Projects, More: c.More,
	})
	if err != nil {
		return false, err
	}
	return true, s.send(ctx, work, tx, msg, r)
}

// send sends msg (the claimed row r) and records the outcome in the claiming
// transaction: sent (plus an email_deliveries row), pending with a later
// next_attempt_at, or failed with the reason. If the process dies between the server's
// acceptance and this commit the email is sent again later: the one duplicate
// docs/reliability.md promise 14 allows. A send aborted by our own stop is not an
// attempt (aborted): the claim is rolled back, attempts unchanged.
//
// Failpoints (pkg/failpoint): alerter/before-smtp right before the email is handed to
// the Mailer, alerter/after-smtp-before-record after the server accepted it and before
// "sent" is recorded (the documented duplicate window).
func (s *Service) send(ctx, work context.Context, tx *store.Tx, msg Message, r row) error {
	failpoint.Hit("alerter/before-smtp")
	sctx, cancel := context.WithTimeout(work, s.sendTimeout())
	err := s.mailer.Send(sctx, msg)
	cancel()
	if err == nil {
		failpoint.Hit("alerter/after-smtp-before-record")
	}
	now := s.now()
	if err != nil && aborted(ctx, work, err) {
		// Stopping: the failure is most likely ours. Leave the row as it was (the
		// rollback releases it) for the next replica.
		return fmt.Errorf("sending %s %s while stopping: %w", msg.Kind, r.id, err)
	}
	if err == nil {
		// The server accepted the email: record it even if we are stopping (work may be
		// cancelled by now, and RunJob passes its own ctx as work), or the next replica
		// sends it again. The record is a few milliseconds; recordTimeout bounds it.
		rec, cancel := context.WithTimeout(context.WithoutCancel(work), recordTimeout)
		defer cancel()
		if err := tx.RecordSent(rec, r.o, r.id, now, nil); err != nil {
			return fmt.Errorf("recording %s %s as sent: %w", msg.Kind, r.id, err)
		}
		if err := tx.RecordEmail(rec, store.EmailDelivery{
			Kind: msg.Kind, Ref: r.ref, Recipient: msg.To, Transport: s.mailer.Transport(), MessageID: msg.MessageID(), At: now,
		}); err != nil {
			return fmt.Errorf("recording the delivery of %s %s: %w", msg.Kind, r.id, err)
		}
		if err := settle(rec, tx, r); err != nil {
			return err
		}
		if err := tx.Commit(rec); err != nil {
			return fmt.Errorf("recording %s %s as sent: %w", msg.Kind, r.id, err)
		}
		s.m.emailsSent.WithLabelValues(msg.Kind).Inc()
		if r.alert != nil {
			s.m.notifications.WithLabelValues(store.KindEmail, outcomeSent).Inc()
			s.m.notificationLatency.WithLabelValues(store.KindEmail).Observe(max(0, now.Sub(r.created).Seconds()))
		}
		s.logger.Info("email sent", "kind", msg.Kind, "id", r.id, "transport", s.mailer.Transport(), "attempts", r.attempts+1)
		return nil
	}
	permanent := IsPermanent(err)
	failed, label := false, "transient"
	if permanent || r.attempts+1 >= s.cfg.MaxAttempts {
		failed = true
	}
	if permanent {
		label = "permanent"
	}
	next := now.Add(retry.Backoff(s.cfg.RetryMin, s.cfg.RetryMax, r.attempts))
	if uerr := tx.RecordAttempt(work, r.o, r.id, failed, truncate(err.Error(), 1000), next, nil); uerr != nil {
		return fmt.Errorf("recording the failed delivery of %s %s: %w (delivery: %w)", msg.Kind, r.id, uerr, err)
	}
	if uerr := settle(work, tx, r); uerr != nil {
		return fmt.Errorf("recording the failed delivery of %s %s: %w (delivery: %w)", msg.Kind, r.id, uerr, err)
	}
	if cerr := tx.Commit(work); cerr != nil {
		return fmt.Errorf("recording the failed delivery of %s %s: %w (delivery: %w)", msg.Kind, r.id, cerr, err)
	}
	s.m.emailsFailed.WithLabelValues(msg.Kind, label).Inc()
	if r.alert != nil {
		outcome := outcomeRetry
		if failed {
			outcome = outcomeFailed
		}
		s.m.notifications.WithLabelValues(store.KindEmail, outcome).Inc()
	}
	state := "pending"
	if failed {
		state = "failed"
	}
	s.logger.Warn("email delivery failed", "kind", msg.Kind, "id", r.id, "attempts", r.attempts+1, "state", state,
		"next_attempt_at", next, "error", err)
	return nil
}
