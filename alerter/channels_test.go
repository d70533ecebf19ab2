package alerter_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// A project with an email, a webhook and a Slack channel: one alert reaches all three;
// the webhook is signed with its channel's secret (and does not verify with another),
// carries the alert and its delivery id; the Slack message is the alert in words; the
// alert's summary state is sent.
func TestAlertReachesEmailWebhookAndSlack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hook, slack := newReceiver(t, nil), newReceiver(t, nil)
	_, ps := b.user(t, "owner@example.com", "checkout")
	p := ps[0]
	secret := []byte("0123456789abcdef0123456789abcdef")
	b.channel(t, p.ID, "email", "", nil)
	hookCh := b.channel(t, p.ID, "webhook", hook.URL(), secret)
	b.channel(t, p.ID, "slack", slack.URL(), nil)
	r := b.start(t, b.hookConfig(t, "pulseboard-alerter"), nil)
	b.fire(t, p.ID)

	b.waitMessages(t, "owner@example.com", 1, waitFor)
	h := hook.wait(t, 1)[0]
	s := slack.wait(t, 1)[0]
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE state = 'sent' AND attempts = 1 AND last_error IS NULL AND sent_at IS NOT NULL`)
	require.Equal(t, 3, b.count(t, `SELECT count(*) FROM notification_deliveries WHERE state = 'sent' AND attempts = 1`))

	// Webhook: headers, signature, payload.
	require.Equal(t, "application/json", h.Header.Get("Content-Type"))
	require.True(t, verifySignature(h.Header.Get("X-PulseBoard-Signature"), h.Body, secret), "signature verifies with the channel's secret")
	require.False(t, verifySignature(h.Header.Get("X-PulseBoard-Signature"), h.Body, []byte("another secret")), "and not with another")
	require.False(t, verifySignature(h.Header.Get("X-PulseBoard-Signature"), append(h.Body, ' '), secret), "nor over another body")
	deliveryID := h.Header.Get("X-PulseBoard-Delivery")
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notification_deliveries WHERE id = $1 AND channel_id = $2 AND kind = 'webhook'
		AND response_status = 200 AND target = $3`, deliveryID, hookCh, hook.srv.URL+"/…"), "the delivery id, the status, the redacted target")
	pl := payload(t, h.Body)
	require.Equal(t, "alert.threshold", pl["type"])
	require.Equal(t, deliveryID, pl["deliveryId"])
	require.Equal(t, map[string]any{"id": p.ID.String(), "name": "checkout"}, pl["project"])
	require.EqualValues(t, 10, pl["errorCount"])
	require.EqualValues(t, 10, pl["threshold"])
	require.Equal(t, []any{map[string]any{"name": "TypeError: x is undefined", "count": float64(10)}}, pl["topErrors"])
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts WHERE id = $1`, pl["alertId"]))

	// Slack: the alert in words.
	require.Empty(t, s.Header.Get("X-PulseBoard-Signature"))
	text := slackText(t, s.Body)
	require.Contains(t, text, "checkout had 10 errors in 1m0s (threshold 10)")
	require.Contains(t, text, "TypeError: x is undefined (10)")

	for _, kind := range []string{"email", "webhook", "slack"} {
		require.Eventually(t, func() bool {
			return counter(t, r.reg, "pulseboard_alerter_notifications_total", "kind", kind, "outcome", "sent") == 1
		}, waitFor, pollEvery, kind)
	}
}

// A 500 is retried with backoff, with the same delivery id, until a 2xx; a 429's
// Retry-After is honoured (up to ALERT_WEBHOOK_RETRY_MAX).
func TestWebhookRetriesServerErrorsAndHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	b := setup(t)
	flaky := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		if i < 2 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	limited := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		if i == 0 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	_, ps := b.user(t, "owner@example.com", "flaky", "limited")
	b.channel(t, ps[0].ID, "webhook", flaky.URL(), []byte("k1"))
	b.channel(t, ps[1].ID, "webhook", limited.URL(), []byte("k2"))
	cfg := b.hookConfig(t, "pulseboard-alerter")
	cfg.WebhookRetryMax = 5 * time.Second // Retry-After is honoured up to this bound
	b.start(t, cfg, nil)
	b.fire(t, ps[0].ID)
	b.fire(t, ps[1].ID)

	reqs := flaky.wait(t, 3)
	for _, r := range reqs[1:] {
		require.Equal(t, reqs[0].Header.Get("X-PulseBoard-Delivery"), r.Header.Get("X-PulseBoard-Delivery"), "one delivery id across retries")
	}
	b.eventually(t, 1, `SELECT count(*) FROM notification_deliveries d JOIN alerts a ON a.id = d.alert_id
		WHERE a.project_id = $1 AND d.state = 'sent' AND d.attempts = 3 AND d.response_status = 204 AND d.last_error IS NULL`, ps[0].ID)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'sent' AND attempts = 3`, ps[0].ID)

	reqs = limited.wait(t, 2)
	gap := reqs[1].At.Sub(reqs[0].At)
	require.GreaterOrEqual(t, gap, 2*time.Second, "Retry-After: 2 honoured (the backoff alone is about 50 ms)")
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'sent' AND attempts = 2`, ps[1].ID)
}

// Another 4xx fails at once (its answer kept, truncated, in last_error); retryable
// failures give up after ALERT_WEBHOOK_MAX_ATTEMPTS. An alert whose only channel failed
// is failed.
func TestWebhookFailuresAreRecorded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bad := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte("unknown hook\n" + strings.Repeat("x", 10000)))
	})
	down := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	_, ps := b.user(t, "owner@example.com", "bad", "down")
	b.channel(t, ps[0].ID, "webhook", bad.URL(), []byte("k"))
	b.channel(t, ps[1].ID, "slack", down.URL(), nil)
	cfg := b.hookConfig(t, "pulseboard-alerter")
	cfg.WebhookMaxAttempts = 3
	r := b.start(t, cfg, nil)
	b.fire(t, ps[0].ID)
	b.fire(t, ps[1].ID)

	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'failed' AND attempts = 1`, ps[0].ID)
	var lastErr string
	require.NoError(t, b.pool.QueryRow(t.Context(), `SELECT d.last_error FROM notification_deliveries d JOIN alerts a ON a.id = d.alert_id
		WHERE a.project_id = $1 AND d.state = 'failed' AND d.response_status = 400`, ps[0].ID).Scan(&lastErr))
	require.Contains(t, lastErr, "400 Bad Request: unknown hook")
	require.NotContains(t, lastErr, "secretpath", "the URL's path is not logged")
	require.Less(t, len(lastErr), 1100, "the answer is kept truncated")

	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'failed' AND attempts = 3 AND last_error LIKE '%503%'`, ps[1].ID)
	time.Sleep(300 * time.Millisecond) // longer than the backoff: nothing more is tried
	require.Len(t, bad.Requests(), 1, "a 4xx is not retried")
	require.Len(t, down.Requests(), 3, "ALERT_WEBHOOK_MAX_ATTEMPTS")
	require.Equal(t, 1.0, counter(t, r.reg, "pulseboard_alerter_notifications_total", "kind", "webhook", "outcome", "failed"))
	require.Equal(t, 2.0, counter(t, r.reg, "pulseboard_alerter_notifications_total", "kind", "slack", "outcome", "retry"))
	require.Equal(t, 1.0, counter(t, r.reg, "pulseboard_alerter_notifications_total", "kind", "slack", "outcome", "failed"))
}

// Without ALERT_WEBHOOK_ALLOW_PRIVATE the SSRF guard refuses to connect to a loopback
// receiver: the delivery fails at once and the receiver never hears of it.
func TestWebhookToLoopbackIsRefusedUnlessAllowed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rc := newReceiver(t, nil)
	_, ps := b.user(t, "owner@example.com", "p")
	b.channel(t, ps[0].ID, "webhook", rc.URL(), []byte("k"))
	cfg := b.hookConfig(t, "pulseboard-alerter")
	cfg.WebhookAllowPrivate = false
	b.start(t, cfg, nil)
	b.fire(t, ps[0].ID)
	b.eventually(t, 1, `SELECT count(*) FROM notification_deliveries WHERE state = 'failed' AND attempts = 1
		AND last_error LIKE '%refusing to connect to 127.0.0.1%' AND response_status IS NULL`)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE state = 'failed'`)
	require.Empty(t, rc.Requests())
}

// Event names are attacker-controlled: in a Slack message they can neither mention
// anyone (<!channel>, <@U…>, Mattermost's @channel) nor make a link.
func TestSlackMessageEscapesUserText(t *testing.T) {
	t.Parallel()
	b := setup(t)
	slack := newReceiver(t, nil)
	_, ps := b.user(t, "owner@example.com", "shop <!here> & co")
	p := ps[0]
	b.channel(t, p.ID, "slack", slack.URL(), nil)
	b.start(t, b.hookConfig(t, "pulseboard-alerter"), nil)
	now := b.clock.Now()
	var evs []event.Event
	for i := range 10 {
		evs = append(evs, ev(t, p.ID, event.TypeError, "<!channel> @channel <@U123|boss> <https://evil.example|click> & more", now.Add(-time.Duration(i)*time.Second)))
	}
	b.produce(t, evs...)
	text := slackText(t, slack.wait(t, 1)[0].Body)
	require.NotContains(t, text, "<", "no raw < reaches Slack: no mention, no link")
	require.NotContains(t, text, ">")
	require.NotContains(t, text, "@channel")
	require.Contains(t, text, "shop &lt;!here&gt; &amp; co")
	require.Contains(t, text, "&lt;!channel&gt; @\u2060channel &lt;@\u2060U123|boss&gt; &lt;https://evil.example|click&gt; &amp; more (10)")
}

// Two replicas evaluating the same crossings (separate groups: the worst case) record
// one delivery per channel, and every receiver gets exactly one request; the resolved
// notice reaches every channel too, once.
func TestEveryChannelOncePerCooldownAcrossReplicasAndResolved(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.smtp.delay.Store(int64(100 * time.Millisecond))
	slow := func(_ int, w http.ResponseWriter, _ *http.Request) {
		time.Sleep(100 * time.Millisecond) // widens the window a second sender could use
		w.WriteHeader(http.StatusOK)
	}
	hook, slack := newReceiver(t, slow), newReceiver(t, slow)
	_, ps := b.user(t, "owner@example.com", "api")
	p := ps[0]
	b.channel(t, p.ID, "email", "", nil)
	b.channel(t, p.ID, "webhook", hook.URL(), []byte("k"))
	b.channel(t, p.ID, "slack", slack.URL(), nil)
	b.start(t, b.hookConfig(t, "alerter-one"), nil)
	b.start(t, b.hookConfig(t, "alerter-two"), nil)
	start := b.clock.Now().Truncate(time.Second)
	b.produce(t, errorsAt(t, p.ID, 12, start.Add(-30*time.Second), 2*time.Second)...)
	b.waitLag(t, "alerter-one")
	b.waitLag(t, "alerter-two")
	b.waitMessages(t, "owner@example.com", 1, waitFor)
	hook.wait(t, 1)
	slack.wait(t, 1)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts`))
	require.Equal(t, 3, b.count(t, `SELECT count(*) FROM notification_deliveries`))

	// The last error was received at start − 8 s; two windows later it is resolved.
	b.clock.Set(start.Add(2*time.Minute + 5*time.Second))
	b.waitMessages(t, "owner@example.com", 2, waitFor)
	h := hook.wait(t, 2)
	s := slack.wait(t, 2)
	require.Equal(t, "alert.resolved", payload(t, h[1].Body)["type"])
	require.Contains(t, slackText(t, s[1].Body), "api is back below 10 errors per 1m0s")
	b.eventually(t, 2, `SELECT count(*) FROM alerts WHERE state = 'sent'`)
	require.Equal(t, 6, b.count(t, `SELECT count(*) FROM notification_deliveries WHERE state = 'sent' AND attempts = 1`))
	time.Sleep(300 * time.Millisecond)
	require.Len(t, hook.Requests(), 2)
	require.Len(t, slack.Requests(), 2)
	require.Len(t, b.smtp.Messages(), 2)
}

// A replica stopped while a webhook request is in flight does not count its failure as
// an attempt (the receiver answers 503 just after the stop began, while the replica may
// still record: the stop, not the receiver, decides), the delivery stays pending for the
// next replica, which sends it with the same delivery id (so the receiver can drop a
// duplicate) and records attempts = 1.
func TestWebhookInFlightAtStopIsSentByTheNextReplica(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	rc := newReceiver(t, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 {
			select { // the first request is held until the replica is stopping
			case <-release:
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	_, ps := b.user(t, "owner@example.com", "p")
	b.channel(t, ps[0].ID, "webhook", rc.URL(), []byte("k"))
	cfg := b.hookConfig(t, "pulseboard-alerter")
	cfg.ShutdownTimeout = 10 * time.Second // the send may finish and be recorded
	first := b.start(t, cfg, nil)
	b.fire(t, ps[0].ID)
	rc.wait(t, 1)
	first.cancel()
	close(release)
	require.NoError(t, first.stop(t))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notification_deliveries WHERE state = 'pending' AND attempts = 0 AND last_error IS NULL`),
		"a send that failed while stopping is not an attempt")

	b.start(t, cfg, nil)
	reqs := rc.wait(t, 2)
	require.Equal(t, reqs[0].Header.Get("X-PulseBoard-Delivery"), reqs[1].Header.Get("X-PulseBoard-Delivery"))
	b.eventually(t, 1, `SELECT count(*) FROM notification_deliveries WHERE state = 'sent' AND attempts = 1`)
}

// The alert's state summarises its deliveries: sent if one was sent (the failed one's
// error kept); failed if none was sent and one failed (a skipped email beside it);
// skipped_unverified for an unverified owner's email-only project; an alert without any
// enabled channel is failed, with no delivery; a project without channel rows mails its
// owner (the compatibility rule).
func TestAlertStateSummarisesItsDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ok := newReceiver(t, nil)
	bad := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) })
	_, ps := b.user(t, "owner@example.com", "mixed", "disabled", "no rows")
	mixed, disabled, noRows := ps[0], ps[1], ps[2]
	_, ups := b.unverifiedUser(t, "unverified@example.com", "failing", "email only")
	failing, emailOnly := ups[0], ups[1]
	b.channel(t, mixed.ID, "webhook", bad.URL(), []byte("k"))
	b.channel(t, mixed.ID, "slack", ok.URL(), nil)
	b.channel(t, failing.ID, "webhook", bad.URL(), []byte("k"))
	b.channel(t, failing.ID, "email", "", nil)
	b.channel(t, emailOnly.ID, "email", "", nil)
	off := b.channel(t, disabled.ID, "webhook", ok.URL(), []byte("k"))
	_, err := b.pool.Exec(t.Context(), `UPDATE notification_channels SET enabled = false WHERE id = $1`, off)
	require.NoError(t, err)
	b.start(t, b.hookConfig(t, "pulseboard-alerter"), nil)
	for _, p := range []uuid.UUID{mixed.ID, disabled.ID, noRows.ID, failing.ID, emailOnly.ID} {
		b.fire(t, p)
	}
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'sent' AND last_error LIKE '%410 Gone%'`, mixed.ID)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'failed' AND last_error LIKE '%410 Gone%'`, failing.ID)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notification_deliveries d JOIN alerts a ON a.id = d.alert_id
		WHERE a.project_id = $1 AND d.state = 'skipped_unverified'`, failing.ID))
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'skipped_unverified' AND attempts = 0`, emailOnly.ID)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE project_id = $1 AND state = 'failed' AND last_error = 'no enabled notification channel'`, disabled.ID)
	require.Zero(t, b.count(t, `SELECT count(*) FROM notification_deliveries d JOIN alerts a ON a.id = d.alert_id WHERE a.project_id = $1`, disabled.ID))
	b.eventually(t, 1, `SELECT count(*) FROM alerts a JOIN notification_deliveries d ON d.alert_id = a.id
		WHERE a.project_id = $1 AND a.state = 'sent' AND d.kind = 'email' AND d.channel_id IS NULL AND d.target = 'owner@example.com'`, noRows.ID)
	require.Len(t, b.smtp.To("owner@example.com"), 1, "noRows' email")
	require.Empty(t, b.smtp.To("unverified@example.com"))
	require.Len(t, ok.Requests(), 1, "mixed's Slack; the disabled channel got nothing")
}
