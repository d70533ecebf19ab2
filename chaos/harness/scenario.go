package harness

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// Scenario is one fault scenario of a test: it owns the load and the offset watcher,
// measures recovery after the fault heals, verifies the ledger once lag is 0, and
// records a Result into the report when the test ends (passed = the test passed).
//
// The usual shape:
//
//	c := harness.NewCluster(t, harness.Options{})
//	ing, _ := c.StartIngestor(), c.StartConsumer()
//	s := harness.NewScenario(t, c, "F04", "kill -9 consumer at after-db-commit")
//	l := s.StartLoad(ing.URL, harness.LoadOptions{})
//	… inject the fault, heal it …
//	s.Healed()
//	s.Verify(2 * time.Minute) // stops the load, waits for lag 0, checks the ledger
type Scenario struct {
	t testing.TB
	c *Cluster

	mu         sync.Mutex
	res        Result
	start      time.Time
	load       *Load
	watcher    *OffsetWatcher
	expectLoss bool
	verified   bool
	catchUp    chan struct{} // closed when the backlog at Healed time is committed
}

// NewScenario starts a scenario (and its offset watcher) on the cluster.
func NewScenario(t testing.TB, c *Cluster, id, name string) *Scenario {
	s := &Scenario{t: t, c: c, start: time.Now()}
	s.res = Result{ID: id, Name: name, Notes: map[string]string{}}
	s.watcher = c.WatchOffsets()
	t.Cleanup(s.record)
	return s
}

// ExpectLoss makes this scenario a negative control: it passes only if the verifier
// reports lost events (a safety was deliberately disabled).
func (s *Scenario) ExpectLoss() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expectLoss = true
	s.res.NegativeControl = true
}

// StartLoad starts the scenario's ledger load against the ingestor at url.
func (s *Scenario) StartLoad(url string, o LoadOptions) *Load {
	s.t.Helper()
	l := s.c.StartLoad(url, o)
	s.mu.Lock()
	s.load = l
	s.mu.Unlock()
	return l
}

// Watcher returns the scenario's offset watcher.
func (s *Scenario) Watcher() *OffsetWatcher { return s.watcher }

// Note adds a line to the scenario's row in the report.
func (s *Scenario) Note(key, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.Notes[key] = fmt.Sprintf(format, args...)
}

// Fail records a failed check in the report and fails the test (without stopping it).
func (s *Scenario) Fail(format string, args ...any) {
	s.t.Helper()
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.res.Failures = append(s.res.Failures, msg)
	s.mu.Unlock()
	s.t.Error(msg)
}

// Healed records that the fault has healed. From here the report measures the ingest
// recovery (first probe answered 2xx) and the consumer's catch-up: the time until the
// group has committed everything that was in the topic at this moment.
func (s *Scenario) Healed() {
	healed := time.Now()
	s.mu.Lock()
	if s.load != nil {
		s.load.MarkHealed()
	}
	done := make(chan struct{})
	s.catchUp = done
	s.mu.Unlock()
	go func() {
		defer close(done)
		if d, ok := s.c.catchUpFrom(healed, 5*time.Minute); ok {
			s.mu.Lock()
			s.res.RecoveryLagSeconds = seconds(d)
			s.mu.Unlock()
		}
	}()
}

// Verify stops the load (waiting up to a minute for the answers to what it still
// had), waits up to timeout for the consumer lag to reach 0, and checks: nothing lost,
// duplicated, invented or stored against a rejection (ledger.Verify); committed offsets
// never moved backwards; events, the dedup gate and the rollups agree. For a negative
// control it checks instead that loss was seen. It returns the ledger report.
func (s *Scenario) Verify(timeout time.Duration) ledger.Report {
	s.t.Helper()
	s.mu.Lock()
	l, catchUp := s.load, s.catchUp
	s.mu.Unlock()
	if l != nil {
		l.Stop(time.Minute)
	}
	drain := s.c.WaitLag0(timeout)
	if catchUp != nil {
		select {
		case <-catchUp:
		case <-time.After(30 * time.Second):
		}
	}
	decreases := s.watcher.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var rep ledger.Report
	if l != nil {
		var err error
		rep, err = ledger.Verify(ctx, s.c.Pool, l.Ledger())
		if err != nil {
			s.t.Fatalf("verifying the ledger: %v", err)
		}
		s.t.Logf("%s %s: %s", s.res.ID, s.res.Name, rep)
	}
	counts, consistErr := s.c.Consistent(ctx)

	s.mu.Lock()
	s.verified = true
	s.res.DrainSeconds = seconds(drain)
	s.res.OffsetDecreases = decreases
	if l != nil {
		s.res.Ledger = &rep
		st := l.Stats()
		s.res.Load = &st
		if d, ok := l.IngestRecovery(); ok {
			s.res.RecoveryIngestSeconds = seconds(d)
		}
	}
	s.res.Rows = counts.Events
	expectLoss := s.expectLoss
	s.mu.Unlock()

	if consistErr != nil {
		s.Fail("%v", consistErr)
	}
	if expectLoss {
		if rep.Lost == 0 {
			s.Fail("negative control: a deliberately unsafe setting lost nothing the verifier could see (%s)", rep)
		}
		return rep
	}
	if l != nil && rep.Acked == 0 {
		s.Fail("no event was acknowledged: the scenario tested nothing")
	}
	if err := rep.Err(); err != nil {
		s.Fail("ledger: %v", err)
	}
	if len(decreases) > 0 {
		var b strings.Builder
		for _, d := range decreases {
			b.WriteString("\n  " + d.String())
		}
		s.Fail("committed offsets moved backwards %d times:%s", len(decreases), b.String())
	}
	return rep
}

// record puts the scenario's result into the report when the test ends.
func (s *Scenario) record() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.DurationSeconds = time.Since(s.start).Seconds()
	s.res.Processes = map[string]ProcStats{}
	for _, p := range s.c.Procs() {
		s.res.Processes[p.Name()] = p.Stats()
	}
	if !s.verified {
		s.res.Failures = append(s.res.Failures, "ended before verification")
	}
	s.res.Pass = !s.t.Failed() && s.verified
	if s.t.Failed() && len(s.res.Failures) == 0 {
		s.res.Failures = append(s.res.Failures, "the test failed (see its log)")
	}
	Record(s.res)
}

// catchUpFrom waits until the consumer group has committed, on every partition, the
// end offset the partition had at time from (polled right after), and returns the time
// since from.
func (c *Cluster) catchUpFrom(from time.Time, timeout time.Duration) (time.Duration, bool) {
	transport := &kafka.Transport{DialTimeout: time.Second, MetadataTTL: time.Second}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(c.BrokerList...), Transport: transport, Timeout: 3 * time.Second}
	deadline := from.Add(timeout)
	var ends map[int]int64
	for ends == nil && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		ends = endOffsets(ctx, client, c.Topic)
		cancel()
		if ends == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	partitions := make([]int, 0, len(ends))
	for p := range ends {
		partitions = append(partitions, p)
	}
	sort.Ints(partitions)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		offs, err := committedOffsets(ctx, client, c.Topic, partitions)
		cancel()
		if err == nil {
			done := true
			for p, end := range ends {
				if offs[p] < end && end > 0 {
					done = false
					break
				}
			}
			if done {
				return time.Since(from), true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, false
}

func endOffsets(ctx context.Context, client *kafka.Client, topic string) map[int]int64 {
	partitions := topicPartitions(ctx, client, topic)
	if partitions == nil {
		return nil
	}
	reqs := make([]kafka.OffsetRequest, 0, len(partitions))
	for _, p := range partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil
	}
	out := map[int]int64{}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil
		}
		out[po.Partition] = po.LastOffset
	}
	return out
}

func seconds(d time.Duration) *float64 {
	v := d.Seconds()
	return &v
}
