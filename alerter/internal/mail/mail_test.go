package mail

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSanitizeHeader(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"a\r\nBcc: x@y.z", "a Bcc: x@y.z"},
		{"  tabs\tand\u2028separators\u0085 ", "tabs and separators"},
		{"nul\x00byte", "nul byte"},
		{"bad \xff utf8", "bad \uFFFD utf8"},
		{strings.Repeat("é", 300), strings.Repeat("é", 199) + "…"},
	} {
		got := SanitizeHeader(tc.in, 200)
		require.Equal(t, tc.want, got, "%q", tc.in)
		require.NotContains(t, got, "\r")
		require.NotContains(t, got, "\n")
	}
}

func TestRecipientIsOneBareAddress(t *testing.T) {
	t.Parallel()
	a, err := Recipient("owner@example.com")
	require.NoError(t, err)
	require.Equal(t, "owner@example.com", a.Address)
	for _, bad := range []string{
		"", "a@b.c, d@e.f", "Name <a@b.c>", "a@b.c\r\nBcc: d@e.f", "not an address",
	} {
		_, err := Recipient(bad)
		require.Error(t, err, "%q", bad)
		require.True(t, IsPermanent(err), "%q", bad)
	}
}

func TestComposeEscapes(t *testing.T) {
	t.Parallel()
	m, err := ComposeDigest("u@example.com", Digest{
		SendID: "s", UserName: "<i>Eve</i>\r\nX-Evil: 1",
		From: time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC),
		Projects: []DigestProject{{Name: "<script>x</script>", Events: 3, Errors: 1}}, More: 2,
	})
	require.NoError(t, err)
	require.Equal(t, "[PulseBoard] Daily digest for 2026-11-25", m.Subject)
	require.Contains(t, m.HTML, "&lt;script&gt;x&lt;/script&gt;")
	require.Contains(t, m.HTML, "&lt;i&gt;Eve&lt;/i&gt; X-Evil: 1")
	require.NotContains(t, m.HTML, "<script>")
	require.Contains(t, m.Text, "Hello <i>Eve</i> X-Evil: 1,")
	require.Contains(t, m.Text, "  <script>x</script>: 3 events, 1 errors\n")
	require.Contains(t, m.Text, "... and 2 more projects")
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, Config{}.Validate(), "no SMTP_HOST: the log")
	ok := Config{Host: "smtp.example.com", Port: 587, From: "PulseBoard <a@b.c>", TLS: "auto", Timeout: time.Second}
	require.NoError(t, ok.Validate())
	bad := ok
	bad.Port, bad.TLS, bad.From, bad.User = 0, "maybe", "nope", "u"
	err := bad.Validate()
	for _, want := range []string{"SMTP_PORT", "SMTP_TLS", "SMTP_FROM", "SMTP_USER and SMTP_PASS"} {
		require.ErrorContains(t, err, want)
	}
}

// A verification mail carries the link in both parts and refuses anything but an
// http(s) link (permanently: retrying cannot fix it).
func TestComposeVerification(t *testing.T) {
	t.Parallel()
	link := "https://pulse.example.com/auth/verify?token=abc_-DEF"
	m, err := ComposeVerification("a@example.com", Verification{ID: "v1", Link: link, Expires: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	require.NoError(t, err)
	require.Equal(t, "verification", m.Kind)
	require.Equal(t, "verify-v1@pulseboard", m.MessageID())
	require.Contains(t, m.Text, link)
	require.Contains(t, m.HTML, `href="`+link+`"`)
	require.Contains(t, m.Text, "2026-01-02 03:04:05 UTC")
	for _, bad := range []string{"javascript:alert(1)", "", "ftp://x"} {
		_, err := ComposeVerification("a@example.com", Verification{ID: "v2", Link: bad})
		require.Error(t, err)
		require.True(t, IsPermanent(err))
	}
}
