package main_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hookRequest is one request a test receiver got.
type hookRequest struct {
	path   string
	header http.Header
	body   []byte
}

// Issue 19 item 3 through the whole product: an owner adds a webhook and a Slack channel
// with the api, the project's errors pass its threshold, and the alerter (a separate
// component reading the channel rows) delivers one alert to the owner's mailbox, one
// signed webhook whose signature verifies with the secret the api answered once, and one
// Slack message whose user text is escaped; the alert history shows the three
// deliveries sent.
func TestAllInOneAlertReachesEveryChannel(t *testing.T) {
	t.Parallel()
	hooks := make(chan hookRequest, 16)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hooks <- hookRequest{path: r.URL.Path, header: r.Header.Clone(), body: body}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()
	mb := startMailbox(t)
	in := start(t, "SMTP_HOST="+mb.host, "SMTP_PORT="+strconv.Itoa(mb.port), "SMTP_TLS=none",
		"ALERT_REQUIRE_VERIFIED=false", "EMAIL_DELIVERY_INTERVAL=100ms",
		"ALERT_WEBHOOK_ALLOW_PRIVATE=true") // the receiver listens on loopback

	u := newWebUser(t, in)
	const owner = "channel-owner@example.com"
	u.session("/auth/register", `{"name":"Channel Owner","email":"`+owner+`","password":"password-1234"}`, http.StatusCreated)
	id, key := u.project("Channels")
	a := u.call("PATCH", in.api+"/projects/"+id, `{"settings":{"alertThreshold":3}}`)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)

	a = u.call("POST", in.api+"/projects/"+id+"/channels", `{"kind":"webhook","name":"Pager","url":"`+receiver.URL+`/hooks/pulseboard"}`)
	require.Equal(t, http.StatusCreated, a.status, "%s", a.body)
	var created struct {
		Data struct{ ID, Secret string } `json:"data"`
	}
	require.NoError(t, json.Unmarshal(a.body, &created))
	require.True(t, strings.HasPrefix(created.Data.Secret, "whsec_"), "the secret is answered once: %s", a.body)
	secret, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(created.Data.Secret, "whsec_"))
	require.NoError(t, err)
	a = u.call("POST", in.api+"/projects/"+id+"/channels", `{"kind":"slack","name":"Team room","url":"`+receiver.URL+`/services/T0/B0/xyz"}`)
	require.Equal(t, http.StatusCreated, a.status, "%s", a.body)
	a = u.call("GET", in.api+"/projects/"+id+"/channels", "")
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	require.NotContains(t, string(a.body), created.Data.Secret, "lists never carry the secret")
	require.Equal(t, 3, strings.Count(string(a.body), `"kind"`), "the owner email channel, the webhook and Slack: %s", a.body)

	// Four errors, one named to ping a whole Slack channel if it were not escaped.
	for i := range 4 {
		name := "TypeError: x is undefined"
		if i == 0 {
			name = "<!channel> & friends"
		}
		req, err := http.NewRequest(http.MethodPost, in.ingest+"/ingest", strings.NewReader(
			fmt.Sprintf(`{"apiKey":%q,"type":"error","name":%q,"payload":{"i":%d}}`, key, name, i)))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}

	var webhook, slack *hookRequest
	deadline := time.After(30 * time.Second)
	for webhook == nil || slack == nil {
		select {
		case h := <-hooks:
			switch {
			case h.path == "/hooks/pulseboard" && webhook == nil:
				webhook = &h
			case h.path == "/services/T0/B0/xyz" && slack == nil:
				slack = &h
			default:
				t.Fatalf("an unexpected or second request: %s %s", h.path, h.body)
			}
		case <-deadline:
			t.Fatalf("within 30 s: webhook %v, slack %v", webhook != nil, slack != nil)
		}
	}

	// The webhook: signed with the key the api answered, over "<t>.<body>".
	sig := webhook.header.Get("X-PulseBoard-Signature")
	var ts, v1 string
	for _, part := range strings.Split(sig, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "." + string(webhook.body)))
	require.Equal(t, hex.EncodeToString(mac.Sum(nil)), v1, "signature %q", sig)
	unix, err := strconv.ParseInt(ts, 10, 64)
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), time.Unix(unix, 0), time.Minute)
	var body struct {
		Type, AlertID, DeliveryID string
		Project                   struct{ ID, Name string }
		ErrorCount, Threshold     int
		TopErrors                 []struct {
			Name  string
			Count int
		}
	}
	require.NoError(t, json.Unmarshal(webhook.body, &body))
	require.Equal(t, "alert.threshold", body.Type)
	require.Equal(t, id, body.Project.ID)
	require.Equal(t, "Channels", body.Project.Name)
	require.Equal(t, 3, body.Threshold)
	require.GreaterOrEqual(t, body.ErrorCount, 3)
	require.Equal(t, body.DeliveryID, webhook.header.Get("X-PulseBoard-Delivery"))

	// Slack: the user's text cannot address the channel.
	var msg struct{ Text string }
	require.NoError(t, json.Unmarshal(slack.body, &msg), "%s", slack.body)
	require.Contains(t, msg.Text, "Channels")
	require.NotContains(t, msg.Text, "<!channel>")

	// The mail, and the history: one alert, three deliveries sent.
	require.Eventually(t, func() bool { return len(mb.to(owner)) > 0 }, 30*time.Second, 50*time.Millisecond)
	var history struct {
		Data []struct {
			ID, State  string
			Deliveries []struct{ Kind, State string }
		} `json:"data"`
	}
	require.Eventually(t, func() bool {
		a := u.call("GET", in.api+"/projects/"+id+"/alerts", "")
		if a.status != http.StatusOK || json.Unmarshal(a.body, &history) != nil || len(history.Data) != 1 {
			return false
		}
		sent := map[string]bool{}
		for _, d := range history.Data[0].Deliveries {
			sent[d.Kind] = d.State == "sent"
		}
		return history.Data[0].State == "sent" && len(history.Data[0].Deliveries) == 3 && sent["email"] && sent["webhook"] && sent["slack"]
	}, 30*time.Second, 100*time.Millisecond, "history: %+v", history)
	require.Equal(t, body.AlertID, history.Data[0].ID)
	select {
	case h := <-hooks:
		t.Fatalf("a second request: %s %s", h.path, h.body)
	case <-time.After(500 * time.Millisecond):
	}
}
