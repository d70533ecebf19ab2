package alerter_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// Nine errors (and any number of events and metrics) within a minute fire nothing; the
// tenth fires exactly one email to the owner within 5 s of being produced. Per-project
// settings override the defaults, and disabled projects stay silent.
func TestThresholdAlert(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.user(t, "owner@example.com", "checkout", "low threshold", "muted")
	b.user(t, "someone-else@example.com", "unrelated")
	p, low, muted := ps[0], ps[1], ps[2]
	ctx := context.Background()
	_, err := b.pool.Exec(ctx, `UPDATE projects SET alert_threshold = 3, alert_window_seconds = 10 WHERE id = $1`, low.ID)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `UPDATE projects SET alerts_enabled = false WHERE id = $1`, muted.ID)
	require.NoError(t, err)

	r := b.start(t, b.config(t, "pulseboard-alerter"), nil)
	now := b.clock.Now()
	var evs []event.Event
	evs = append(evs, errorsAt(t, p.ID, 9, now.Add(-50*time.Second), 5*time.Second)...)
	for i := range 20 {
		at := now.Add(-time.Duration(i) * time.Second)
		evs = append(evs, ev(t, p.ID, event.TypeEvent, "screen.view", at), ev(t, p.ID, event.TypeMetric, "latency", at))
	}
	evs = append(evs, errorsAt(t, low.ID, 2, now.Add(-5*time.Second), time.Second)...)
	evs = append(evs, errorsAt(t, muted.ID, 30, now.Add(-30*time.Second), time.Second)...)
	b.produce(t, evs...)
	b.waitLag(t, "pulseboard-alerter")
	require.Zero(t, b.count(t, `SELECT count(*) FROM alerts`), "9 errors, 40 events and metrics, 2 of 3, and a muted project: no alert")
	require.Empty(t, b.smtp.Messages())

	// The low threshold project's third error, within its 10 s window.
	b.produce(t, ev(t, low.ID, event.TypeError, "boom", now.Add(-3*time.Second)))
	b.waitMessages(t, "owner@example.com", 1, waitFor)

	// The tenth error within the minute.
	produced := time.Now()
	b.produce(t, ev(t, p.ID, event.TypeError, "TypeError: x is undefined", now))
	require.Eventually(t, func() bool { return len(b.smtp.To("owner@example.com")) >= 2 }, 5*time.Second, 10*time.Millisecond,
		"the alert email must arrive within 5 s of the crossing event")
	t.Logf("crossing event produced → email delivered: %s", time.Since(produced))

	b.waitLag(t, "pulseboard-alerter")
	msgs := b.waitMessages(t, "owner@example.com", 2, waitFor)
	require.Empty(t, b.smtp.To("someone-else@example.com"))
	var subjects []string
	for _, m := range msgs {
		require.Equal(t, []string{"owner@example.com"}, m.To, "exactly one recipient: the owner")
		subjects = append(subjects, parse(t, m).Subject)
	}
	require.Contains(t, subjects, "[PulseBoard] low threshold: 3 errors in 10s (threshold 3)")
	require.Contains(t, subjects, "[PulseBoard] checkout: 10 errors in 1m (threshold 10)")
	b.eventually(t, 2, `SELECT count(*) FROM alerts WHERE state = 'sent' AND kind = 'threshold' AND recipient = 'owner@example.com'`)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts WHERE project_id = $1 AND error_count = 10 AND threshold = 10`, p.ID))
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM email_deliveries WHERE transport = 'smtp' AND kind = 'threshold'`))
	require.Zero(t, b.count(t, `SELECT count(*) FROM alerts WHERE project_id = $1`, muted.ID))
	require.Equal(t, 2.0, counter(t, r.reg, "pulseboard_alerter_alerts_fired_total", "kind", "threshold"))
	require.Eventually(t, func() bool {
		return counter(t, r.reg, "pulseboard_alerter_emails_sent_total", "kind", "threshold") == 2
	}, waitFor, pollEvery)
}

// Errors sustained for 30 (simulated) minutes with a 15-minute cooldown send exactly two
// threshold emails; when they stop, exactly one "resolved" email follows once the rate
// has been below the threshold for a full window.
func TestSustainedErrorsAlertOncePerCooldown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.user(t, "owner@example.com", "api")
	p := ps[0]
	start := b.clock.Now().Truncate(time.Second)
	b.start(t, b.config(t, "pulseboard-alerter"), nil)

	// 12 errors a minute (one every 5 s) for 30 minutes of receive time.
	evs := errorsAt(t, p.ID, 360, start, 5*time.Second)
	for i := 0; i < len(evs); i += 60 {
		b.produce(t, evs[i:i+60]...)
	}
	b.waitLag(t, "pulseboard-alerter")
	// Now live through the 30 minutes.
	b.clock.Set(start.Add(30 * time.Minute))
	msgs := b.waitMessages(t, "owner@example.com", 2, waitFor)
	for _, m := range msgs {
		require.True(t, strings.HasPrefix(parse(t, m).Subject, "[PulseBoard] api: "), parse(t, m).Subject)
	}
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM alerts WHERE kind = 'threshold'`))
	// The crossings: the 10th error (45 s), and the first one a cooldown later.
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts WHERE window_end = $1`, start.Add(45*time.Second)))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts WHERE window_end = $1`, start.Add(15*time.Minute+45*time.Second)))
	require.Zero(t, b.count(t, `SELECT count(*) FROM alerts WHERE kind = 'resolved'`), "still firing at the end of the errors")

	// The last error was received at 29:55; two windows later the rate has been below
	// the threshold for a full window.
	b.clock.Set(start.Add(32*time.Minute + 5*time.Second))
	msgs = b.waitMessages(t, "owner@example.com", 3, waitFor)
	require.Equal(t, "[PulseBoard] Resolved: api is back below 10 errors per 1m", parse(t, msgs[2]).Subject)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE kind = 'resolved' AND state = 'sent'`)
	require.Equal(t, 3, b.count(t, `SELECT count(*) FROM alerts`))
	require.Zero(t, b.count(t, `SELECT count(*) FROM alert_state WHERE firing`))
}
