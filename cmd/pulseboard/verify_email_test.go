package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/quotedprintable"
	"net"
	"net/http"
	netmail "net/mail"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
)

// mailbox is a real SMTP server (emersion/go-smtp) in the test process.
type mailbox struct {
	host string
	port int
	mu   sync.Mutex
	got  []mailMsg
}

type mailMsg struct {
	to   []string
	data []byte
}

func startMailbox(t *testing.T) *mailbox {
	t.Helper()
	mb := &mailbox{host: "127.0.0.1"}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &mbSession{mb: mb}, nil }))
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	mb.port = ln.Addr().(*net.TCPAddr).Port
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return mb
}

// to returns the messages delivered to rcpt, parsed.
func (mb *mailbox) to(rcpt string) []*netmail.Message {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	var out []*netmail.Message
	for _, m := range mb.got {
		for _, r := range m.to {
			if r == rcpt {
				msg, err := netmail.ReadMessage(bytes.NewReader(m.data))
				if err == nil {
					out = append(out, msg)
				}
			}
		}
	}
	return out
}

type mbSession struct {
	mb *mailbox
	to []string
}

func (s *mbSession) Reset()                                    { s.to = nil }
func (s *mbSession) Logout() error                             { return nil }
func (s *mbSession) Mail(string, *smtp.MailOptions) error      { return nil }
func (s *mbSession) Rcpt(to string, _ *smtp.RcptOptions) error { s.to = append(s.to, to); return nil }
func (s *mbSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mb.mu.Lock()
	defer s.mb.mu.Unlock()
	s.mb.got = append(s.mb.got, mailMsg{to: append([]string(nil), s.to...), data: b})
	return nil
}

var verifyLink = regexp.MustCompile(`https://pulse\.example\.test/auth/verify\?token=[A-Za-z0-9_-]{43}`)

// The whole path in the all-in-one, with a real SMTP server: registering (the old
// client's call, unchanged) mails a verification link; an unverified owner's alert is
// recorded skipped_unverified and not mailed; following the link verifies the address
// (a second use is refused); the next crossing is mailed to the owner.
func TestAllInOneEmailVerification(t *testing.T) {
	t.Parallel()
	mb := startMailbox(t)
	in := start(t, "SMTP_HOST="+mb.host, "SMTP_PORT="+strconv.Itoa(mb.port), "SMTP_TLS=none",
		"API_PUBLIC_URL=https://pulse.example.test", "ALERT_COOLDOWN=0s", "EMAIL_DELIVERY_INTERVAL=100ms")
	ctx := context.Background()
	client := &http.Client{Timeout: 15 * time.Second}
	call := func(method, url, token, body string, headers ...string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		require.NoError(t, err)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	field := func(raw []byte, path ...string) string {
		t.Helper()
		var v any
		require.NoError(t, json.Unmarshal(raw, &v), "%s", raw)
		for _, p := range path {
			v = v.(map[string]any)[p]
		}
		s, _ := v.(string)
		return s
	}

	const owner = "owner.verify@example.com"
	st, body := call("POST", in.api+"/auth/register", "", `{"name":"Owner","email":"`+owner+`","password":"password-owner"}`)
	require.Equal(t, http.StatusCreated, st, "%s", body)
	token := field(body, "data", "accessToken")
	st, body = call("POST", in.api+"/projects", token, `{"name":"watched"}`)
	require.Equal(t, http.StatusCreated, st, "%s", body)
	projectID, apiKey := field(body, "data", "id"), field(body, "data", "apiKey")

	// The verification mail arrives at the SMTP server, with the link.
	var link string
	require.Eventually(t, func() bool {
		for _, m := range mb.to(owner) {
			b, _ := io.ReadAll(quotedprintable.NewReader(m.Body)) // both parts are quoted-printable
			if l := verifyLink.FindString(string(b)); l != "" && m.Header.Get("Subject") == "[PulseBoard] Verify your email address" {
				link = l
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "no verification mail with a link")

	errorsBatch := func(tag string) {
		t.Helper()
		var evs []string
		for i := range 10 {
			evs = append(evs, `{"type":"error","name":"`+tag+strconv.Itoa(i)+`","payload":{}}`)
		}
		st, body := call("POST", in.ingest+"/ingest/batch", "", "["+strings.Join(evs, ",")+"]", "X-API-Key", apiKey)
		require.Equal(t, http.StatusAccepted, st, "%s", body)
	}
	alerts := func(state string) int {
		var n int
		require.NoError(t, in.pool.QueryRow(ctx, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = $2`, projectID, state).Scan(&n))
		return n
	}

	// Unverified: the crossing is recorded, not mailed.
	errorsBatch("before")
	require.Eventually(t, func() bool { return alerts("skipped_unverified") == 1 }, 30*time.Second, 50*time.Millisecond,
		"the unverified owner's alert was not recorded skipped_unverified")
	require.Len(t, mb.to(owner), 1, "only the verification mail")

	// Following the link (through the api's real address) verifies once.
	u, err := url.Parse(link)
	require.NoError(t, err)
	st, body = call("GET", in.api+"/auth/verify?"+u.RawQuery, "", "", "Accept", "text/html")
	require.Equal(t, http.StatusOK, st, "%s", body)
	require.Contains(t, string(body), "Email address verified")
	st, body = call("GET", in.api+"/auth/verify?"+u.RawQuery, "", "")
	require.Equal(t, http.StatusGone, st, "%s", body)
	require.Equal(t, "VERIFICATION_TOKEN_USED", field(body, "code"))
	st, body = call("GET", in.api+"/me", token, "")
	require.Equal(t, http.StatusOK, st, "%s", body)
	require.Contains(t, string(body), `"emailVerified":true`)

	// Verified: the next crossing is mailed.
	errorsBatch("after")
	require.Eventually(t, func() bool { return alerts("sent") == 1 }, 30*time.Second, 50*time.Millisecond, "no alert sent after verification")
	msgs := mb.to(owner)
	require.Len(t, msgs, 2)
	require.Contains(t, msgs[1].Header.Get("Subject"), "watched")
}
