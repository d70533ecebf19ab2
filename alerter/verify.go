package alerter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/alerter/internal/mail"
	"github.com/pulseboard/pulseboard/alerter/internal/store"
)

// Reasons for not sending an email (the states skipped_<reason> of email deliveries,
// hence of their alerts' summary, and of digest_sends; metric label of pulseboard_alerter_emails_skipped_total).
const (
	skipUnverified  = "unverified"
	skipRateLimited = "rate_limited"
	skipStale       = "stale"
)

// recipientBusyDelay is how long a mail waits when another replica is sending to the
// same recipient right now (the rate is counted one sender at a time).
const recipientBusyDelay = time.Second

// gate decides, for a claimed email delivery of an alert or a digest (r, locked by tx),
// whether it may be sent now. It "holds" the mail (returns true, after committing tx) when:
//
//   - ALERT_REQUIRE_VERIFIED and the recipient is not the owner's verified address:
//     recorded skipped_unverified, never retried (the alert state advanced as usual
//     when the alert was recorded: cooldowns are unchanged);
//   - another replica is sending to the same recipient this instant: next_attempt_at
//     moves recipientBusyDelay later, nothing else changes;
//   - the recipient got ALERT_MAIL_PER_RECIPIENT_PER_HOUR alert and digest mails in
//     the last hour (email_deliveries, across projects and replicas): recorded
//     skipped_rate_limited, never retried. Dropped rather than deferred: a late alert
//     is worth little, and a deferred backlog would outlast the flood that made it.
//
// The rate is exact across replicas: the transaction takes a per-recipient advisory
// lock (pg_try_advisory_xact_lock) before counting and keeps it, with the row, until
// the delivery is recorded; a replica that cannot take it does not count at all.
func (s *Service) gate(ctx context.Context, tx *store.Tx, r row, kind, rcpt string, verified bool) (bool, error) {
	if s.cfg.RequireVerified && !verified {
		return true, s.skip(ctx, tx, r, kind, skipUnverified, "recipient address not verified (ALERT_REQUIRE_VERIFIED)")
	}
	if s.cfg.MailPerRecipientPerHour <= 0 {
		return false, nil
	}
	locked, err := tx.TryLockRecipient(ctx, rcpt)
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", kind, r.id, err)
	}
	if !locked {
		if err := tx.Postpone(ctx, r.o, r.id, s.now().Add(recipientBusyDelay)); err != nil {
			return false, err
		}
		if err := settle(ctx, tx, r); err != nil {
			return false, err
		}
		return true, commit(ctx, tx, kind, r.id)
	}
	recent, err := tx.RecentMail(ctx, rcpt, s.now().Add(-time.Hour))
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", kind, r.id, err)
	}
	if recent >= s.cfg.MailPerRecipientPerHour {
		return true, s.skip(ctx, tx, r, kind, skipRateLimited,
			fmt.Sprintf("recipient got %d mails in the last hour (ALERT_MAIL_PER_RECIPIENT_PER_HOUR=%d)", recent, s.cfg.MailPerRecipientPerHour))
	}
	return false, nil
}

// skip records a mail as not sent on purpose (state skipped_<reason>), for good.
func (s *Service) skip(ctx context.Context, tx *store.Tx, r row, kind, reason, why string) error {
	if err := tx.Skip(ctx, r.o, r.id, "skipped_"+reason, why); err != nil {
		return err
	}
	if err := settle(ctx, tx, r); err != nil {
		return err
	}
	if err := commit(ctx, tx, kind, r.id); err != nil {
		return err
	}
	s.m.emailsSkipped.WithLabelValues(kind, reason).Inc()
	if r.alert != nil {
		s.m.notifications.WithLabelValues(store.KindEmail, outcomeSkipped).Inc()
	}
	s.logger.Info("email not sent", "kind", kind, "id", r.id, "reason", reason, "detail", why)
	return nil
}

func commit(ctx context.Context, tx *store.Tx, kind string, id uuid.UUID) error {
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("recording %s %s: %w", kind, id, err)
	}
	return nil
}

// deliverVerification sends one due verification mail (the api's outbox,
// email_verifications); it reports whether there was one. A link that can no longer
// verify anything (expired, used, superseded by an address change, or the address is
// verified already) is not sent: recorded skipped. Verification mails are neither
// gated on verification (obviously) nor counted by the per-recipient rate: the api's
// resend throttle bounds them.
func (s *Service) deliverVerification(ctx, work context.Context) (bool, error) {
	tx, err := s.store.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the verification delivery: %w", err)
	}
	defer tx.Rollback(ctx)
	v, err := tx.ClaimVerification(ctx, s.now())
	if store.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r := row{o: store.Verifications, id: v.ID, ref: v.ID, attempts: v.Attempts}
	now := s.now()
	if v.Link == nil || v.Used != nil || !now.Before(v.Expires) || v.Verified || !mail.SameAddress(v.Recipient, v.Current) {
		if err := tx.Skip(ctx, r.o, r.id, "skipped", "the link can no longer verify the address (expired, used, superseded or already verified)"); err != nil {
			return false, err
		}
		if err := commit(ctx, tx, kindVerification, v.ID); err != nil {
			return false, err
		}
		s.m.emailsSkipped.WithLabelValues(kindVerification, skipStale).Inc()
		return true, nil
	}
	msg, err := mail.ComposeVerification(v.Recipient, mail.Verification{ID: v.ID.String(), Link: *v.Link, Expires: v.Expires})
	if err != nil {
		// Nothing a retry could fix; never leave it pending to fail again forever.
		if uerr := tx.Fail(ctx, r.o, r.id, truncate(err.Error(), 1000)); uerr != nil {
			return false, errors.Join(err, uerr)
		}
		return true, errors.Join(err, commit(ctx, tx, kindVerification, v.ID))
	}
	return true, s.send(ctx, work, tx, msg, r)
}
