package chaos_test

// F20 and F21: the alerter killed (kill -9, at its failpoints) around sending an email,
// during the digest job and during the retention job, with a real SMTP server in the
// test process (emersion/go-smtp, harness.StartSMTP) that also goes down.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/chaos/harness"
	"github.com/pulseboard/pulseboard/pkg/client"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// TestF20AlerterShort is F20 with SMTP down for 10 s and two crossings (make test).
func TestF20AlerterShort(t *testing.T) {
	t.Parallel()
	alerterDelivery(t, 10*time.Second, 2, 0)
}

func TestF20Alerter(t *testing.T) {
	harness.Long(t, "F20", "alerters killed around sending; SMTP down 2 min")
	alerterDelivery(t, 2*time.Minute, 4, 2)
}

// alerterEnv makes thresholds quick to cross and retries quick to notice an SMTP server
// that came back: 5 errors within 2 s fire, a project fires again at most every 4 s (of
// event time), a failed email is retried after 0.5 to 2 s. The attempt budget grows to
// match: the default 30 attempts span about two hours with the default backoff, but only
// a minute with this one, and an email must not be given up during a 2-minute outage.
func alerterEnv(mail *harness.SMTPServer, extra ...string) []string {
	return append(append(mail.Env(),
		"ALERT_ERROR_THRESHOLD=5", "ALERT_WINDOW=2s", "ALERT_COOLDOWN=4s", "ALERT_RESOLVE_INTERVAL=500ms",
		"EMAIL_RETRY_MIN=500ms", "EMAIL_RETRY_MAX=2s", "EMAIL_MAX_ATTEMPTS=5000", "EMAIL_DELIVERY_INTERVAL=200ms", "SMTP_TIMEOUT=5s",
		"ALERTER_SHUTDOWN_TIMEOUT=5s",
		// Every crossing goes to the one chaos user: these tests count deliveries, not
		// the per-recipient rate (alerter/verify_test.go tests that).
		"ALERT_MAIL_PER_RECIPIENT_PER_HOUR=0"), extra...)
}

// alerterDelivery: two alerter replicas, A and B, under a ledger load whose projects
// never alert; other projects get bursts of errors, each burst one threshold crossing
// (and, a window later, one resolution).
//
//  1. The SMTP server goes down; crossings happen and both replicas record them (before
//     any kill: after a kill -9 the group waits for the dead member's session to expire
//     before it rebalances, which would only slow the test down).
//  2. While it is down, B is killed (kill -9) in the middle of its retries, started again
//     to die at alerter/before-smtp on its next attempt, and stays down; A is killed and
//     started again to die at alerter/after-smtp-before-record, right after the server
//     accepts its next email.
//  3. After down the server comes back: A, alone, sends an email and dies before
//     recording it. Both replicas are started again without failpoints; after more
//     crossings follow.
//
// Checked once everything settled: one threshold alert per crossing (none missed, none
// extra); every alert sent, with one recorded delivery; every alert received by the SMTP
// server, more than once only when the replica that sent the earlier copy died right
// after sending it (senders.check), always with the same Message-ID; no other email.
func alerterDelivery(t *testing.T, down time.Duration, crossings, after int) {
	mail := harness.StartSMTP(t)
	c := harness.NewCluster(t, harness.Options{})
	ctx := context.Background()
	// The load's projects never alert; the crossings happen on projects of their own.
	if _, err := c.Pool.Exec(ctx, `UPDATE projects SET alert_threshold = 1000000`); err != nil {
		t.Fatal(err)
	}
	var owner uuid.UUID
	if err := c.Pool.QueryRow(ctx, `SELECT user_id FROM projects LIMIT 1`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	var alerting []pgstore.Project
	for i := range crossings + after {
		p, err := pgstore.CreateProject(ctx, c.Pool, owner, fmt.Sprintf("alerting-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		alerting = append(alerting, p)
	}
	ing := c.StartIngestor()
	c.StartConsumer()
	x := newSenders()
	a := x.startAlerter(c, alerterEnv(mail)...)
	b := x.startAlerter(c, alerterEnv(mail)...)
	s := harness.NewScenario(t, c, "F20", fmt.Sprintf("two alerters killed around sending; SMTP down at least %s; %d crossings", down, len(alerting)))
	s.StartLoad(ing.URL, harness.LoadOptions{Rate: fastRate / 2})
	next := 0
	cross := func(n int) {
		for range n {
			errorBurst(t, ing.URL, alerting[next].APIKey, 8)
			next++
		}
	}

	// 1. Crossings while SMTP is down.
	mail.Down()
	downAt := time.Now()
	cross(crossings)
	waitThresholdAlerts(t, c, crossings, 3*time.Minute)

	// 2. Kills around sending, SMTP still down.
	b.Kill()
	x.dead(b)
	x.restart(b, "PULSEBOARD_FAILPOINTS=alerter/before-smtp=kill@1")
	b.WaitFailpointKill("alerter/before-smtp", 2*time.Minute)
	x.dead(b)
	a.Kill()
	x.dead(a)
	x.restart(a, "PULSEBOARD_FAILPOINTS=alerter/after-smtp-before-record=kill@1")
	a.WaitReady(time.Minute)
	for time.Since(downAt) < down {
		time.Sleep(100 * time.Millisecond)
	}
	pendingAtUp := countAlerts(ctx, t, c).pending
	if pendingAtUp == 0 {
		s.Fail("no alert was pending when SMTP came back: the outage tested nothing")
	}

	// 3. SMTP back: A sends one email and dies before recording it.
	mail.Up()
	upAt := time.Now()
	s.Healed()
	s.Note("SMTP outage", "%s; %d alerts pending when it came back; meanwhile B killed (-9) mid-retry and at before-smtp, A killed (-9)",
		upAt.Sub(downAt).Round(100*time.Millisecond), pendingAtUp)
	a.WaitFailpointKill("alerter/after-smtp-before-record", 2*time.Minute)
	x.dead(a)
	for _, r := range []*harness.Service{a, b} {
		x.restart(r, "PULSEBOARD_FAILPOINTS=")
		r.WaitReady(time.Minute)
	}
	cross(after)
	settledAt := waitAlertsSent(t, s, c, len(alerting), 5*time.Minute)
	s.Note("all alerts sent", "%s after SMTP came back", settledAt.Sub(upAt).Round(100*time.Millisecond))
	s.Verify(3 * time.Minute)
	checkAlertEmails(t, s, c, mail, x, len(alerting))
}

// errorBurst sends n errors to one project in one batch (one receive time: one crossing).
func errorBurst(t *testing.T, ingestURL, apiKey string, n int) {
	t.Helper()
	var failed []string
	cl, err := client.New(client.Options{
		Endpoint: ingestURL, APIKey: apiKey, MaxBatchEvents: n, FlushInterval: time.Hour, MaxRetries: 100,
		RetryBaseDelay: 100 * time.Millisecond, RetryMaxDelay: time.Second,
		OnResult: func(r client.Result) {
			if r.Status != client.StatusAccepted {
				failed = append(failed, fmt.Sprintf("%s: %d %s", r.Status, r.HTTPStatus, r.Message))
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := cl.Enqueue(client.Event{Type: client.TypeError, Name: fmt.Sprintf("TypeError: burst %d", i%2)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.Close(ctx); err != nil || len(failed) > 0 {
		t.Fatalf("sending an error burst: %v %v", err, failed)
	}
}

// waitThresholdAlerts waits until n threshold alerts are recorded.
func waitThresholdAlerts(t *testing.T, c *harness.Cluster, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		a := countAlerts(context.Background(), t, c)
		if a.threshold >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d threshold alerts recorded after %s, want %d", a.threshold, timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitAlertsSent waits until threshold alerts exist, every project has resolved, and
// nothing is pending; it returns when.
func waitAlertsSent(t *testing.T, s *harness.Scenario, c *harness.Cluster, threshold int, timeout time.Duration) time.Time {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	var a alertCounts
	var firing int
	for time.Now().Before(deadline) {
		a = countAlerts(ctx, t, c)
		if err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM alert_state WHERE firing`).Scan(&firing); err != nil {
			t.Fatal(err)
		}
		if a.threshold >= threshold && firing == 0 && a.pending == 0 && a.resolved >= a.threshold {
			return time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.Fail("alerts did not settle within %s: %+v, %d projects firing (want %d threshold alerts, all sent and resolved)", timeout, a, firing, threshold)
	return time.Now()
}

// checkAlertEmails checks the alerts table against what the SMTP server received: one
// threshold alert per crossing; every alert sent with exactly one recorded delivery;
// one email per alert, except copies whose sender was killed after sending them (see
// senders.check: the documented window of docs/reliability.md promise 14).
func checkAlertEmails(t *testing.T, s *harness.Scenario, c *harness.Cluster, mail *harness.SMTPServer, x *senders, crossings int) {
	t.Helper()
	ctx := context.Background()
	rows, err := c.Pool.Query(ctx, `SELECT a.id, a.kind, a.state, (SELECT count(*) FROM email_deliveries d WHERE d.ref_id = a.id)
		FROM alerts a`)
	if err != nil {
		t.Fatal(err)
	}
	type alertRow struct {
		id          uuid.UUID
		kind, state string
		deliveries  int
	}
	var alerts []alertRow
	for rows.Next() {
		var r alertRow
		if err := rows.Scan(&r.id, &r.kind, &r.state, &r.deliveries); err != nil {
			t.Fatal(err)
		}
		alerts = append(alerts, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	byID := mail.ByMessageID()
	threshold := 0
	known := map[string]bool{}
	for _, r := range alerts {
		if r.kind == "threshold" {
			threshold++
		}
		mid := "alert-" + r.id.String() + "@pulseboard"
		known[mid] = true
		if r.state != "sent" || r.deliveries != 1 {
			s.Fail("alert %s (%s): state %s with %d recorded deliveries, want sent with 1", r.id, r.kind, r.state, r.deliveries)
		}
		if byID[mid] == 0 {
			s.Fail("alert %s (%s) was never received by the SMTP server", r.id, r.kind)
		}
	}
	for mid, n := range byID {
		if !known[mid] {
			s.Fail("the SMTP server received %d emails with Message-ID %s, which is no alert", n, mid)
		}
	}
	if threshold != crossings {
		s.Fail("%d threshold alerts for %d crossings: one each, none missed", threshold, crossings)
	}
	again := x.check(s, mail)
	s.Note("emails", "%d alerts (%d threshold), %d emails; %d sent again after their sender died between the SMTP 250 and recording \"sent\"",
		len(alerts), threshold, len(mail.Mails()), again)
}

// F21: the alerter killed during the digest job and during the retention job.
func TestF21AlerterJobsKilled(t *testing.T) {
	harness.Long(t, "F21", "alerter killed during the digest and retention jobs")
	t.Run("digest", func(t *testing.T) {
		t.Parallel()
		digestKilled(t)
	})
	t.Run("retention", func(t *testing.T) {
		t.Parallel()
		retentionKilled(t)
	})
}

// digestKilled: six users with projects; the digest slot of today 00:00 UTC is recorded
// as failed, so an alerter resumes it at start. The alerter is killed (kill -9) right
// after the day's digests are recorded, then after the SMTP server accepted the second
// one (before "sent" is recorded), then before sending the third, and finally runs
// without failpoints. Checked: one digest per user for the day, all sent; every user got
// their digest and no other, more than once only when the incarnation that sent the
// earlier copy died right after (senders.check); the slot is recorded succeeded; a
// restart sends nothing more.
func digestKilled(t *testing.T) {
	mail := harness.StartSMTP(t)
	c := harness.NewCluster(t, harness.Options{Projects: 1})
	ctx := context.Background()
	now := time.Now().UTC()
	slot := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	users := 1
	for i := range 5 {
		u, err := pgstore.UpsertUser(ctx, c.Pool, fmt.Sprintf("Digest %d", i), fmt.Sprintf("digest-%d-%s@pulseboard.test", i, uuid.NewString()[:8]), "x")
		if err != nil {
			t.Fatal(err)
		}
		if err := harness.VerifyUser(ctx, c.Pool, u.ID); err != nil {
			t.Fatal(err)
		}
		p, err := pgstore.CreateProject(ctx, c.Pool, u.ID, fmt.Sprintf("digest-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		for j := range i + 1 { // yesterday's events, for the digest's content
			storeEvent(t, c, p.ID, slot.Add(-time.Duration(j+1)*time.Hour))
		}
		users++
	}
	failJobSlot(t, c, "digest", slot)
	s := harness.NewScenario(t, c, "F21", "alerter killed during the digest job (after creating, after a 250, before a send)")

	x := newSenders()
	al := x.startDoomed(c, alerterEnv(mail, "PULSEBOARD_FAILPOINTS=alerter/digest-after-create=kill")...)
	al.WaitFailpointKill("alerter/digest-after-create", 2*time.Minute)
	x.dead(al)
	var created int
	if err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM digest_sends WHERE digest_date = $1`, slot).Scan(&created); err != nil {
		t.Fatal(err)
	}
	s.Note("digests recorded before the first kill", "%d of %d users, %d emails", created, users, len(mail.Mails()))
	for _, fp := range []string{"alerter/after-smtp-before-record=kill@2", "alerter/before-smtp=kill@2"} {
		x.restart(al, "PULSEBOARD_FAILPOINTS="+fp)
		al.WaitFailpointKill(strings.SplitN(fp, "=", 2)[0], 2*time.Minute)
		x.dead(al)
	}
	x.restart(al, "PULSEBOARD_FAILPOINTS=")
	al.WaitReady(time.Minute)
	s.Healed()

	// The slot succeeds only when none of its digests is pending or failed.
	state := waitJobState(t, c, "digest", slot, "succeeded", 2*time.Minute)
	var sent int
	if err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM digest_sends WHERE digest_date = $1 AND state = 'sent'`, slot).Scan(&sent); err != nil {
		t.Fatal(err)
	}
	if sent != users || state != "succeeded" {
		s.Fail("%d of %d digests sent, job run %q, 2 minutes after the last restart", sent, users, state)
	}
	// A restart now must not send the day's digests again.
	al.Kill()
	x.dead(al)
	x.restart(al)
	al.WaitReady(time.Minute)
	time.Sleep(5 * time.Second)

	rows, err := c.Pool.Query(ctx, `SELECT d.id, u.email FROM digest_sends d JOIN users u ON u.id = d.user_id WHERE d.digest_date = $1`, slot)
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]string{} // Message-ID → recipient
	for rows.Next() {
		var id uuid.UUID
		var email string
		if err := rows.Scan(&id, &email); err != nil {
			t.Fatal(err)
		}
		digests["digest-"+id.String()+"@pulseboard"] = email
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(digests) != users {
		s.Fail("%d digests recorded for %d users: one per user and day", len(digests), users)
	}
	byID := mail.ByMessageID()
	for mid, rcpt := range digests {
		if byID[mid] == 0 {
			s.Fail("the digest of %s was never received", rcpt)
		}
	}
	for mid := range byID {
		if _, ok := digests[mid]; !ok {
			s.Fail("an email with Message-ID %s is no digest of the day", mid)
		}
	}
	perRecipient := map[string]map[string]bool{}
	for _, m := range mail.Mails() {
		for _, r := range m.To {
			if perRecipient[r] == nil {
				perRecipient[r] = map[string]bool{}
			}
			perRecipient[r][m.MessageID] = true
		}
	}
	for r, ids := range perRecipient {
		if len(ids) != 1 {
			s.Fail("%s received %d different digests for one day", r, len(ids))
		}
	}
	again := x.check(s, mail)
	s.Note("digests", "%d users, %d emails, %d sent again after their sender died between the SMTP 250 and recording \"sent\"; job slot %s %s",
		users, len(mail.Mails()), again, slot.Format(time.DateOnly), state)
	s.Verify(time.Minute)
}

// retentionKilled: day partitions from 40 days ago to a week ahead, with events in the
// ten days past the 30-day retention and in the retained days (the oldest kept minute,
// and days −29, −5 and today, where a ledger load keeps writing). The retention slot is
// recorded as failed, so the alerter resumes it at start; it is killed (kill -9) after
// its third detach (before that partition is dropped), then after its second drop
// (before the drop is recorded), and finally runs without failpoints. Checked: every
// partition past retention is gone and recorded dropped, the slot succeeded, every
// retained partition and event is still there, and the load's events are all stored
// once (the ledger).
func retentionKilled(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	ctx := context.Background()
	now := time.Now().UTC()
	day := func(d int) time.Time {
		x := now.AddDate(0, 0, d)
		return time.Date(x.Year(), x.Month(), x.Day(), 0, 0, 0, 0, time.UTC)
	}
	cutoff := day(-30)
	if _, err := pgstore.EnsurePartitions(ctx, c.Pool, day(-40), day(7)); err != nil {
		t.Fatal(err)
	}
	// The retention test's own rows go to a project outside the load's ledger.
	var owner uuid.UUID
	if err := c.Pool.QueryRow(ctx, `SELECT user_id FROM projects LIMIT 1`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	p, err := pgstore.CreateProject(ctx, c.Pool, owner, "retention")
	if err != nil {
		t.Fatal(err)
	}
	project := p.ID
	var old, kept []uuid.UUID
	insert := func(at time.Time) uuid.UUID { return storeEvent(t, c, project, at) }
	for d := -40; d < -30; d++ {
		old = append(old, insert(day(d).Add(12*time.Hour)))
	}
	old = append(old, insert(cutoff.Add(-time.Minute)))
	for _, at := range []time.Time{cutoff, cutoff.Add(time.Minute), day(-29).Add(time.Hour), day(-5).Add(time.Hour), now.Add(-time.Minute)} {
		kept = append(kept, insert(at))
	}
	var toDrop int
	if err := c.Pool.QueryRow(ctx, `
		SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'events'::regclass
		AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz <= $1`, cutoff).Scan(&toDrop); err != nil {
		t.Fatal(err)
	}
	if toDrop < 5 {
		t.Fatalf("only %d partitions past retention: the kills need at least 5", toDrop)
	}
	slot := latestDaily(now, 2) // RETENTION_CRON 0 2 * * *
	failJobSlot(t, c, "retention", slot)

	ing := c.StartIngestor()
	c.StartConsumer()
	s := harness.NewScenario(t, c, "F21", "alerter killed during retention (after a detach, after a drop) under load")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: fastRate})
	if !l.WaitAcked(int64(fastRate), time.Minute) {
		t.Fatal("no load acknowledged before the fault")
	}
	// Not waiting for readiness: the catch-up run at start may hit the failpoint first.
	al := c.StartService(harness.ServiceSpec{Bin: "alerter", Env: []string{"PULSEBOARD_FAILPOINTS=alerter/retention-after-detach=kill@3"}, NoWait: true})
	al.WaitFailpointKill("alerter/retention-after-detach", 2*time.Minute)
	al.SetEnv("PULSEBOARD_FAILPOINTS=alerter/retention-after-drop=kill@2")
	al.Start()
	al.WaitFailpointKill("alerter/retention-after-drop", 2*time.Minute)
	var droppedBefore int
	if err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM retention_drops WHERE dropped_at IS NOT NULL`).Scan(&droppedBefore); err != nil {
		t.Fatal(err)
	}
	restartWithoutFailpoints(al)
	s.Healed()

	if state := waitJobState(t, c, "retention", slot, "succeeded", 2*time.Minute); state != "succeeded" {
		s.Fail("the retention slot is %q 2 minutes after the last restart, want succeeded", state)
	}
	s.Verify(3 * time.Minute)

	var left, undropped, keptRows, oldRows int
	if err := c.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		        WHERE i.inhparent = 'events'::regclass
		        AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz <= $1),
		       (SELECT count(*) FROM retention_drops WHERE dropped_at IS NULL),
		       (SELECT count(*) FROM events WHERE id = ANY($2)),
		       (SELECT count(*) FROM events WHERE id = ANY($3))`, cutoff, kept, old).Scan(&left, &undropped, &keptRows, &oldRows); err != nil {
		t.Fatal(err)
	}
	if left != 0 || undropped != 0 {
		s.Fail("%d partitions past retention still attached, %d recorded but not dropped", left, undropped)
	}
	for d := -29; d <= 7; d++ {
		name := "events_" + day(d).Format("20060102")
		var exists bool
		if err := c.Pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if !exists {
			s.Fail("partition %s, within retention, is gone", name)
		}
	}
	if keptRows != len(kept) {
		s.Fail("%d of the %d events within retention are left: retention dropped in-window data", keptRows, len(kept))
	}
	if oldRows != 0 {
		s.Fail("%d events past retention are left", oldRows)
	}
	s.Note("retention", "%d partitions past retention dropped (%d before the last restart), %d retained events kept", toDrop, droppedBefore, keptRows)
}

// storeEvent stores one error event received at at, as the consumer does: the event,
// its dedup-gate row and its rollup, so the cluster's consistency check holds.
func storeEvent(t *testing.T, c *harness.Cluster, project uuid.UUID, at time.Time) uuid.UUID {
	t.Helper()
	id := uuid.New()
	_, err := c.Pool.Exec(context.Background(), `
		WITH e AS (INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at)
		           VALUES ($1, $2, 'error', 'stored by the chaos test', '{}', $3, $3)),
		     g AS (INSERT INTO event_ids (project_id, id, received_at) VALUES ($2, $1, $3))
		INSERT INTO event_rollups AS r (project_id, minute, type, count)
		VALUES ($2, date_trunc('minute', $3::timestamptz, 'UTC'), 'error', 1)
		ON CONFLICT (project_id, minute, type) DO UPDATE SET count = r.count + 1`, id, project, at)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// senders names every alerter incarnation by the envelope sender it mails from
// (SMTP_FROM alerts+N@pulseboard.test) and records when each was seen dead.
// docs/reliability.md promise 14 allows a second copy of an email only when the process that
// sent the first died between the SMTP 250 and recording "sent"; a process may have two
// emails in that window at once (the delivery loop and the digest job send
// concurrently), so the check is per copy, not per kill.
type senders struct {
	mu      sync.Mutex
	n       int
	current map[*harness.Service]string
	died    map[string]time.Time
}

func newSenders() *senders {
	return &senders{current: map[*harness.Service]string{}, died: map[string]time.Time{}}
}

func (x *senders) next() (addr, env string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.n++
	addr = fmt.Sprintf("alerts+%d@pulseboard.test", x.n)
	return addr, "SMTP_FROM=PulseBoard <" + addr + ">"
}

// startAlerter starts an alerter (a new incarnation, with its own sender) and waits for
// its readiness.
func (x *senders) startAlerter(c *harness.Cluster, env ...string) *harness.Service {
	return x.start(c, false, env...)
}

// startDoomed starts an alerter that a failpoint may kill before it is ready (the jobs
// catch up at start, racing the readiness poll): it does not wait for readiness.
func (x *senders) startDoomed(c *harness.Cluster, env ...string) *harness.Service {
	return x.start(c, true, env...)
}

func (x *senders) start(c *harness.Cluster, noWait bool, env ...string) *harness.Service {
	addr, from := x.next()
	svc := c.StartService(harness.ServiceSpec{Bin: "alerter", Env: append(env, from), NoWait: noWait})
	x.mu.Lock()
	x.current[svc] = addr
	x.mu.Unlock()
	return svc
}

// restart starts svc, which has died, as a new incarnation with env added; it does not
// wait for readiness (a failpoint may kill it first).
func (x *senders) restart(svc *harness.Service, env ...string) {
	addr, from := x.next()
	svc.SetEnv(append(env, from)...)
	x.mu.Lock()
	x.current[svc] = addr
	x.mu.Unlock()
	svc.Start()
}

// dead records that svc's current incarnation has died (call it once its exit is seen).
func (x *senders) dead(svc *harness.Service) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.died[x.current[svc]] = time.Now()
}

// check fails the scenario for any email received more than once unless every copy but
// the last came from an incarnation that died after sending it; it returns how many
// emails were received more than once.
func (x *senders) check(s *harness.Scenario, mail *harness.SMTPServer) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	copies := map[string][]harness.Mail{}
	for _, m := range mail.Mails() { // in the order received
		copies[m.MessageID] = append(copies[m.MessageID], m)
	}
	again := 0
	for mid, ms := range copies {
		if len(ms) < 2 {
			continue
		}
		again++
		for _, m := range ms[:len(ms)-1] {
			if died, ok := x.died[m.From]; !ok || died.Before(m.At) {
				s.Fail("%s was received %d times, but %s, which sent the copy of %s, did not die after sending it: a duplicate outside the documented window",
					mid, len(ms), m.From, m.At.Format("15:04:05.000"))
			}
		}
	}
	return again
}

// restartWithoutFailpoints starts a service that died at a failpoint again, without
// failpoints, and waits until it is ready.
func restartWithoutFailpoints(svc *harness.Service) {
	svc.SetEnv("PULSEBOARD_FAILPOINTS=")
	svc.Start()
	svc.WaitReady(time.Minute)
}

// waitJobState polls the job_runs row of job and slot until its state is want, and
// returns the last state seen ("" when there is no row).
func waitJobState(t *testing.T, c *harness.Cluster, job string, slot time.Time, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var state string
	for {
		if err := c.Pool.QueryRow(context.Background(), `SELECT coalesce((SELECT state FROM job_runs WHERE job = $1 AND scheduled_for = $2), '')`,
			job, slot).Scan(&state); err != nil {
			t.Fatal(err)
		}
		if state == want || time.Now().After(deadline) {
			return state
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// failJobSlot records slot of job as a failed run, which an alerter resumes at start
// (as it does after a crash), so the test need not wait for the cron schedule.
func failJobSlot(t *testing.T, c *harness.Cluster, job string, slot time.Time) {
	t.Helper()
	if _, err := c.Pool.Exec(context.Background(), `INSERT INTO job_runs (id, job, scheduled_for, state, attempts, instance, started_at, finished_at, error)
		VALUES ($1, $2, $3, 'failed', 1, 'chaos', $4, $4, 'recorded by the chaos test')`, uuid.New(), job, slot, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// latestDaily is the latest daily slot at hour:00 UTC at or before now.
func latestDaily(now time.Time, hour int) time.Time {
	s := time.Date(now.Year(), now.Month(), now.Day(), hour, 0, 0, 0, time.UTC)
	if s.After(now) {
		s = s.AddDate(0, 0, -1)
	}
	return s
}
