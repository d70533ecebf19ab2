package alerter_test

// The email half of the bad-input suite (docs/reliability.md "Alerter, email", issue 7):
// stored text that reaches mail headers — a user's name in the digest, project names, a
// recipient address from data the api would refuse today — can neither add a header nor
// a recipient. (Project and error names in threshold alerts: escaping_test.go.)

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
)

// requireOneRecipient checks the raw head of a message: exactly one To, no Cc or Bcc
// line, a one-line subject.
func requireOneRecipient(t *testing.T, m received, rcpt string) {
	t.Helper()
	require.Equal(t, []string{rcpt}, m.To, "SMTP envelope: exactly one recipient")
	head, _, ok := strings.Cut(string(m.Data), "\r\n\r\n")
	require.True(t, ok)
	for _, line := range strings.Split(head, "\r\n") {
		name, _, _ := strings.Cut(strings.ToLower(line), ":")
		require.NotContains(t, []string{"bcc", "cc", "x-injected"}, name, "an injected header: %q", line)
	}
	p := parse(t, m)
	to, err := p.Header.AddressList("To")
	require.NoError(t, err)
	require.Len(t, to, 1)
	require.Equal(t, rcpt, to[0].Address)
	require.NotContains(t, p.Subject, "\n")
}

// A digest greets the user by name and lists project names: CR LF in either stays text.
func TestDigestUserTextCannotInjectHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u, ps := b.user(t, "eve@example.com", "shop\r\nCc: attacker@evil.example\r\nX-Injected: 1")
	_, err := b.pool.Exec(context.Background(), `UPDATE users SET name = $2 WHERE id = $1`, u.ID,
		"Eve\r\nBcc: attacker@evil.example\r\n\r\n<script>alert(1)</script>")
	require.NoError(t, err)
	slot := nextMidnight()
	b.rollup(t, ps[0].ID, slot.Add(-time.Hour), "error", 3)
	b.ranBefore(t, alerter.JobDigest, slot.Add(-24*time.Hour))
	b.clock.Set(slot.Add(-time.Hour))
	b.start(t, b.config(t, "pulseboard-alerter"), nil)
	b.clock.Set(slot.Add(time.Second))

	msgs := b.waitMessages(t, "eve@example.com", 1, waitFor)
	require.Len(t, b.smtp.Messages(), 1, "nobody else got mail")
	requireOneRecipient(t, msgs[0], "eve@example.com")
	p := parse(t, msgs[0])
	require.Contains(t, p.Text, "Eve Bcc: attacker@evil.example <script>alert(1)</script>")
	require.Contains(t, p.Text, "shop Cc: attacker@evil.example X-Injected: 1: 3 events, 3 errors")
	require.NotContains(t, p.HTML, "<script>")
}

// A recipient address that is not exactly one bare address (stored before today's
// validation, or written by hand) is never mailed: the alert is recorded as failed and
// no RCPT is sent for it, so an injected Bcc or a second address gets nothing.
func TestRecipientThatIsNotOneAddressIsNeverMailed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bad := []string{
		"owner@example.com\r\nBcc: attacker@evil.example",
		"owner@example.com, attacker@evil.example",
		"Owner <attacker@evil.example>",
	}
	for i, email := range bad {
		_, ps := b.user(t, email, "p"+string(rune('0'+i)))
		b.produce(t, errorsAt(t, ps[0].ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	}
	b.start(t, b.config(t, "pulseboard-alerter"), nil)
	b.eventually(t, len(bad), `SELECT count(*) FROM alerts WHERE state = 'failed'`)
	b.waitLag(t, "pulseboard-alerter")
	require.Empty(t, b.smtp.Messages(), "an address that is not one bare address got mail")
	require.Zero(t, b.count(t, `SELECT count(*) FROM alerts WHERE state = 'sent'`))
}
