package chaos_test

// The fast fault subset, run by `make test` (and by `make chaos`, which writes the
// report): kill -9 of the consumer at each failpoint (F04) with its negative control,
// a short broker outage (F07), a Redis restart (F14) and poison messages (F19). Each
// test runs its own cluster of processes; they run in parallel because most of their
// time is spent waiting (a killed consumer's group session must expire before its
// successor gets the partitions), not computing.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/chaos/harness"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// fastRate keeps nine clusters at once light enough for two cores.
const fastRate = 200

// F04: the consumer is killed with SIGKILL at each place of its pipeline (the third time
// it gets there, so that earlier batches are committed). A successor takes over: nothing
// acknowledged is lost, nothing is stored twice, and nothing of the killed transaction
// is visible. The case that kills between the database commit and the offset commit
// must show the dedup gate at work (its successor counts duplicates).
//
// The negative control is the same kill after the fetch with the consumer committing
// offsets before storing (failpoint switch consumer/unsafe-commit-before-store, which
// exists only in failpoints builds): the verifier must report lost events, or it could
// not see loss at all.
func TestF04ConsumerKilledAtEachFailpoint(t *testing.T) {
	t.Parallel()
	cases := []struct {
		point string
		// dups: the successor must absorb redelivered rows.
		dups bool
		// unsafe: the negative control.
		unsafe bool
	}{
		{point: "consumer/after-fetch"},
		{point: "consumer/mid-copy"},
		{point: "consumer/before-db-commit"},
		{point: "consumer/after-db-commit", dups: true},
		{point: "consumer/after-offset-commit"},
		{point: "consumer/after-fetch", unsafe: true},
	}
	for _, tc := range cases {
		name := strings.TrimPrefix(tc.point, "consumer/")
		if tc.unsafe {
			name = "negative-control/unsafe-commit-before-store"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := harness.NewCluster(t, harness.Options{})
			ing := c.StartIngestor()
			fp := tc.point + "=kill@3"
			if tc.unsafe {
				fp += ";consumer/unsafe-commit-before-store=on"
			}
			cons := c.StartConsumer("PULSEBOARD_FAILPOINTS=" + fp)
			title := "kill -9 consumer at " + tc.point
			if tc.unsafe {
				title = "NEGATIVE CONTROL: kill -9 consumer after fetch, offsets committed before storing"
			}
			s := harness.NewScenario(t, c, "F04", title)
			if tc.unsafe {
				s.ExpectLoss()
			}
			l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: fastRate})

			cons.WaitFailpointKill(tc.point, 2*time.Minute)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			counts, err := c.Consistent(ctx)
			if err != nil {
				s.Fail("right after the kill: %v", err)
			}
			s.Note("rows at kill", "%d", counts.Events)

			// The successor, without failpoints (the environment's last value wins).
			cons.SetEnv("PULSEBOARD_FAILPOINTS=")
			cons.Start()
			cons.WaitReady(time.Minute)
			s.Healed()
			if !l.WaitAcked(l.Acked()+int64(2*fastRate), 2*time.Minute) {
				s.Fail("the load made no progress after the restart")
			}
			rep := s.Verify(3 * time.Minute)
			dups, _ := cons.Metric("pulseboard_consumer_duplicates_total")
			s.Note("duplicates absorbed by the successor", "%.0f", dups)
			if tc.dups && dups == 0 {
				s.Fail("the successor absorbed no duplicates: the kill did not hit the window between the database commit and the offset commit")
			}
			if tc.unsafe {
				t.Logf("negative control: the verifier saw %d lost events (%s)", rep.Lost, rep)
			}
		})
	}
}

// F07 (short): the broker is killed with SIGKILL for 5 s under load and started again
// from its data directory. Meanwhile ingest answers 503 with Retry-After within its
// deadline (never a hang, never another 5xx); afterwards ingest and the consumer recover
// without restarts and the ledger is clean.
func TestF07BrokerOutageShort(t *testing.T) {
	t.Parallel()
	brokerOutage(t, "F07", "broker killed (SIGKILL) for 5 s under load", outage{down: 5 * time.Second, rate: fastRate})
}

// outage is how brokerOutage takes the broker away.
type outage struct {
	down time.Duration
	// freeze: SIGSTOP instead of SIGKILL (a hung broker: connections open, no answers).
	freeze bool
	rate   int
	// flood: extra workers posting 1,000-event batches without pause during the outage.
	flood int
}

// brokerOutage is F07: the broker goes away under load for o.down. Ingest answers 503
// with Retry-After within its 5 s deadline and nothing else (no hang, no other 5xx);
// the bytes waiting for the broker stay within INGEST_MAX_INFLIGHT_BYTES and memory
// stays bounded; afterwards ingest (first 2xx) and the consumer (backlog committed)
// recover without restarts, and the ledger is clean.
func brokerOutage(t *testing.T, id, name string, o outage) {
	const inflightLimit = 16 << 20
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor("INGEST_PRODUCE_TIMEOUT=5s", fmt.Sprintf("INGEST_MAX_INFLIGHT_BYTES=%d", inflightLimit))
	cons := c.StartConsumer()
	s := harness.NewScenario(t, c, id, name)
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: o.rate})
	if !l.WaitAcked(int64(o.rate), time.Minute) {
		t.Fatal("no load acknowledged before the fault")
	}

	if o.freeze {
		c.Broker.Pause()
	} else {
		c.KillBroker()
	}
	before := l.Probes()
	stopFlood := func() {}
	if o.flood > 0 {
		stopFlood = l.Flood(o.flood, 1000)
	}
	time.Sleep(o.down)
	stopFlood()
	during := l.Probes()
	if o.freeze {
		c.Broker.Resume()
	} else {
		c.StartBroker()
	}
	s.Healed()
	if _, ok := l.WaitIngestRecovered(3 * time.Minute); !ok {
		s.Fail("ingest did not answer 2xx within 3 minutes of the broker's return")
	}
	if !l.WaitAcked(l.Acked()+int64(2*o.rate), 3*time.Minute) {
		s.Fail("the load made no progress within 3 minutes of the broker's return")
	}
	s.Verify(3 * time.Minute)

	if n := during.ByStatus[http.StatusServiceUnavailable] - before.ByStatus[http.StatusServiceUnavailable]; n == 0 {
		s.Fail("no 503 during the outage (probe answers %v)", during.ByStatus)
	}
	p := l.Probes()
	for code, n := range p.ByStatus {
		if code != http.StatusAccepted && code != http.StatusServiceUnavailable {
			s.Fail("%d probe answers with status %d: only 202 and 503 are allowed", n, code)
		}
	}
	for code, n := range l.FloodAnswers() {
		if code != http.StatusAccepted && code != http.StatusServiceUnavailable {
			s.Fail("%d flood batches answered with status %d: only 202 and 503 are allowed", n, code)
		}
	}
	if p.MissingRetryAfter > 0 {
		s.Fail("%d 503 answers without Retry-After", p.MissingRetryAfter)
	}
	// The deadline is 5 s (INGEST_PRODUCE_TIMEOUT); 15 s of slack for a loaded machine
	// still tells "bounded" from "hangs".
	if p.MaxLatency > 20*time.Second {
		s.Fail("a probe took %s: ingest must answer within its 5 s deadline", p.MaxLatency)
	}
	s.Note("probe answers", "%v, max latency %s", p.ByStatus, p.MaxLatency.Round(time.Millisecond))
	if o.flood > 0 {
		s.Note("flood batches (1,000 events)", "%v", l.FloodAnswers())
	}
	for _, svc := range []*harness.Service{ing, cons} {
		if st := svc.Stats(); st.Starts != 1 {
			s.Fail("%s was started %d times: recovery must not need a restart", svc.Name(), st.Starts)
		}
	}
	st := ing.Stats()
	inflight := st.Max["pulseboard_ingest_inflight_bytes"]
	s.Note("ingestor max in-flight bytes (sampled each second)", "%.0f of %d", inflight, inflightLimit)
	if inflight > inflightLimit {
		s.Fail("the ingestor held %.0f bytes for the broker, beyond INGEST_MAX_INFLIGHT_BYTES %d", inflight, inflightLimit)
	}
	// Bounded memory: the in-flight budget plus the request buffers and the runtime;
	// generous, so that only unbounded growth fails.
	if limit := int64(4*inflightLimit + 256<<20); st.PeakRSSBytes > limit {
		s.Fail("the ingestor's peak RSS was %d MiB, beyond %d MiB", st.PeakRSSBytes>>20, limit>>20)
	}
}

// F05 (K12): a slow consumer (it sleeps 700 ms after each fetch, so it always holds a
// batch while the group changes) loses partitions to a second consumer that joins, and
// gets them back when that one leaves, twice. Commits of batches fetched before a
// rebalance must not move any committed offset backwards; lag returns to 0, loss 0,
// duplicates 0.
func TestF05SlowConsumerRebalance(t *testing.T) {
	t.Parallel()
	c := harness.NewCluster(t, harness.Options{Partitions: 12})
	ing := c.StartIngestor()
	slow := c.StartConsumer("PULSEBOARD_FAILPOINTS=consumer/after-fetch=sleep(700ms)", "CONSUMER_BATCH_SIZE=200")
	s := harness.NewScenario(t, c, "F05", "a slow consumer loses partitions to a new one and gets them back, twice (K12)")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: fastRate})
	if !l.WaitAcked(int64(2*fastRate), time.Minute) {
		t.Fatal("no load acknowledged before the rebalances")
	}
	for range 2 {
		other := c.StartConsumer()
		time.Sleep(6 * time.Second)
		if _, err := other.Term(45 * time.Second); err != nil {
			s.Fail("scaling down: %v", err)
		}
		time.Sleep(3 * time.Second)
	}
	s.Healed()
	if !l.WaitAcked(l.Acked()+int64(2*fastRate), 2*time.Minute) {
		s.Fail("the load made no progress after the rebalances")
	}
	s.Verify(3 * time.Minute)
	refused, _ := slow.Metric("pulseboard_consumer_commit_errors_total")
	s.Note("commits of ended generations refused (slow consumer)", "%.0f", refused)
}

// F14 (restart): Redis is killed and started again, empty, under load. Ingest keeps
// authenticating (no 401, not even from a fresh ingestor whose caches are cold, which
// must fall back to Postgres), and the consumer's live feed resumes.
func TestF14RedisRestart(t *testing.T) {
	t.Parallel()
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor()
	c.StartConsumer()
	s := harness.NewScenario(t, c, "F14", "Redis killed and restarted empty under load")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: fastRate})
	if !l.WaitAcked(int64(fastRate), time.Minute) {
		t.Fatal("no load acknowledged before the fault")
	}
	c.Redis.Restart()
	s.Healed()

	// A fresh ingestor: nothing cached in-process, nothing in Redis.
	fresh := c.StartIngestor()
	for i := range c.Projects {
		if resp := l.SendOne(fresh.URL, i); resp != http.StatusAccepted {
			s.Fail("project %d through a cold ingestor after the Redis restart: status %d, want 202", i, resp)
		}
	}
	// The live feed resumes: the consumer publishes to the new Redis.
	live := c.WatchLive()
	if !l.WaitAcked(l.Acked()+int64(2*fastRate), 2*time.Minute) {
		s.Fail("the load made no progress after the Redis restart")
	}
	deadline := time.Now().Add(time.Minute)
	for live.Messages() == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if live.Messages() == 0 {
		s.Fail("no live-feed message within a minute of the Redis restart")
	}
	s.Verify(3 * time.Minute)
	p := l.Probes()
	if n := p.ByStatus[http.StatusUnauthorized]; n > 0 {
		s.Fail("%d probes got 401 across the Redis restart", n)
	}
	if st := l.Stats(); st.Rejected > 0 || st.Failed > 0 {
		s.Fail("%d events rejected and %d failed across the Redis restart", st.Rejected, st.Failed)
	}
	s.Note("live messages after the restart", "%d", live.Messages())
}

// F19: poison messages produced straight to the topic, between valid events from the
// ingestor: invalid JSON, a NUL escape, a lone surrogate, an oversized message and an
// event of a deleted project. Each goes to the dead-letter topic with its reason, the
// valid events around them are stored, and the lag returns to 0 within 30 s.
func TestF19PoisonMessages(t *testing.T) {
	t.Parallel()
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor()
	cons := c.StartConsumer()
	s := harness.NewScenario(t, c, "F19", "poison messages produced straight to the topic")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: fastRate})
	if !l.WaitAcked(int64(fastRate), time.Minute) {
		t.Fatal("no load acknowledged before the poison")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	project := c.Projects[0].ID
	// A project that existed and was deleted.
	var deleted uuid.UUID
	if err := c.Pool.QueryRow(ctx, `INSERT INTO projects (id, user_id, name, api_key, api_key_hash)
		SELECT $1::uuid, user_id, 'deleted', 'pb_deleted_' || $1::text, sha256(convert_to($1::text, 'UTF8'))
		FROM projects LIMIT 1 RETURNING id`, uuid.New()).Scan(&deleted); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pool.Exec(ctx, `DELETE FROM projects WHERE id = $1::uuid`, deleted); err != nil {
		t.Fatal(err)
	}
	valid := func(p uuid.UUID, name string) []byte {
		ev := event.Event{ID: uuid.New(), ProjectID: p, Type: "error", Name: name, Payload: []byte(`{"k":1}`),
			Timestamp: time.Now().UTC().Truncate(time.Millisecond), ReceivedAt: time.Now().UTC().Truncate(time.Millisecond)}
		return ev.AppendJSON(nil)
	}
	replace := func(b []byte, old, new string) []byte { return []byte(strings.Replace(string(b), old, new, 1)) }
	poison := []struct {
		what, code string
		value      []byte
	}{
		{"invalid JSON", event.CodeInvalidJSON, []byte(`{"id":"` + uuid.NewString() + `","projectId":`)},
		{"NUL", event.CodeValidationFailed, replace(valid(project, "nul"), `"nul"`, `"a\u0000b"`)},
		{"lone surrogate", event.CodeValidationFailed, replace(valid(project, "surrogate"), `"surrogate"`, `"\ud800x"`)},
		{"oversized", event.CodePayloadTooLarge, replace(valid(project, "big"), `{"k":1}`, `{"k":"`+strings.Repeat("x", 70_000)+`"}`)},
		{"deleted project", "UNKNOWN_PROJECT", valid(deleted, "orphan")},
	}
	var msgs []kafka.Message
	for _, p := range poison {
		msgs = append(msgs, kafka.Message{Key: []byte(project.String()), Value: p.value,
			Headers: []kafka.Header{{Key: "chaos-poison", Value: []byte(p.what)}}})
	}
	produced := time.Now()
	if err := c.Produce(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// Lag 0 within 30 s while the load goes on would need the load to pause: measure it
	// on the poison alone by waiting for the dead letters, then for lag 0 after the load.
	dlq, err := c.ReadDLQ(len(poison), 30*time.Second)
	took := time.Since(produced)
	if err != nil {
		s.Fail("only %d of %d poison messages reached the dead-letter topic within 30 s: %v", len(dlq), len(poison), err)
	}
	s.Note("poison → dead-letter topic", "%s", took.Round(time.Millisecond))
	got := map[string]kafka.Message{}
	for _, m := range dlq {
		got[header(m, "chaos-poison")] = m
	}
	for _, p := range poison {
		m, ok := got[p.what]
		if !ok {
			s.Fail("%s: not in the dead-letter topic", p.what)
			continue
		}
		if code := header(m, "pulseboard-dlq-code"); code != p.code {
			s.Fail("%s: dead-letter code %q, want %q (reason %q)", p.what, code, p.code, header(m, "pulseboard-dlq-reason"))
		}
		if header(m, "pulseboard-dlq-reason") == "" {
			s.Fail("%s: no reason header", p.what)
		}
		if string(m.Value) != string(p.value) {
			s.Fail("%s: the dead letter's value is not the original message", p.what)
		}
	}
	l.Stop(time.Minute)
	start := time.Now()
	c.WaitLag0(30 * time.Second)
	s.Note("lag → 0 after the load stopped", "%s", time.Since(start).Round(time.Millisecond))
	s.Verify(time.Minute)
	for _, code := range []string{event.CodeInvalidJSON, event.CodeValidationFailed, event.CodePayloadTooLarge, "UNKNOWN_PROJECT"} {
		v, _ := cons.Metric(fmt.Sprintf(`pulseboard_consumer_dlq_messages_total{code=%q}`, code))
		if v == 0 {
			s.Fail("pulseboard_consumer_dlq_messages_total{code=%q} is 0", code)
		}
	}
	var orphans int
	if err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE project_id = $1 OR name IN ('nul', 'surrogate', 'big')`, deleted).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans > 0 {
		s.Fail("%d poison events were stored", orphans)
	}
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
