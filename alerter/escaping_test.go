package alerter_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// A project name and event text with HTML and CR/LF arrive escaped in the HTML part, on
// one line in the text part and the subject, and no header can be injected: exactly one
// recipient, no Bcc or Cc.
func TestUserTextIsEscapedAndCannotInjectHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const projectName = "<script>alert(1)</script>\r\nBcc: attacker@evil.example\r\n\r\n<b>bold</b>"
	const errorName = "<img src=x onerror=alert(2)>\r\nCc: attacker@evil.example"
	_, ps := b.user(t, "owner@example.com", projectName)
	b.start(t, b.config(t, "pulseboard-alerter"), nil)
	now := b.clock.Now()
	evs := make([]event.Event, 10)
	for i := range evs {
		evs[i] = ev(t, ps[0].ID, event.TypeError, errorName, now.Add(-time.Duration(i)*time.Second))
	}
	b.produce(t, evs...)
	msgs := b.waitMessages(t, "owner@example.com", 1, waitFor)
	b.waitLag(t, "pulseboard-alerter")

	all := b.smtp.Messages()
	require.Len(t, all, 1)
	require.Equal(t, []string{"owner@example.com"}, all[0].To, "SMTP envelope: exactly one recipient")
	m := parse(t, msgs[0])
	require.Len(t, m.Header["To"], 1)
	to, err := m.Header.AddressList("To")
	require.NoError(t, err)
	require.Len(t, to, 1)
	require.Equal(t, "owner@example.com", to[0].Address)
	require.Empty(t, m.Header["Bcc"])
	require.Empty(t, m.Header["Cc"])
	head, _, ok := strings.Cut(string(msgs[0].Data), "\r\n\r\n")
	require.True(t, ok)
	for _, line := range strings.Split(head, "\r\n") {
		// A folded continuation starts with white space; a new field would not.
		require.False(t, strings.HasPrefix(line, "Bcc:") || strings.HasPrefix(line, "Cc:"), "an injected header: %q", line)
	}
	require.NotContains(t, m.Subject, "\r")
	require.NotContains(t, m.Subject, "\n")
	require.Equal(t, "[PulseBoard] <script>alert(1)</script> Bcc: attacker@evil.example <b>bold</b>: 10 errors in 1m (threshold 10)", m.Subject)

	require.NotContains(t, m.HTML, "<script>")
	require.NotContains(t, m.HTML, "<img")
	require.NotContains(t, m.HTML, "<b>bold")
	require.Contains(t, m.HTML, "&lt;script&gt;alert(1)&lt;/script&gt;")
	require.Contains(t, m.HTML, "&lt;img src=x onerror=alert(2)&gt;")

	require.Contains(t, m.Text, `Project "<script>alert(1)</script> Bcc: attacker@evil.example <b>bold</b>" received 10 errors`)
	require.Contains(t, m.Text, "10 x <img src=x onerror=alert(2)> Cc: attacker@evil.example\r\n")
	for _, line := range strings.Split(m.Text, "\r\n") {
		require.False(t, strings.HasPrefix(line, "Bcc:") || strings.HasPrefix(line, "Cc:"), "a forged line: %q", line)
	}
	var name string
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT name FROM projects WHERE id = $1`, ps[0].ID).Scan(&name))
	require.Equal(t, projectName, name, "stored verbatim")
}
