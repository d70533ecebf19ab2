package chaos_test

// The long fault scenarios, run by `make chaos` (CHAOS_LONG=1) with their full
// durations; without it each is skipped with a message and listed as not run.

import (
	"context"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/pulseboard/pulseboard/chaos/harness"
)

const longRate = 500

// F01: steady load, no fault, for a minute: every answer 2xx; loss 0, duplicates 0;
// every stored event reached the live feed (live coverage 100 %).
func TestF01SteadyLoad(t *testing.T) {
	harness.Long(t, "F01", "steady load for 60 s")
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor()
	c.StartConsumer()
	live := c.WatchLive()
	s := harness.NewScenario(t, c, "F01", "steady load, 60 s, no fault")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: longRate})
	time.Sleep(60 * time.Second)
	s.Verify(2 * time.Minute)

	st := l.Stats()
	if st.Failed > 0 || st.Rejected > 0 || st.Dropped > 0 {
		s.Fail("without a fault: %d events failed, %d rejected, %d dropped", st.Failed, st.Rejected, st.Dropped)
	}
	for code, n := range st.Probes.ByStatus {
		if code != http.StatusAccepted {
			s.Fail("%d probe answers with status %d without a fault", n, code)
		}
	}
	if st.Probes.TransportErrors > 0 {
		s.Fail("%d probe transport errors without a fault", st.Probes.TransportErrors)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, err := c.StoredIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Publishing follows the commit; give the last batch a moment to arrive.
	deadline := time.Now().Add(30 * time.Second)
	got := live.Coverage(ids)
	for got < len(ids) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		got = live.Coverage(ids)
	}
	s.Note("live coverage", "%d of %d stored events (%.2f %%)", got, len(ids), 100*float64(got)/float64(max(1, len(ids))))
	if got < len(ids) {
		s.Fail("live coverage %d of %d: every stored event must be published without a fault", got, len(ids))
	}
}

// F02: the ingestor is killed with SIGKILL repeatedly under load and restarted on its
// port; then three times exactly between Kafka's acknowledgement and the answer
// (failpoint ingestor/after-produce-ack), so SDK retries resend events Kafka already
// holds. Only in-flight requests fail, the SDK's retries succeed (no event ends failed),
// loss 0, duplicates 0, and the consumer's dedup counter shows the retried events.
func TestF02IngestorKilledRepeatedly(t *testing.T) {
	harness.Long(t, "F02", "kill -9 the ingestor repeatedly under load")
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor()
	cons := c.StartConsumer()
	s := harness.NewScenario(t, c, "F02", "ingestor killed (SIGKILL) 8 times under load, 3 of them after the produce ack")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: longRate})
	if !l.WaitAcked(longRate, time.Minute) {
		t.Fatal("no load acknowledged before the faults")
	}
	for range 5 {
		time.Sleep(time.Duration(2000+rand.IntN(3000)) * time.Millisecond)
		ing.Kill()
		ing.Start()
		ing.WaitReady(time.Minute)
	}
	for i := range 3 {
		ing.Kill()
		ing.SetEnv("PULSEBOARD_FAILPOINTS=ingestor/after-produce-ack=kill@" + []string{"20", "50", "100"}[i])
		ing.Start()
		ing.WaitFailpointKill("ingestor/after-produce-ack", 2*time.Minute)
		ing.SetEnv("PULSEBOARD_FAILPOINTS=")
		ing.Start()
		ing.WaitReady(time.Minute)
		time.Sleep(2 * time.Second)
	}
	s.Healed()
	if !l.WaitAcked(l.Acked()+2*longRate, 2*time.Minute) {
		s.Fail("ingest did not recover after the last kill")
	}
	s.Verify(3 * time.Minute)
	st := l.Stats()
	if st.Failed > 0 {
		s.Fail("%d events failed for good: SDK retries must succeed once the ingestor is back", st.Failed)
	}
	for code, n := range st.Probes.ByStatus {
		if code != http.StatusAccepted && code != http.StatusServiceUnavailable {
			s.Fail("%d probe answers with status %d", n, code)
		}
	}
	dups, _ := cons.Metric("pulseboard_consumer_duplicates_total")
	s.Note("duplicates absorbed by the consumer", "%.0f", dups)
	s.Note("probe answers", "%v, %d transport errors (in-flight at a kill, not retried by the probe)", st.Probes.ByStatus, st.Probes.TransportErrors)
	if dups == 0 {
		s.Fail("the consumer absorbed no duplicates: the kills after the produce ack resent nothing")
	}
}

// F03: the ingestor gets SIGTERM under load, three times, and is started again: it
// exits 0 within INGEST_DRAIN_DELAY + INGEST_SHUTDOWN_TIMEOUT, clients see no 5xx but
// 503 with Retry-After (which they retry), loss 0.
func TestF03IngestorSIGTERMUnderLoad(t *testing.T) {
	harness.Long(t, "F03", "SIGTERM the ingestor under load")
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor("INGEST_DRAIN_DELAY=1s", "INGEST_SHUTDOWN_TIMEOUT=5s")
	c.StartConsumer()
	s := harness.NewScenario(t, c, "F03", "ingestor SIGTERMed 3 times under load and restarted")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: longRate})
	if !l.WaitAcked(longRate, time.Minute) {
		t.Fatal("no load acknowledged before the faults")
	}
	var worst time.Duration
	for range 3 {
		time.Sleep(5 * time.Second)
		took, err := ing.Term(30 * time.Second)
		if err != nil {
			s.Fail("SIGTERM: %v", err)
		}
		// 1 s drain delay + 5 s shutdown timeout + process teardown.
		if took > 8*time.Second {
			s.Fail("the ingestor took %s to exit after SIGTERM, beyond its 6 s bound (+2 s)", took)
		}
		worst = max(worst, took)
		ing.Start()
		ing.WaitReady(time.Minute)
	}
	s.Healed()
	if !l.WaitAcked(l.Acked()+2*longRate, 2*time.Minute) {
		s.Fail("ingest did not recover after the last restart")
	}
	s.Verify(3 * time.Minute)
	st := l.Stats()
	for code, n := range st.Probes.ByStatus {
		if code != http.StatusAccepted && code != http.StatusServiceUnavailable {
			s.Fail("%d probe answers with status %d: only 202 and 503 are allowed", n, code)
		}
	}
	if st.Probes.MissingRetryAfter > 0 {
		s.Fail("%d 503 answers without Retry-After", st.Probes.MissingRetryAfter)
	}
	if st.Failed > 0 {
		s.Fail("%d events failed for good", st.Failed)
	}
	s.Note("slowest SIGTERM exit", "%s", worst.Round(time.Millisecond))
	s.Note("probe answers", "%v, %d transport errors (while the ingestor was down)", st.Probes.ByStatus, st.Probes.TransportErrors)
}

// F05: a rebalance storm. One consumer, scaled to three, then consumers killed with
// SIGKILL and restarted four times, then scaled back to one with SIGTERM. Loss 0,
// duplicates 0, committed offsets never decrease, lag returns to 0.
func TestF05RebalanceStorm(t *testing.T) {
	harness.Long(t, "F05", "kill consumers repeatedly; scale 1 → 3 → 1")
	c := harness.NewCluster(t, harness.Options{Partitions: 12})
	ing := c.StartIngestor()
	first := c.StartConsumer()
	s := harness.NewScenario(t, c, "F05", "consumers: scale 1 → 3, 4 × kill -9 and restart, scale 3 → 1")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: longRate})
	if !l.WaitAcked(longRate, time.Minute) {
		t.Fatal("no load acknowledged before the faults")
	}
	consumers := []*harness.Service{first, c.StartConsumer(), c.StartConsumer()}
	time.Sleep(15 * time.Second)
	for i := range 4 {
		victim := consumers[(i+1)%len(consumers)]
		victim.Kill()
		time.Sleep(time.Duration(1000+rand.IntN(3000)) * time.Millisecond)
		victim.Start()
		victim.WaitReady(time.Minute)
		time.Sleep(time.Duration(3000+rand.IntN(5000)) * time.Millisecond)
	}
	for _, victim := range consumers[1:] {
		if _, err := victim.Term(45 * time.Second); err != nil {
			s.Fail("scaling down: %v", err)
		}
	}
	s.Healed()
	if !l.WaitAcked(l.Acked()+2*longRate, 2*time.Minute) {
		s.Fail("the load made no progress after the storm")
	}
	s.Verify(5 * time.Minute)
	dups, _ := first.Metric("pulseboard_consumer_duplicates_total")
	s.Note("duplicates absorbed by the remaining consumer", "%.0f", dups)
}

// F07 (long): the broker is down for 60 s under load; see brokerOutage.
func TestF07BrokerOutageLong(t *testing.T) {
	harness.Long(t, "F07", "broker down for 60 s")
	brokerOutage(t, "F07", "broker killed (SIGKILL) for 60 s under load, 8 flooding clients",
		outage{down: 60 * time.Second, rate: longRate, flood: 8})
}

// F07 (hung broker): the broker is frozen with SIGSTOP for 40 s under load and a flood
// of large batches: connections stay open and nothing answers, so every produce waits
// for its deadline and the in-flight budget is what keeps memory bounded.
func TestF07BrokerFrozen(t *testing.T) {
	harness.Long(t, "F07", "broker frozen (SIGSTOP) for 40 s")
	brokerOutage(t, "F07", "broker frozen (SIGSTOP) for 40 s under load, 16 flooding clients",
		outage{down: 40 * time.Second, freeze: true, rate: longRate, flood: 16})
}
