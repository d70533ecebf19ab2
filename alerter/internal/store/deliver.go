package store

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// KindEmail is the email channel's kind (notification_channels.kind,
// notification_deliveries.kind); the HTTP kinds are internal/channel's Registry.
const KindEmail = "email"

// Outbox is a table of mails or notifications to send: rows are claimed pending FOR
// UPDATE SKIP LOCKED, sent, and their outcome recorded in the claiming transaction.
type Outbox string

// The outboxes.
const (
	Verifications Outbox = "email_verifications"
	Digests       Outbox = "digest_sends"
	Deliveries    Outbox = "notification_deliveries"
)

// clearLink is the SET clause that forgets a verification mail's link (it contains the
// token) once the mail is sent or given up; other outboxes have no link.
func (o Outbox) clearLink() string {
	if o == Verifications {
		return ", link = NULL"
	}
	return ""
}

// Delivery is a claimed notification_deliveries row with what sending it needs.
type Delivery struct {
	ID, AlertID, Project uuid.UUID
	// ChannelID is nil when the channel was deleted, or the delivery is the owner email
	// of a project without channel rows.
	ChannelID *uuid.UUID
	// Kind is the channel kind (email, webhook, slack); AlertKind threshold or resolved.
	Kind, AlertKind string
	// Target is the recipient address (email) or the redacted URL.
	Target   string
	Attempts int
	// URL and Secret are the channel's (webhook, slack); ChannelEnabled false when the
	// channel was disabled after the alert was recorded.
	URL            string
	Secret         []byte
	ChannelExists  bool
	ChannelEnabled bool
	// The alert.
	WindowStart, WindowEnd time.Time
	ErrorCount, Threshold  int
	ProjectName            string
	Cooldown               time.Duration
	AlertCreatedAt         time.Time
	CreatedAt              time.Time
	// Verified: the owner's current address is verified and is Target.
	Verified bool
}

const claimDeliverySQL = `
SELECT d.id, d.alert_id, a.project_id, d.channel_id, d.kind, a.kind, d.target, d.attempts,
       c.url, c.secret, c.id IS NOT NULL, coalesce(c.enabled, false),
       a.window_start, a.window_end, a.error_count, a.threshold, p.name,
       coalesce(p.alert_cooldown_seconds::bigint * 1000000, $2), a.created_at, d.created_at,
       u.email_verified_at IS NOT NULL AND lower(u.email) = lower(d.target)
FROM notification_deliveries d
JOIN alerts a ON a.id = d.alert_id
JOIN projects p ON p.id = a.project_id
JOIN users u ON u.id = p.user_id
LEFT JOIN notification_channels c ON c.id = d.channel_id
WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND d.kind = ANY($3)
ORDER BY d.next_attempt_at, d.id
LIMIT 1
FOR UPDATE OF d SKIP LOCKED
FOR KEY SHARE OF a SKIP LOCKED`

// ClaimDelivery claims the oldest due pending delivery of one of kinds. The row stays
// locked until the transaction ends, so no other replica sends it meanwhile, and a
// replica that dies mid-send releases it at once (its connection closes). ErrNotFound:
// none is due (or all are being sent by others).
//
// The alert is held FOR KEY SHARE: other channels' deliveries of the same alert are
// sent at the same time (KEY SHARE and the summary's NO KEY UPDATE do not conflict),
// while deleting the alert (its project) waits for the send to be recorded instead of
// deadlocking against SummarizeAlert.
func (t *Tx) ClaimDelivery(ctx context.Context, now time.Time, kinds []string, defaultCooldown time.Duration) (Delivery, error) {
	var d Delivery
	var rawURL *string
	var cooldownUS int64
	err := t.tx.QueryRow(ctx, claimDeliverySQL, now, defaultCooldown.Microseconds(), kinds).Scan(
		&d.ID, &d.AlertID, &d.Project, &d.ChannelID, &d.Kind, &d.AlertKind, &d.Target, &d.Attempts,
		&rawURL, &d.Secret, &d.ChannelExists, &d.ChannelEnabled,
		&d.WindowStart, &d.WindowEnd, &d.ErrorCount, &d.Threshold, &d.ProjectName,
		&cooldownUS, &d.AlertCreatedAt, &d.CreatedAt, &d.Verified)
	if err != nil {
		return d, mapErr("claiming a delivery", err)
	}
	d.URL = deref(rawURL)
	d.Cooldown = time.Duration(cooldownUS) * time.Microsecond
	return d, nil
}

// NameCount is an error name and how often it occurred.
type NameCount struct {
	Name  string
	Count int64
}

// TopErrors returns the most frequent error names of project in [start, end].
func (t *Tx) TopErrors(ctx context.Context, project uuid.UUID, start, end time.Time, limit int) ([]NameCount, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT name, count(*) FROM events
		WHERE project_id = $1 AND type = 'error' AND received_at >= $2 AND received_at <= $3
		GROUP BY name ORDER BY count(*) DESC, name LIMIT $4`, project, start, end, limit)
	if err != nil {
		return nil, mapErr("reading the window's errors", err)
	}
	top, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (NameCount, error) {
		var nc NameCount
		return nc, r.Scan(&nc.Name, &nc.Count)
	})
	return top, mapErr("reading the window's errors", err)
}

// Digest is a claimed digest_sends row.
type Digest struct {
	ID        uuid.UUID
	Recipient string
	UserName  string
	Content   json.RawMessage
	Attempts  int
	Verified  bool
}

// ClaimDigest claims the oldest due pending digest (of date, when set).
func (t *Tx) ClaimDigest(ctx context.Context, now time.Time, date *time.Time) (Digest, error) {
	var d Digest
	err := t.tx.QueryRow(ctx, `
		SELECT d.id, d.recipient, d.content, d.attempts, u.name,
		       u.email_verified_at IS NOT NULL AND lower(u.email) = lower(d.recipient)
		FROM digest_sends d JOIN users u ON u.id = d.user_id
		WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND ($2::date IS NULL OR d.digest_date = $2::date)
		ORDER BY d.next_attempt_at, d.id
		LIMIT 1
		FOR UPDATE OF d SKIP LOCKED`, now, date).Scan(&d.ID, &d.Recipient, &d.Content, &d.Attempts, &d.UserName, &d.Verified)
	return d, mapErr("claiming a digest", err)
}

// Verification is a claimed email_verifications row.
type Verification struct {
	ID        uuid.UUID
	Recipient string
	// Current is the user's current address; Link nil once erased.
	Current  string
	Link     *string
	Attempts int
	Expires  time.Time
	Used     *time.Time
	Verified bool
}

// ClaimVerification claims the oldest due pending verification mail.
func (t *Tx) ClaimVerification(ctx context.Context, now time.Time) (Verification, error) {
	var v Verification
	err := t.tx.QueryRow(ctx, `
		SELECT v.id, v.email, v.link, v.attempts, v.expires_at, v.used_at, u.email, u.email_verified_at IS NOT NULL
		FROM email_verifications v JOIN users u ON u.id = v.user_id
		WHERE v.state = 'pending' AND v.next_attempt_at <= $1
		ORDER BY v.next_attempt_at, v.id
		LIMIT 1
		FOR UPDATE OF v SKIP LOCKED`, now).Scan(&v.ID, &v.Recipient, &v.Link, &v.Attempts, &v.Expires, &v.Used, &v.Current, &v.Verified)
	return v, mapErr("claiming a verification mail", err)
}

// recipientLockClass is the first key of the per-recipient advisory locks ("PBRC").
const recipientLockClass = 0x50425243

// TryLockRecipient takes the per-recipient transaction advisory lock without waiting;
// false: another transaction holds it.
func (t *Tx) TryLockRecipient(ctx context.Context, rcpt string) (bool, error) {
	var locked bool
	err := t.tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, hashtext(lower($2)))`, int32(recipientLockClass), rcpt).Scan(&locked)
	return locked, mapErr("locking the recipient", err)
}

// RecentMail counts the alert and digest mails delivered to rcpt since since (every
// project, every replica; verification mails are not counted).
func (t *Tx) RecentMail(ctx context.Context, rcpt string, since time.Time) (int, error) {
	var n int
	err := t.tx.QueryRow(ctx, `
		SELECT count(*) FROM email_deliveries
		WHERE recipient = $1 AND delivered_at > $2 AND kind <> 'verification'`, rcpt, since).Scan(&n)
	return n, mapErr("counting the recipient's recent mail", err)
}

// Postpone moves a claimed row's next attempt to at, nothing else.
func (t *Tx) Postpone(ctx context.Context, o Outbox, id uuid.UUID, at time.Time) error {
	_, err := t.tx.Exec(ctx, `UPDATE `+string(o)+` SET next_attempt_at = $2 WHERE id = $1`, id, at)
	return mapErr("postponing "+string(o), err)
}

// Skip records a claimed row as not sent on purpose, for good (state, e.g.
// skipped_unverified; email_verifications: skipped). Attempts are unchanged; a
// verification link is erased.
func (t *Tx) Skip(ctx context.Context, o Outbox, id uuid.UUID, state, why string) error {
	_, err := t.tx.Exec(ctx, `UPDATE `+string(o)+` SET state = $2, last_error = $3`+o.clearLink()+` WHERE id = $1`, id, state, why)
	return mapErr("recording a skipped "+string(o), err)
}

// Fail records a claimed row as failed without an attempt (nothing was sent: there was
// nothing a retry could fix).
func (t *Tx) Fail(ctx context.Context, o Outbox, id uuid.UUID, why string) error {
	_, err := t.tx.Exec(ctx, `UPDATE `+string(o)+` SET state = 'failed', last_error = $2`+o.clearLink()+` WHERE id = $1`, id, why)
	return mapErr("recording a failed "+string(o), err)
}

// RecordSent records a claimed row as sent: one more attempt, no error. status is the
// HTTP status of a webhook's answer (notification_deliveries only).
func (t *Tx) RecordSent(ctx context.Context, o Outbox, id uuid.UUID, now time.Time, status *int) error {
	extra := o.clearLink()
	args := []any{id, now}
	if o == Deliveries {
		extra += ", response_status = $3"
		args = append(args, status)
	}
	_, err := t.tx.Exec(ctx, `UPDATE `+string(o)+` SET state = 'sent', sent_at = $2, attempts = attempts + 1, last_error = NULL`+extra+` WHERE id = $1`, args...)
	return mapErr("recording a sent "+string(o), err)
}

// RecordAttempt records a failed attempt: still pending with its next attempt time, or
// failed (given up). A verification link is erased when given up.
func (t *Tx) RecordAttempt(ctx context.Context, o Outbox, id uuid.UUID, failed bool, reason string, next time.Time, status *int) error {
	state, extra := "pending", ""
	if failed {
		state, extra = "failed", o.clearLink()
	}
	args := []any{id, state, reason, next}
	if o == Deliveries {
		extra += ", response_status = $5"
		args = append(args, status)
	}
	_, err := t.tx.Exec(ctx, `
		UPDATE `+string(o)+` SET state = $2, attempts = attempts + 1, last_error = $3, next_attempt_at = $4`+extra+` WHERE id = $1`, args...)
	return mapErr("recording a failed attempt of "+string(o), err)
}

// EmailDelivery is an email_deliveries row: an email handed to a transport.
type EmailDelivery struct {
	Kind      string    // threshold, resolved, digest, verification
	Ref       uuid.UUID // alerts.id, digest_sends.id or email_verifications.id
	Recipient string
	Transport string // smtp, log
	MessageID string
	At        time.Time
}

// RecordEmail inserts an email_deliveries row.
func (t *Tx) RecordEmail(ctx context.Context, e EmailDelivery) error {
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(ctx, `
		INSERT INTO email_deliveries (id, kind, ref_id, recipient, transport, message_id, delivered_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, id, e.Kind, e.Ref, e.Recipient, e.Transport, e.MessageID, e.At)
	return mapErr("recording the email delivery", err)
}

// summarizeSQL sets an alert's summary from its deliveries (alerter/doc.go, "Alert
// state"): pending while one is pending; else sent if one was sent; else failed if one
// failed; else skipped_unverified if one was, else skipped_rate_limited. attempts is the
// largest of the deliveries', last_error the error of an unsent one (failed first),
// next_attempt_at the earliest pending one's, sent_at the first sent.
const summarizeSQL = `
WITH d AS (SELECT state, attempts, last_error, next_attempt_at, sent_at, id FROM notification_deliveries WHERE alert_id = $1)
UPDATE alerts a SET
    state = CASE
        WHEN EXISTS (SELECT 1 FROM d WHERE state = 'pending') THEN 'pending'
        WHEN EXISTS (SELECT 1 FROM d WHERE state = 'sent') THEN 'sent'
        WHEN EXISTS (SELECT 1 FROM d WHERE state = 'failed') THEN 'failed'
        WHEN EXISTS (SELECT 1 FROM d WHERE state = 'skipped_unverified') THEN 'skipped_unverified'
        ELSE 'skipped_rate_limited' END,
    attempts = coalesce((SELECT max(attempts) FROM d), 0),
    last_error = (SELECT last_error FROM d WHERE state <> 'sent' AND last_error IS NOT NULL
                  ORDER BY state = 'failed' DESC, attempts DESC, id LIMIT 1),
    next_attempt_at = coalesce((SELECT min(next_attempt_at) FROM d WHERE state = 'pending'), a.next_attempt_at),
    sent_at = (SELECT min(sent_at) FROM d WHERE state = 'sent')
WHERE a.id = $1 AND EXISTS (SELECT 1 FROM d)`

// SummarizeAlert updates alert's summary from its deliveries. The alert row is locked
// first, in a statement of its own: a transaction recording another delivery of the same
// alert (another channel, another replica) then commits first, and the summary, read in
// the next statement, includes its outcome.
func (t *Tx) SummarizeAlert(ctx context.Context, alert uuid.UUID) error {
	if _, err := t.tx.Exec(ctx, `SELECT 1 FROM alerts WHERE id = $1 FOR NO KEY UPDATE`, alert); err != nil {
		return mapErr("locking the alert", err)
	}
	_, err := t.tx.Exec(ctx, summarizeSQL, alert)
	return mapErr("summarising the alert", err)
}

// EmailAddress is the address of an email channel's url ("a@example.com" or
// "mailto:a@example.com").
func EmailAddress(u string) string {
	u = strings.TrimSpace(u)
	if len(u) >= 7 && strings.EqualFold(u[:7], "mailto:") {
		return u[7:]
	}
	return u
}

// RedactURL is a webhook URL for display: scheme and host only, the path (which often
// is the credential, as in Slack's) replaced by "…".
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(invalid URL)"
	}
	s := fmt.Sprintf("%s://%s", u.Scheme, u.Host)
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		s += "/…"
	}
	return s
}
