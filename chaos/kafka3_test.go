package chaos_test

// The 3-broker fault tier: PulseBoard against a real Apache Kafka cluster of three
// combined controller+broker nodes (pkg/testenv/realkafka), with the events topic at
// replication factor 3, min.insync.replicas=2 and unclean leader election off. Each
// scenario ends with the ledger verifier: nothing acknowledged lost, nothing stored
// twice, nothing invented, committed offsets never moved back.
//
// The scenarios run one after the other (each cluster is three JVMs beside the
// services, on two cores). KR1 and the acks=1 negative control are part of `make test`;
// the rest run with CHAOS_LONG=1 (`make chaos`).

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pulseboard/pulseboard/chaos/harness"
	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

// kafkaRate is the load of the 3-broker scenarios, in events per second.
const kafkaRate = 300

// kafkaVersion is the Kafka version of the 3-broker tier: CHAOS_KAFKA_VERSION, else the
// newest tested release.
func kafkaVersion() string {
	if v := os.Getenv("CHAOS_KAFKA_VERSION"); v != "" {
		return v
	}
	return realkafka.Latest
}

// kafkaCluster starts a 3-node cluster with an ingestor and one consumer.
func kafkaCluster(t *testing.T, env ...string) (*harness.Cluster, *harness.Service) {
	t.Helper()
	// Twelve projects over six partitions: every partition (nearly always) gets traffic.
	c := harness.NewCluster(t, harness.Options{Kafka: kafkaVersion(), Projects: 12})
	ing := c.StartIngestor(env...)
	c.StartConsumer()
	return c, ing
}

// kafkaScenario starts a 3-node cluster with an ingestor and one consumer, the scenario
// and its load, and waits until the load is being acknowledged.
func kafkaScenario(t *testing.T, id, title string, ingestorEnv ...string) (*harness.Cluster, *harness.Scenario, *harness.Load) {
	t.Helper()
	c, ing := kafkaCluster(t, ingestorEnv...)
	s := harness.NewScenario(t, c, id, title+" (Kafka "+kafkaVersion()+")")
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: kafkaRate})
	if !l.WaitAcked(2*kafkaRate, 2*time.Minute) {
		s.Fail("no load acknowledged before the fault")
	}
	return c, s, l
}

// progress fails the scenario unless the load gets another two seconds' worth of events
// acknowledged within two minutes.
func progress(s *harness.Scenario, l *harness.Load, when string) {
	if !l.WaitAcked(l.Acked()+2*kafkaRate, 2*time.Minute) {
		s.Fail("the load made no progress %s", when)
	}
}

// restartNode starts a stopped node again and waits until its broker serves.
func restartNode(c *harness.Cluster, id int) {
	c.KafkaNode(id).Start()
	c.KafkaNode(id).WaitReady(2 * time.Minute)
}

// waitLeadersMoved waits until none of parts is led by node (or without a leader) and
// returns how long that took.
func waitLeadersMoved(t *testing.T, c *harness.Cluster, node int, parts []int, timeout time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		ps, err := c.Partitions()
		if err == nil {
			moved := true
			for _, p := range ps {
				if slices.Contains(parts, p.ID) && (p.Leader == node || p.Leader < 0) {
					moved = false
				}
			}
			if moved {
				return time.Since(start), true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start), false
}

// noteWindow records the 503 window clients saw from a moment on.
func noteWindow(s *harness.Scenario, l *harness.Load, key string, from time.Time) {
	d, n := l.UnavailableWindow(from)
	s.Note(key, "%.1f s (%d probes not 2xx)", d.Seconds(), n)
}

// KR1: the node that leads the partitions with the most traffic is killed with SIGKILL
// under load, and started again 15 s later. Leadership moves to an in-sync follower,
// ingest goes on after a short 503 window, and nothing acknowledged is lost.
func TestKR1KillBusiestLeader(t *testing.T) {
	c, s, l := kafkaScenario(t, "KR1", "kill -9 the leader of the busiest partitions under load")
	leader, parts := c.BusiestLeader()
	s.Note("killed", "node %d, leader of partitions %v", leader, parts)
	killed := time.Now()
	c.KafkaNode(leader).Kill()
	s.Healed() // from here: the time until ingest answers 2xx again, and the catch-up
	if d, ok := waitLeadersMoved(t, c, leader, parts, time.Minute); ok {
		s.Note("leadership moved after", "%.1f s", d.Seconds())
	} else {
		s.Fail("the killed node's partitions had no new leader after %s", d)
	}
	if _, ok := l.WaitIngestRecovered(time.Minute); !ok {
		s.Fail("ingest did not answer 2xx within a minute of the leader's death")
	}
	progress(s, l, "on two brokers")
	time.Sleep(time.Until(killed.Add(15 * time.Second)))
	restartNode(c, leader)
	s.Note("back in sync after restart", "%.1f s", c.WaitFullyReplicated(2*time.Minute).Seconds())
	noteWindow(s, l, "503 window after the kill", killed)
	s.Verify(3 * time.Minute)
}

// KR2: two of the three nodes are killed with SIGKILL under load. With
// min.insync.replicas=2 no event can be written to two replicas any more (and the KRaft
// quorum is gone): the ingestor answers 503 with Retry-After and never 2xx for a request
// sent while both are down. When one node returns, ingest is back within seconds; when
// both are back, the ledger is clean.
func TestKR2KillTwoOfThree(t *testing.T) {
	harness.Long(t, "KR2", "two of three brokers killed")
	c, s, l := kafkaScenario(t, "KR2", "kill -9 two of three brokers under load, then bring them back one by one")
	leader, _ := c.BusiestLeader()
	other := leader%3 + 1
	c.KafkaNode(leader).Kill()
	c.KafkaNode(other).Kill()
	down := time.Now()
	s.Note("killed", "nodes %d and %d", leader, other)
	time.Sleep(20 * time.Second)
	upAgain := time.Now()

	answers := l.ProbeAnswers(down, upAgain)
	var ok2xx, unavailable, noRetryAfter int
	for _, a := range answers {
		switch {
		case a.Status >= 200 && a.Status < 300:
			ok2xx++
		case a.Status == http.StatusServiceUnavailable:
			unavailable++
			if !a.RetryAfter {
				noRetryAfter++
			}
		}
	}
	s.Note("probes while two were down", "%d sent: %d 2xx, %d 503 (%d without Retry-After)", len(answers), ok2xx, unavailable, noRetryAfter)
	if ok2xx > 0 {
		s.Fail("%d requests sent while two of three brokers were down were answered 2xx: an event acknowledged on fewer than two replicas", ok2xx)
	}
	if unavailable == 0 {
		s.Fail("no 503 while two of three brokers were down")
	}
	if noRetryAfter > 0 {
		s.Fail("%d answers 503 without Retry-After", noRetryAfter)
	}

	c.KafkaNode(leader).Start()
	s.Healed()
	c.KafkaNode(leader).WaitReady(2 * time.Minute)
	if d, ok := l.WaitIngestRecovered(2 * time.Minute); ok {
		s.Note("ingest back after the first broker returned", "%.1f s", d.Seconds())
	} else {
		s.Fail("ingest did not recover within 2 minutes of a broker's return")
	}
	restartNode(c, other)
	s.Note("fully replicated after both returned", "%.1f s", c.WaitFullyReplicated(3*time.Minute).Seconds())
	noteWindow(s, l, "503 window", down)
	s.Verify(3 * time.Minute)
}

// KR3: every node in turn gets SIGTERM (a controlled shutdown: its leaderships move
// first), is started again and rejoins every in-sync replica set before the next one.
// Ingest and the consumer go on throughout.
func TestKR3RollingRestart(t *testing.T) {
	harness.Long(t, "KR3", "rolling restart of three brokers")
	c, s, l := kafkaScenario(t, "KR3", "rolling restart (SIGTERM, start, wait in sync) of all three brokers under load")
	start := time.Now()
	var steps []string
	for id := 1; id <= 3; id++ {
		node := c.KafkaNode(id)
		took, err := node.Term(2 * time.Minute)
		// A JVM ends by SIGTERM with status 143 once its shutdown hooks (Kafka's
		// controlled shutdown) have run.
		if err != nil && !strings.Contains(err.Error(), "exit status 143") {
			s.Fail("node %d: %v", id, err)
		}
		node.Start()
		node.WaitReady(2 * time.Minute)
		sync := c.WaitFullyReplicated(3 * time.Minute)
		steps = append(steps, fmt.Sprintf("node %d: stopped in %.1f s, in sync %.1f s after start", id, took.Seconds(), sync.Seconds()))
	}
	s.Note("restarts", "%s", strings.Join(steps, "; "))
	s.Healed()
	progress(s, l, "after the rolling restart")
	noteWindow(s, l, "503 window during the restarts", start)
	s.Verify(3 * time.Minute)
}

// KR4: the node that coordinates the consumer group is killed with SIGKILL while the
// consumer commits after every batch. The coordinator moves (the group's offsets topic
// has replicas on the other nodes); commits resume, offsets never move back, and
// nothing is lost or stored twice.
func TestKR4KillGroupCoordinator(t *testing.T) {
	harness.Long(t, "KR4", "group coordinator killed")
	c, s, l := kafkaScenario(t, "KR4", "kill -9 the consumer group's coordinator while the consumer commits")
	c.WaitLag0(time.Minute) // the consumer is committing
	coord, err := c.Coordinator(harness.ConsumerGroup)
	if err != nil {
		t.Fatalf("finding the coordinator: %v", err)
	}
	s.Note("killed", "node %d, coordinator of %s", coord, harness.ConsumerGroup)
	killed := time.Now()
	c.KafkaNode(coord).Kill()
	s.Healed() // the catch-up from here is the time until commits resumed everywhere
	var moved time.Duration
	for time.Since(killed) < time.Minute {
		if n, err := c.Coordinator(harness.ConsumerGroup); err == nil && n != coord {
			moved = time.Since(killed)
			s.Note("coordinator moved", "to node %d after %.1f s", n, moved.Seconds())
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if moved == 0 {
		s.Fail("the group's coordinator did not move within a minute")
	}
	progress(s, l, "after the fault")
	time.Sleep(time.Until(killed.Add(15 * time.Second)))
	restartNode(c, coord)
	c.WaitFullyReplicated(2 * time.Minute)
	s.Verify(3 * time.Minute)
}

// KR5: consumers scale 1 → 3 → 1 under load, and one of the three is killed with
// SIGKILL on the way down. Its partitions stay unconsumed until the group's session
// timeout evicts it (CONSUMER_SESSION_TIMEOUT, 10 s by default; it was a fixed 30 s);
// the report gives the measured time.
func TestKR5ConsumersScaleAndOneKilled(t *testing.T) {
	harness.Long(t, "KR5", "consumers 1 → 3 → 1, one killed")
	c, s, l := kafkaScenario(t, "KR5", "consumers scaled 1 → 3 → 1 under load, one killed -9, CONSUMER_SESSION_TIMEOUT 10s")
	second, third := c.StartConsumer(), c.StartConsumer()
	c.WaitLag0(2 * time.Minute)
	time.Sleep(5 * time.Second) // committing as three
	// The partitions the last member took when it joined (it had no others before) and
	// that have traffic: after its death nothing is committed on them until the group
	// evicts it.
	var watched []int
	before := c.EndOffsets()
	for _, v := range third.LabelValues("pulseboard_consumer_lag_messages", "partition") {
		if p, err := strconv.Atoi(v); err == nil && before[p] > 0 {
			watched = append(watched, p)
		}
	}
	if len(watched) == 0 {
		t.Fatalf("the third consumer reads no partition with traffic: nothing to measure")
	}
	ends := c.EndOffsets()
	killed := time.Now()
	third.Kill()
	s.Healed()
	resumed := time.Duration(0)
	for time.Since(killed) < 2*time.Minute && resumed == 0 {
		offs, err := c.GroupOffsets(harness.ConsumerGroup)
		if err == nil {
			done := true
			for _, p := range watched {
				if offs[p] <= ends[p] {
					done = false
				}
			}
			if done {
				resumed = time.Since(killed)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if resumed == 0 {
		s.Fail("the killed consumer's partitions %v were not consumed again within 2 minutes", watched)
	} else {
		s.Note("killed consumer's partitions resumed after", "%.1f s (partitions %v)", resumed.Seconds(), watched)
	}
	progress(s, l, "after the kill")
	if _, err := second.Term(30 * time.Second); err != nil {
		s.Fail("scaling down: %v", err)
	}
	progress(s, l, "on one consumer")
	s.Verify(3 * time.Minute)
}

// KR6: the two followers of the busiest partitions are frozen (SIGSTOP) for 4 s under
// load, their leader is killed with SIGKILL, and the followers are thawed: one of them
// becomes leader without what only the dead leader had. With acks=all nothing was
// acknowledged that only the leader had, so nothing is lost. The negative control runs
// the ingestor with acks=1 (failpoint switch ingestor/unsafe-acks-1, failpoints builds
// only): events acknowledged by the leader alone are gone, and the verifier must say so.
func TestKR6FrozenFollowersLeaderKilled(t *testing.T) {
	for _, unsafe := range []bool{false, true} {
		name, title := "acks-all", "followers frozen, leader killed: acks=all"
		if unsafe {
			name, title = "negative-control/acks-1", "NEGATIVE CONTROL: followers frozen, leader killed, producer with acks=1"
		}
		t.Run(name, func(t *testing.T) {
			if !unsafe {
				harness.Long(t, "KR6", "followers frozen, leader killed (acks=all)")
			}
			var env []string
			if unsafe {
				env = append(env, "PULSEBOARD_FAILPOINTS=ingestor/unsafe-acks-1=on")
			}
			c, s, l := kafkaScenario(t, "KR6", title, env...)
			if unsafe {
				s.ExpectLoss()
			}
			leader, parts := c.BusiestLeader()
			var followers []int
			for id := 1; id <= 3; id++ {
				if id != leader {
					followers = append(followers, id)
				}
			}
			s.Note("fault", "froze nodes %v, killed node %d (leader of %v)", followers, leader, parts)
			before := l.Acked()
			for _, f := range followers {
				c.KafkaNode(f).Pause()
			}
			frozen := time.Now()
			time.Sleep(4 * time.Second)
			ackedFrozen := l.Acked() - before
			c.KafkaNode(leader).Kill()
			for _, f := range followers {
				c.KafkaNode(f).Resume()
			}
			s.Note("acknowledged while the followers were frozen", "%d events", ackedFrozen)
			if !unsafe && ackedFrozen > 0 {
				// Requests already answered before the freeze may complete within it, but
				// nothing produced after it can reach two replicas.
				t.Logf("%d events acknowledged during the freeze (answers to requests written before it)", ackedFrozen)
			}
			s.Healed()
			if _, ok := l.WaitIngestRecovered(2 * time.Minute); !ok {
				s.Fail("ingest did not recover within 2 minutes")
			}
			time.Sleep(5 * time.Second)
			c.KafkaNode(leader).Start()
			c.KafkaNode(leader).WaitReady(2 * time.Minute)
			c.WaitFullyReplicated(3 * time.Minute)
			noteWindow(s, l, "503 window", frozen)
			rep := s.Verify(3 * time.Minute)
			if unsafe {
				t.Logf("negative control: the verifier saw %d lost events (%s)", rep.Lost, rep)
			}
		})
	}
}
