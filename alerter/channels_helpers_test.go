package alerter_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
)

// hookRequest is one request a receiver got.
type hookRequest struct {
	At     time.Time
	Header http.Header
	Body   []byte
}

// receiver is a real HTTP server (httptest) standing for a webhook or Slack endpoint.
// respond decides each answer from the request's index (from 0); nil answers 200.
type receiver struct {
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []hookRequest
	respond func(i int, w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, respond func(i int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		i := len(rc.reqs)
		rc.reqs = append(rc.reqs, hookRequest{At: time.Now(), Header: r.Header.Clone(), Body: body})
		rc.mu.Unlock()
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		if rc.respond != nil {
			rc.respond(i, w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

// URL is the receiver's URL (a path, as real webhook URLs have).
func (rc *receiver) URL() string { return rc.srv.URL + "/hooks/T000/B000/secretpath" }

func (rc *receiver) Requests() []hookRequest {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]hookRequest(nil), rc.reqs...)
}

// wait waits until the receiver got n requests and returns them; more than n fails.
func (rc *receiver) wait(t *testing.T, n int) []hookRequest {
	t.Helper()
	require.Eventually(t, func() bool { return len(rc.Requests()) >= n }, waitFor, pollEvery, "%d requests", n)
	got := rc.Requests()
	require.Len(t, got, n)
	return got
}

// hookConfig is config with the HTTP channels allowed to reach the local receivers and
// short retries.
func (b *bundle) hookConfig(t *testing.T, group string) alerter.Config {
	t.Helper()
	cfg := b.config(t, group)
	cfg.WebhookAllowPrivate = true
	cfg.WebhookTimeout = 2 * time.Second
	cfg.WebhookRetryMin = 50 * time.Millisecond
	cfg.WebhookRetryMax = 200 * time.Millisecond
	cfg.WebhookMaxAttempts = 5
	require.NoError(t, cfg.Validate())
	return cfg
}

// channel adds a notification channel to project, as the api does, and returns its id.
func (b *bundle) channel(t *testing.T, project uuid.UUID, kind, url string, secret []byte) uuid.UUID {
	t.Helper()
	id := uuid.New()
	var u *string
	if url != "" {
		u = &url
	}
	_, err := b.pool.Exec(context.Background(), `
		INSERT INTO notification_channels (id, project_id, kind, name, url, secret) VALUES ($1, $2, $3, $4, $5, $6)`,
		id, project, kind, kind+" channel", u, secret)
	require.NoError(t, err)
	return id
}

// fire produces a threshold crossing of project (12 errors in 24 s).
func (b *bundle) fire(t *testing.T, project uuid.UUID) {
	t.Helper()
	b.produce(t, errorsAt(t, project, 12, b.clock.Now().Add(-30*time.Second), 2*time.Second)...)
}

// verifySignature checks an X-PulseBoard-Signature the way a receiver would.
func verifySignature(header string, body, secret []byte) bool {
	var ts, v1 string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	if _, err := strconv.ParseInt(ts, 10, 64); err != nil {
		return false
	}
	got, err := hex.DecodeString(v1)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// payload decodes a webhook body.
func payload(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	return m
}

// slackText decodes a Slack body's text.
func slackText(t *testing.T, body []byte) string {
	t.Helper()
	var m map[string]string
	require.NoError(t, json.Unmarshal(body, &m))
	return m["text"]
}
