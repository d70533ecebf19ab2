package alerter_test

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// eventuallyCounter waits until a counter of r reaches want (metrics are counted just
// after the outcome is committed).
func eventuallyCounter(t *testing.T, r *running, want float64, name string, labels ...string) {
	t.Helper()
	var got float64
	require.Eventually(t, func() bool {
		got = counter(t, r.reg, name, labels...)
		return got == want
	}, waitFor, pollEvery, "%s%v = %v, want %v", name, labels, got, want)
}

// queueVerification records a verification link and its pending mail exactly as the
// api does at registration (the alerter's tests cannot import the api), and returns the
// row id and the link.
func (b *bundle) queueVerification(t *testing.T, u pgstore.User, expires time.Time) (uuid.UUID, string) {
	t.Helper()
	id := uuid.New()
	token := strings.ReplaceAll(uuid.NewString()+uuid.NewString(), "-", "")[:43]
	h := sha256.Sum256([]byte(token))
	link := "https://pulse.example.com/auth/verify?token=" + token
	_, err := b.pool.Exec(context.Background(), `
		INSERT INTO email_verifications (id, user_id, email, token_hash, created_at, expires_at, state, link, next_attempt_at)
		VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $5)`, id, u.ID, u.Email, h[:], b.clock.Now(), expires, link)
	require.NoError(t, err)
	return id, link
}

// The api's outbox: a verification mail recorded with the user is sent by the delivery
// loop to the real SMTP server, with the link in both parts; the link is forgotten once
// sent and the delivery is logged. A link that expired before it could be sent is not
// sent at all (recorded skipped), and neither is one whose address has changed.
func TestVerificationMailIsSentFromTheOutbox(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u, _ := b.unverifiedUser(t, "new@example.com")
	stale, _ := b.unverifiedUser(t, "stale@example.com")
	moved, _ := b.unverifiedUser(t, "moved@example.com")
	id, link := b.queueVerification(t, u, b.clock.Now().Add(24*time.Hour))
	b.queueVerification(t, stale, b.clock.Now().Add(-time.Second))
	b.queueVerification(t, moved, b.clock.Now().Add(24*time.Hour))
	_, err := b.pool.Exec(context.Background(), `UPDATE users SET email = 'elsewhere@example.com' WHERE id = $1`, moved.ID)
	require.NoError(t, err)

	r := b.start(t, b.config(t, "pulseboard-alerter"), nil)
	msgs := b.waitMessages(t, "new@example.com", 1, waitFor)
	m := parse(t, msgs[0])
	require.Equal(t, "[PulseBoard] Verify your email address", m.Subject)
	require.Contains(t, m.Text, link)
	require.Contains(t, m.HTML, `href="`+link+`"`)
	require.Equal(t, "<verify-"+id.String()+"@pulseboard>", m.Header.Get("Message-Id"))
	// Nothing the registrant typed: the address may be someone else's.
	require.NotContains(t, m.Text+m.HTML+m.Subject, "User new@example.com")
	b.eventually(t, 1, `SELECT count(*) FROM email_verifications WHERE id = $1 AND state = 'sent' AND link IS NULL AND attempts = 1`, id)
	b.eventually(t, 2, `SELECT count(*) FROM email_verifications WHERE state = 'skipped' AND link IS NULL`)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM email_deliveries WHERE kind = 'verification' AND ref_id = $1 AND recipient = 'new@example.com'`, id))
	require.Empty(t, b.smtp.To("stale@example.com"))
	require.Empty(t, b.smtp.To("moved@example.com"))
	require.Empty(t, b.smtp.To("elsewhere@example.com"))
	require.Len(t, b.smtp.Messages(), 1)
	eventuallyCounter(t, r, 1, "pulseboard_alerter_emails_sent_total", "kind", "verification")
	eventuallyCounter(t, r, 2, "pulseboard_alerter_emails_skipped_total", "kind", "verification", "reason", "stale")
}

// An attacker registers with someone else's address: the alerts of the account's
// projects are recorded (the alert state advances: the cooldown runs as usual) but no
// mail goes out, and each is recorded skipped_unverified, never retried. Once the
// address is verified, the next crossing is mailed.
func TestAlertsForUnverifiedOwnerAreRecordedNotSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u, ps := b.unverifiedUser(t, "victim@example.com", "attacker-named <b>project</b>")
	p := ps[0]
	r := b.start(t, b.config(t, "pulseboard-alerter"), nil)
	now := b.clock.Now()
	b.produce(t, errorsAt(t, p.ID, 10, now.Add(-20*time.Second), time.Second)...)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'skipped_unverified' AND attempts = 0 AND last_error LIKE '%not verified%'`, p.ID)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alert_state WHERE project_id = $1 AND last_fired_at IS NOT NULL AND firing`, p.ID),
		"the alert state advances as for any owner")
	eventuallyCounter(t, r, 1, "pulseboard_alerter_emails_skipped_total", "kind", "threshold", "reason", "unverified")

	// Nothing more happens to it: a skipped alert is not retried.
	time.Sleep(300 * time.Millisecond) // several delivery intervals (50 ms)
	require.Empty(t, b.smtp.Messages())
	require.Zero(t, b.count(t, `SELECT count(*) FROM email_deliveries`))

	// Verified now; the next crossing after the cooldown (15 min) is mailed.
	b.verify(t, u.ID)
	b.clock.Advance(20 * time.Minute)
	b.produce(t, errorsAt(t, p.ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	// (The first crossing's resolved notice may be mailed too, before or after it,
	// depending on when the evaluator sees the quiet window: count threshold alerts.)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND kind = 'threshold' AND state = 'sent'`, p.ID)
	var subjects []string
	for _, m := range b.smtp.To("victim@example.com") {
		subjects = append(subjects, parse(t, m).Subject)
	}
	require.Condition(t, func() bool {
		for _, s := range subjects {
			if strings.Contains(s, "10 errors") {
				return true
			}
		}
		return false
	}, "the threshold alert is mailed: %q", subjects)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'skipped_unverified'`, p.ID))
}

// An operator of a trusted single-user install turns the requirement off
// (ALERT_REQUIRE_VERIFIED=false): an unverified owner is mailed.
func TestRequireVerifiedCanBeTurnedOff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.unverifiedUser(t, "solo@example.com", "home")
	cfg := b.config(t, "pulseboard-alerter")
	cfg.RequireVerified = false
	b.start(t, cfg, nil)
	b.produce(t, errorsAt(t, ps[0].ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	b.waitMessages(t, "solo@example.com", 1, waitFor)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE state = 'sent'`)
}

// The digest goes to verified users only; an unverified user's digest is recorded
// skipped_unverified and the job still succeeds.
func TestDigestSkipsUnverifiedUsers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, good := b.user(t, "verified@example.com", "alpha")
	_, bad := b.unverifiedUser(t, "unverified@example.com", "beta")
	slot := nextMidnight()
	b.rollup(t, good[0].ID, slot.Add(-time.Hour), "event", 3)
	b.rollup(t, bad[0].ID, slot.Add(-time.Hour), "event", 3)
	b.ranBefore(t, alerter.JobDigest, slot.Add(-24*time.Hour))
	b.clock.Set(slot.Add(time.Second))
	r := b.start(t, b.config(t, "pulseboard-alerter"), nil)
	b.eventually(t, 1, `SELECT count(*) FROM job_runs WHERE job = 'digest' AND scheduled_for = $1 AND state = 'succeeded'`, slot)
	b.eventually(t, 1, `SELECT count(*) FROM digest_sends WHERE recipient = 'verified@example.com' AND state = 'sent'`)
	b.eventually(t, 1, `SELECT count(*) FROM digest_sends WHERE recipient = 'unverified@example.com' AND state = 'skipped_unverified'`)
	eventuallyCounter(t, r, 1, "pulseboard_alerter_emails_skipped_total", "kind", "digest", "reason", "unverified")
	b.waitMessages(t, "verified@example.com", 1, waitFor)
	require.Empty(t, b.smtp.To("unverified@example.com"))
}

// One verified address owns six projects that all cross their threshold at once; two
// replicas (different groups, so both evaluate and both deliver) share PostgreSQL. With
// ALERT_MAIL_PER_RECIPIENT_PER_HOUR=3 the address gets exactly three mails, and the
// other three alerts are recorded skipped_rate_limited; another address is unaffected.
// An hour later the address gets mail again.
func TestPerRecipientRateHoldsAcrossReplicas(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.smtp.delay.Store(int64(100 * time.Millisecond)) // a slow server widens every race
	names := []string{"p1", "p2", "p3", "p4", "p5", "p6"}
	_, ps := b.user(t, "busy@example.com", names...)
	_, other := b.user(t, "calm@example.com", "q1")
	cfgOne, cfgTwo := b.config(t, "alerter-one"), b.config(t, "alerter-two")
	cfgOne.MailPerRecipientPerHour, cfgTwo.MailPerRecipientPerHour = 3, 3
	one := b.start(t, cfgOne, nil)
	two := b.start(t, cfgTwo, nil)
	now := b.clock.Now()
	var evs []event.Event
	for _, p := range append(ps, other...) {
		evs = append(evs, errorsAt(t, p.ID, 10, now.Add(-20*time.Second), time.Second)...)
	}
	b.produce(t, evs...)
	b.eventually(t, 7, `SELECT count(*) FROM alerts WHERE state <> 'pending'`)
	b.waitLag(t, "alerter-one")
	b.waitLag(t, "alerter-two")
	require.Len(t, b.smtp.To("busy@example.com"), 3)
	require.Len(t, b.smtp.To("calm@example.com"), 1)
	require.Equal(t, 3, b.count(t, `SELECT count(*) FROM alerts WHERE recipient = 'busy@example.com' AND state = 'sent'`))
	require.Equal(t, 3, b.count(t, `SELECT count(*) FROM alerts WHERE recipient = 'busy@example.com' AND state = 'skipped_rate_limited' AND last_error LIKE '%ALERT_MAIL_PER_RECIPIENT_PER_HOUR=3%'`))
	var skipped float64
	require.Eventually(t, func() bool {
		skipped = counter(t, one.reg, "pulseboard_alerter_emails_skipped_total", "kind", "threshold", "reason", "rate_limited") +
			counter(t, two.reg, "pulseboard_alerter_emails_skipped_total", "kind", "threshold", "reason", "rate_limited")
		return skipped == 3
	}, waitFor, pollEvery, "skipped_rate_limited counted %v times, want 3", skipped)

	// An hour later (and past the cooldown) the address gets mail again.
	b.clock.Advance(61 * time.Minute)
	b.produce(t, errorsAt(t, ps[0].ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	b.waitMessages(t, "busy@example.com", 4, waitFor)
}
