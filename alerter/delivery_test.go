package alerter_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
)

// Two replicas that both evaluate every message (different groups: the worst case of a
// rebalance) and both deliver never send an alert twice, even with a slow SMTP server;
// a replay of the whole topic by a third replica (a fresh group, F18) fires nothing.
func TestReplicasNeverSendTwiceAndReplaysStaySilent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.smtp.delay.Store(int64(150 * time.Millisecond))
	var projects []pgstore.Project
	owners := []string{"a@example.com", "b@example.com", "c@example.com", "d@example.com"}
	for _, o := range owners {
		_, ps := b.user(t, o, "project of "+o)
		projects = append(projects, ps[0])
	}
	b.start(t, b.config(t, "alerter-one"), nil)
	b.start(t, b.config(t, "alerter-two"), nil)
	now := b.clock.Now()
	var evs []event.Event
	for _, p := range projects {
		evs = append(evs, errorsAt(t, p.ID, 12, now.Add(-30*time.Second), 2*time.Second)...)
	}
	b.produce(t, evs...)
	for _, o := range owners {
		b.waitMessages(t, o, 1, waitFor)
	}
	b.waitLag(t, "alerter-one")
	b.waitLag(t, "alerter-two")
	require.Equal(t, len(owners), b.count(t, `SELECT count(*) FROM alerts`))
	require.Eventually(t, func() bool {
		return b.count(t, `SELECT count(*) FROM alerts WHERE state = 'sent'`) == len(owners)
	}, waitFor, pollEvery)

	// Replay everything from the start.
	b.start(t, b.config(t, "alerter-replay"), nil)
	b.waitLag(t, "alerter-replay")
	require.Equal(t, len(owners), b.count(t, `SELECT count(*) FROM alerts`), "a replay fires nothing")
	require.Len(t, b.smtp.Messages(), len(owners), "exactly one email per crossing")
	require.Equal(t, len(owners), b.count(t, `SELECT count(*) FROM email_deliveries`))
}

// blockingMailer never completes a send: it stands for a process that is killed before
// the SMTP server accepted the message.
type blockingMailer struct{ calls atomic.Int32 }

func (m *blockingMailer) Transport() string { return "smtp" }

func (m *blockingMailer) Send(ctx context.Context, _ alerter.Message) error {
	m.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

// An alert is recorded pending before it is sent: a replica that dies before sending
// leaves it pending, and the next replica sends it, once.
func TestAlertRecordedBeforeSendingIsSentAfterRestart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.user(t, "owner@example.com", "web")
	cfg := b.config(t, "pulseboard-alerter")
	cfg.ShutdownTimeout = 200 * time.Millisecond
	blocked := &blockingMailer{}
	first := b.start(t, cfg, func(d *alerter.Deps) { d.Mailer = blocked })
	b.produce(t, errorsAt(t, ps[0].ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	require.Eventually(t, func() bool { return blocked.calls.Load() > 0 }, waitFor, pollEvery, "the first replica starts sending")
	require.NoError(t, first.stop(t))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM alerts WHERE state = 'pending' AND attempts = 0`),
		"the alert outlives the replica, pending")
	require.Empty(t, b.smtp.Messages())

	b.start(t, cfg, nil)
	msgs := b.waitMessages(t, "owner@example.com", 1, waitFor)
	require.Equal(t, []string{"owner@example.com"}, msgs[0].To)
	require.Eventually(t, func() bool {
		return b.count(t, `SELECT count(*) FROM alerts WHERE state = 'sent' AND attempts = 1`) == 1
	}, waitFor, pollEvery)
	b.waitLag(t, "pulseboard-alerter")
	require.Len(t, b.smtp.Messages(), 1)
}

// While the SMTP server is down the alert stays pending with its attempts and reason;
// when it is back the alert arrives, once, and the project is not silenced: the next
// crossing after the cooldown alerts again.
func TestSMTPOutageDelaysButNeverSilences(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.user(t, "owner@example.com", "mobile")
	p := ps[0]
	b.smtp.down.Store(true)
	r := b.start(t, b.config(t, "pulseboard-alerter"), nil)
	b.produce(t, errorsAt(t, p.ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	require.Eventually(t, func() bool {
		return b.count(t, `SELECT count(*) FROM alerts WHERE state = 'pending' AND attempts >= 3 AND last_error LIKE '%421%'`) == 1
	}, waitFor, pollEvery, "retried with the server's reason recorded")
	require.Empty(t, b.smtp.Messages())
	require.GreaterOrEqual(t, counter(t, r.reg, "pulseboard_alerter_emails_failed_total", "kind", "threshold", "failure", "transient"), 3.0)

	b.smtp.down.Store(false)
	b.waitMessages(t, "owner@example.com", 1, waitFor)
	require.Eventually(t, func() bool {
		return b.count(t, `SELECT count(*) FROM alerts WHERE state = 'sent' AND last_error IS NULL`) == 1
	}, waitFor, pollEvery)

	// 16 minutes later (past the 15-minute cooldown; the project has been resolved in
	// between), another burst alerts again.
	b.clock.Advance(16 * time.Minute)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE kind = 'resolved' AND state = 'sent'`)
	b.produce(t, errorsAt(t, p.ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	msgs := b.waitMessages(t, "owner@example.com", 3, waitFor)
	require.Equal(t, "[PulseBoard] mobile: 10 errors in 1m (threshold 10)", parse(t, msgs[2]).Subject)
	b.eventually(t, 2, `SELECT count(*) FROM alerts WHERE kind = 'threshold' AND state = 'sent'`)
}

// failingMailer fails permanently.
type failingMailer struct{}

func (failingMailer) Transport() string { return "smtp" }
func (failingMailer) Send(context.Context, alerter.Message) error {
	return alerter.Permanent(errors.New("550 mailbox unavailable"))
}

// A permanent failure marks the alert failed with its reason at once.
func TestPermanentFailureIsRecorded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.user(t, "owner@example.com", "web")
	b.start(t, b.config(t, "pulseboard-alerter"), func(d *alerter.Deps) { d.Mailer = failingMailer{} })
	b.produce(t, errorsAt(t, ps[0].ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	require.Eventually(t, func() bool {
		return b.count(t, `SELECT count(*) FROM alerts WHERE state = 'failed' AND attempts = 1 AND last_error LIKE '%550 mailbox unavailable%'`) == 1
	}, waitFor, pollEvery)
}

// Without SMTP_HOST, emails go to the (JSON) log and are recorded with transport "log".
func TestWithoutSMTPHostMailsGoToTheLog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, ps := b.user(t, "owner@example.com", "logged\r\nproject")
	cfg := b.config(t, "pulseboard-alerter")
	cfg.SMTP.Host = ""
	var logs testenv.SyncBuffer
	b.start(t, cfg, func(d *alerter.Deps) { d.Logger = slog.New(slog.NewJSONHandler(&logs, nil)) })
	b.produce(t, errorsAt(t, ps[0].ID, 10, b.clock.Now().Add(-20*time.Second), time.Second)...)
	b.eventually(t, 1, `SELECT count(*) FROM alerts a JOIN email_deliveries d ON d.ref_id = a.id
		WHERE a.state = 'sent' AND d.transport = 'log' AND d.recipient = 'owner@example.com'`)
	require.Contains(t, logs.String(), `"subject":"[PulseBoard] logged project: 10 errors in 1m (threshold 10)"`)
	require.Empty(t, b.smtp.Messages())
}
