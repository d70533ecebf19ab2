package harness

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Decrease is a committed offset seen moving backwards.
type Decrease struct {
	Partition int       `json:"partition"`
	From      int64     `json:"from"`
	To        int64     `json:"to"`
	At        time.Time `json:"at"`
}

func (d Decrease) String() string {
	return fmt.Sprintf("partition %d: %d → %d at %s", d.Partition, d.From, d.To, d.At.Format("15:04:05.000"))
}

// OffsetWatcher polls the consumer group's committed offsets every 100 ms and records
// every decrease per partition (docs/reliability.md promise 9: committed offsets never move
// backwards). Polls that fail (the broker is down) are counted and skipped.
type OffsetWatcher struct {
	c    *Cluster
	stop chan struct{}
	done chan struct{}

	mu        sync.Mutex
	high      map[int]int64 // the highest offset seen per partition
	last      map[int]int64 // the offset of the last poll per partition
	decreases []Decrease
	polls     int
	failures  int
	// gen changes whenever the offsets are moved back on purpose (Rewind): a poll that
	// began in another generation, or during a rewind, is discarded.
	gen       int
	rewinding bool
}

// WatchOffsets starts an OffsetWatcher on the cluster's consumer group; it stops at the
// end of the test at the latest.
func (c *Cluster) WatchOffsets() *OffsetWatcher {
	w := &OffsetWatcher{c: c, stop: make(chan struct{}), done: make(chan struct{}), high: map[int]int64{}, last: map[int]int64{}}
	go w.run()
	c.t.Cleanup(func() { w.Stop() })
	return w
}

func (w *OffsetWatcher) run() {
	defer close(w.done)
	transport := &kafka.Transport{DialTimeout: time.Second, MetadataTTL: time.Second}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(w.c.BrokerList...), Transport: transport, Timeout: 2 * time.Second}
	var partitions []int
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
		w.mu.Lock()
		gen := w.gen
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if partitions == nil {
			partitions = topicPartitions(ctx, client, w.c.Topic)
		}
		var offs map[int]int64
		var err error
		if partitions != nil {
			offs, err = committedOffsets(ctx, client, w.c.Topic, partitions)
		}
		cancel()
		w.mu.Lock()
		w.polls++
		if partitions == nil || err != nil {
			w.failures++
			w.mu.Unlock()
			continue
		}
		if w.rewinding || w.gen != gen {
			w.mu.Unlock()
			continue // read before or while the offsets were moved back on purpose
		}
		now := time.Now()
		for p, off := range offs {
			if off < 0 {
				continue // nothing committed (yet)
			}
			// One decrease per move backwards (not one per poll while it stays there),
			// measured from the highest offset seen.
			if l, ok := w.last[p]; ok && off < l {
				w.decreases = append(w.decreases, Decrease{Partition: p, From: w.high[p], To: off, At: now})
			}
			w.last[p] = off
			w.high[p] = max(w.high[p], off)
		}
		w.mu.Unlock()
	}
}

// Stop ends the polling (idempotent) and returns the decreases seen.
func (w *OffsetWatcher) Stop() []Decrease {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	return w.Decreases()
}

// Decreases returns the decreases seen so far.
func (w *OffsetWatcher) Decreases() []Decrease {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]Decrease{}, w.decreases...)
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// Polls returns how many polls were made and how many failed.
func (w *OffsetWatcher) Polls() (polls, failures int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.polls, w.failures
}

// Rebase forgets the offsets seen so far, for a test that moves them back on purpose
// (an offset reset, F18): later offsets are compared with what follows only.
func (w *OffsetWatcher) Rebase() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.high, w.last = map[int]int64{}, map[int]int64{}
}

func topicPartitions(ctx context.Context, client *kafka.Client, topic string) []int {
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil
	}
	var ps []int
	for _, t := range meta.Topics {
		if t.Name == topic && t.Error == nil {
			for _, p := range t.Partitions {
				ps = append(ps, p.ID)
			}
		}
	}
	return ps
}

func committedOffsets(ctx context.Context, client *kafka.Client, topic string, partitions []int) (map[int]int64, error) {
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: ConsumerGroup, Topics: map[string][]int{topic: partitions}})
	if err != nil {
		return nil, err
	}
	out := make(map[int]int64, len(partitions))
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			continue
		}
		out[p.Partition] = p.CommittedOffset
	}
	return out, nil
}

// Rewind runs fn, which moves the committed offsets back on purpose (an offset reset,
// F18), and then forgets the offsets seen so far, like Rebase; polls that overlap fn are
// discarded, so the deliberate move is never recorded as a decrease.
func (w *OffsetWatcher) Rewind(fn func()) {
	w.mu.Lock()
	w.rewinding = true
	w.gen++
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.rewinding = false
		w.gen++
		w.high, w.last = map[int]int64{}, map[int]int64{}
		w.mu.Unlock()
	}()
	fn()
}
