package alerter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pulseboard/pulseboard/alerter/internal/mail"
)

// Reasons for not sending an email (the states skipped_<reason> of alerts and
// digest_sends; metric label of pulseboard_alerter_emails_skipped_total).
const (
	skipUnverified  = "unverified"
	skipRateLimited = "rate_limited"
	skipStale       = "stale"
)

// recipientLockClass is the first key of the per-recipient advisory locks ("PBRC").
const recipientLockClass = 0x50425243

// recipientBusyDelay is how long a mail waits when another replica is sending to the
// same recipient right now (the rate is counted one sender at a time).
const recipientBusyDelay = time.Second

// gate decides, for a claimed alert or digest (row id of table, locked by tx), whether
// it may be sent now. It "holds" the mail (returns true, after committing tx) when:
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
func (s *Service) gate(ctx context.Context, tx pgx.Tx, table, kind string, id uuid.UUID, rcpt string, verified bool) (bool, error) {
	if s.cfg.RequireVerified && !verified {
		return true, s.skip(ctx, tx, table, kind, id, skipUnverified, "recipient address not verified (ALERT_REQUIRE_VERIFIED)")
	}
	if s.cfg.MailPerRecipientPerHour <= 0 {
		return false, nil
	}
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, hashtext(lower($2)))`, int32(recipientLockClass), rcpt).Scan(&locked); err != nil {
		return false, fmt.Errorf("locking the recipient of %s %s: %w", kind, id, err)
	}
	if !locked {
		if _, err := tx.Exec(ctx, `UPDATE `+table+` SET next_attempt_at = $2 WHERE id = $1`, id, s.now().Add(recipientBusyDelay)); err != nil {
			return false, fmt.Errorf("postponing %s %s: %w", kind, id, err)
		}
		return true, commit(ctx, tx, kind, id)
	}
	var recent int
	if err := tx.QueryRow(ctx, `
		SELECT count(*) FROM email_deliveries
		WHERE recipient = $1 AND delivered_at > $2 AND kind <> 'verification'`,
		rcpt, s.now().Add(-time.Hour)).Scan(&recent); err != nil {
		return false, fmt.Errorf("counting the recent mail of %s %s's recipient: %w", kind, id, err)
	}
	if recent >= s.cfg.MailPerRecipientPerHour {
		return true, s.skip(ctx, tx, table, kind, id, skipRateLimited,
			fmt.Sprintf("recipient got %d mails in the last hour (ALERT_MAIL_PER_RECIPIENT_PER_HOUR=%d)", recent, s.cfg.MailPerRecipientPerHour))
	}
	return false, nil
}

// skip records a mail as not sent on purpose (state skipped_<reason>), for good.
func (s *Service) skip(ctx context.Context, tx pgx.Tx, table, kind string, id uuid.UUID, reason, why string) error {
	if _, err := tx.Exec(ctx, `UPDATE `+table+` SET state = $2, last_error = $3 WHERE id = $1`, id, "skipped_"+reason, why); err != nil {
		return fmt.Errorf("recording %s %s as skipped: %w", kind, id, err)
	}
	if err := commit(ctx, tx, kind, id); err != nil {
		return err
	}
	s.m.emailsSkipped.WithLabelValues(kind, reason).Inc()
	s.logger.Info("email not sent", "kind", kind, "id", id, "reason", reason, "detail", why)
	return nil
}

func commit(ctx context.Context, tx pgx.Tx, kind string, id uuid.UUID) error {
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("recording %s %s: %w", kind, id, err)
	}
	return nil
}

// clearLink is the SET clause that forgets a verification mail's link (it contains the
// token) once the mail is sent or given up; other tables have no link.
func clearLink(table string) string {
	if table == "email_verifications" {
		return ", link = NULL"
	}
	return ""
}

// deliverVerification sends one due verification mail (the api's outbox,
// email_verifications); it reports whether there was one. A link that can no longer
// verify anything (expired, used, superseded by an address change, or the address is
// verified already) is not sent: recorded skipped. Verification mails are neither
// gated on verification (obviously) nor counted by the per-recipient rate: the api's
// resend throttle bounds them.
func (s *Service) deliverVerification(ctx, work context.Context) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the verification delivery: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var (
		id            uuid.UUID
		rcpt, current string
		link          *string
		attempts      int
		expires       time.Time
		used          *time.Time
		verified      bool
	)
	err = tx.QueryRow(ctx, `
		SELECT v.id, v.email, v.link, v.attempts, v.expires_at, v.used_at, u.email, u.email_verified_at IS NOT NULL
		FROM email_verifications v JOIN users u ON u.id = v.user_id
		WHERE v.state = 'pending' AND v.next_attempt_at <= $1
		ORDER BY v.next_attempt_at, v.id
		LIMIT 1
		FOR UPDATE OF v SKIP LOCKED`, s.now()).Scan(&id, &rcpt, &link, &attempts, &expires, &used, &current, &verified)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claiming a verification mail: %w", err)
	}
	now := s.now()
	if link == nil || used != nil || !now.Before(expires) || verified || !mail.SameAddress(rcpt, current) {
		if _, err := tx.Exec(ctx, `UPDATE email_verifications SET state = 'skipped', link = NULL, last_error = $2 WHERE id = $1`,
			id, "the link can no longer verify the address (expired, used, superseded or already verified)"); err != nil {
			return false, fmt.Errorf("recording verification mail %s as skipped: %w", id, err)
		}
		if err := commit(ctx, tx, kindVerification, id); err != nil {
			return false, err
		}
		s.m.emailsSkipped.WithLabelValues(kindVerification, skipStale).Inc()
		return true, nil
	}
	msg, err := mail.ComposeVerification(rcpt, mail.Verification{ID: id.String(), Link: *link, Expires: expires})
	if err != nil {
		// Nothing a retry could fix; never leave it pending to fail again forever.
		if _, uerr := tx.Exec(ctx, `UPDATE email_verifications SET state = 'failed', link = NULL, last_error = $2 WHERE id = $1`,
			id, truncate(err.Error(), 1000)); uerr != nil {
			return false, errors.Join(err, uerr)
		}
		return true, errors.Join(err, commit(ctx, tx, kindVerification, id))
	}
	return true, s.send(ctx, work, tx, msg, id, attempts, "email_verifications")
}
