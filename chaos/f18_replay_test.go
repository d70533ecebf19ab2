package chaos_test

// F18: replay. The consumers' and the alerters' committed offsets are reset back by
// 10,000 messages (2,000 in the fast variant) and the services restarted.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pulseboard/pulseboard/chaos/harness"
)

// TestF18ReplayShort is F18 with a 2,000-message rewind (make test).
func TestF18ReplayShort(t *testing.T) {
	t.Parallel()
	replay(t, 2_000, fastRate)
}

func TestF18Replay(t *testing.T) {
	harness.Long(t, "F18", "replay: offsets reset back 10,000")
	replay(t, 10_000, 400)
}

// replay: a ledger load runs with a consumer and an alerter (short cooldown, so that
// projects cross their error threshold again and again and alerts are mailed to a real
// SMTP server) until more than rewind events are stored; the load stops and everything
// settles (lag 0 for both groups, every project resolved, every email sent). Then the
// consumer and the alerter are stopped (SIGTERM), both groups' offsets are moved back by
// rewind messages, and they are started again. Checked, once both groups are back at lag
// 0: the row count is unchanged and the ledger verifies (nothing lost, nothing twice);
// the consumer's dedup counter absorbed exactly the rewound messages; the alerts table
// is unchanged and the SMTP server received no new email.
func replay(t *testing.T, rewind int64, rate int) {
	mail := harness.StartSMTP(t)
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor()
	cons := c.StartConsumer()
	alertEnv := append(mail.Env(),
		// A third of the load is errors (all of one project's events): that project
		// crosses 10 errors in 2 s at once, and again after each 3 s cooldown, until the
		// load stops; then it resolves.
		"ALERT_ERROR_THRESHOLD=10", "ALERT_WINDOW=2s", "ALERT_COOLDOWN=3s",
		"EMAIL_RETRY_MIN=200ms", "EMAIL_RETRY_MAX=1s", "EMAIL_DELIVERY_INTERVAL=200ms",
		// One recipient gets every alert (one every 3 s): the replay is what is tested,
		// not the per-recipient rate.
		"ALERT_MAIL_PER_RECIPIENT_PER_HOUR=0")
	alerter := c.StartAlerter(alertEnv...)
	s := harness.NewScenario(t, c, "F18", fmt.Sprintf("replay: consumer and alerter offsets reset back %d messages", rewind))
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: rate})
	if !l.WaitAcked(rewind+rewind/5, 5*time.Minute) {
		t.Fatalf("only %d events acknowledged in 5 minutes", l.Acked())
	}
	l.Stop(time.Minute)
	c.WaitLag0(3 * time.Minute)
	c.WaitGroupLag0(harness.AlerterGroup, 3*time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	before := settleAlerts(t, s, c, mail, 2*time.Minute)
	if before.threshold == 0 {
		s.Fail("no threshold alert before the replay: the scenario would test nothing")
	}
	rows := storedRows(t, c)

	for _, svc := range []*harness.Service{cons, alerter} {
		if _, err := svc.Term(time.Minute); err != nil {
			t.Fatalf("stopping %s: %v", svc.Name(), err)
		}
	}
	s.Watcher().Rewind(func() {
		for _, group := range []string{harness.ConsumerGroup, harness.AlerterGroup} {
			from, to, err := c.RewindGroup(group, rewind)
			if err != nil {
				t.Fatal(err)
			}
			s.Note("rewound "+group, "%v → %v", from, to)
		}
	})
	restarted := time.Now()
	cons.Start()
	alerter.Start()
	s.Healed()
	cons.WaitReady(time.Minute)
	alerter.WaitReady(time.Minute)
	c.WaitLag0(3 * time.Minute)
	s.Note("replay re-read", "by the consumer %s after its restart", time.Since(restarted).Round(100*time.Millisecond))
	c.WaitGroupLag0(harness.AlerterGroup, 3*time.Minute)
	// Anything the replay could have fired would have been recorded and mailed within a
	// few delivery intervals; give it ten seconds.
	time.Sleep(10 * time.Second)
	after := countAlerts(ctx, t, c)
	mails := len(mail.Mails())

	if got := storedRows(t, c); got != rows {
		s.Fail("%d rows after the replay, %d before", got, rows)
	}
	dups, _ := cons.Metric("pulseboard_consumer_duplicates_total")
	s.Note("duplicates absorbed by the consumer after the rewind", "%.0f of %d rewound", dups, rewind)
	if int64(dups) != rewind {
		s.Fail("the consumer's dedup counter shows %.0f duplicates, want the %d rewound messages", dups, rewind)
	}
	if after != before.alertCounts {
		s.Fail("alerts before the replay %+v, after %+v: the replay fired alerts", before.alertCounts, after)
	}
	if mails != before.mails {
		s.Fail("%d emails before the replay, %d after", before.mails, mails)
	}
	s.Note("alerts (unchanged by the replay)", "%d threshold, %d resolved, %d emails", after.threshold, after.resolved, mails)
	s.Verify(3 * time.Minute)
}

// alertCounts are the rows of the alerts table by kind.
type alertCounts struct{ threshold, resolved, pending int }

func countAlerts(ctx context.Context, t *testing.T, c *harness.Cluster) alertCounts {
	t.Helper()
	var a alertCounts
	if err := c.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE kind = 'threshold'), count(*) FILTER (WHERE kind = 'resolved'),
		count(*) FILTER (WHERE state = 'pending') FROM alerts`).Scan(&a.threshold, &a.resolved, &a.pending); err != nil {
		t.Fatal(err)
	}
	return a
}

// settled is the alerting state once nothing moves any more.
type settled struct {
	alertCounts
	mails int
}

// settleAlerts waits until every firing project has resolved, nothing is pending, every
// alert was mailed once and the counts have stayed still for 3 s.
func settleAlerts(t *testing.T, s *harness.Scenario, c *harness.Cluster, mail *harness.SMTPServer, timeout time.Duration) settled {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	var last settled
	stillSince := time.Now()
	for time.Now().Before(deadline) {
		cur := settled{alertCounts: countAlerts(ctx, t, c), mails: len(mail.Mails())}
		if cur != last {
			last, stillSince = cur, time.Now()
		}
		var firing int
		if err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM alert_state WHERE firing`).Scan(&firing); err != nil {
			t.Fatal(err)
		}
		if firing == 0 && cur.pending == 0 && cur.mails == cur.threshold+cur.resolved && time.Since(stillSince) >= 3*time.Second {
			byID := mail.ByMessageID()
			for id, n := range byID {
				if n > 1 {
					s.Fail("email %s was sent %d times without any fault", id, n)
				}
			}
			return cur
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.Fail("the alerts did not settle within %s: %+v", timeout, last)
	return last
}
