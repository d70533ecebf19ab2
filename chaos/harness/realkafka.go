package harness

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

// prepareRealKafka resolves, configures and formats a real Kafka cluster (no process
// runs yet) so that the services' environment can name its brokers.
func (c *Cluster) prepareRealKafka(o Options) {
	c.t.Helper()
	if o.KafkaNodes <= 0 {
		o.KafkaNodes = 3
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rk, err := realkafka.Prepare(ctx, realkafka.Options{
		Version: o.Kafka, Nodes: o.KafkaNodes, HeapMB: 320, Dir: c.t.TempDir(),
		// Followers that stop fetching leave the in-sync replica set after 10 s (30 s by
		// default), so the scenarios see ISR shrinks within their time.
		Config: map[string]string{"replica.lag.time.max.ms": "10000"},
	})
	if err != nil {
		c.t.Fatalf("harness: %v", err)
	}
	c.Kafka = rk
	c.BrokerList = rk.Brokers()
	c.Brokers = strings.Join(c.BrokerList, ",")
}

// startRealKafka starts every node as a process of the cluster (kafka-1, kafka-2…),
// waits until all are registered, and creates the topics (replication factor 3 and
// min.insync.replicas=2 on three nodes).
func (c *Cluster) startRealKafka(o Options) {
	c.t.Helper()
	for _, n := range c.Kafka.Nodes {
		argv := n.Argv()
		addr := n.Addr
		p := StartProc(c.t, ProcSpec{
			Name: fmt.Sprintf("kafka-%d", n.ID), Bin: argv[0], Args: argv[1:], Env: os.Environ(),
			Ready: func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_, err := realkafka.LiveBrokers(ctx, addr)
				return err == nil
			},
		})
		c.KafkaProcs = append(c.KafkaProcs, p)
		c.addProc(p)
	}
	for _, p := range c.KafkaProcs {
		p.WaitReady(2 * time.Minute)
	}
	c.WaitKafkaBrokers(len(c.KafkaProcs), 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	partitions := o.Partitions
	if err := kafkax.EnsureTopics(ctx, c.BrokerList,
		kafkax.Topic{Name: c.Topic, Partitions: partitions}, kafkax.Topic{Name: c.DLQTopic, Partitions: 1}); err != nil {
		c.t.Fatalf("harness: creating topics: %v", err)
	}
}

// KafkaNode returns the process of the real cluster's node id.
func (c *Cluster) KafkaNode(id int) *Proc {
	c.t.Helper()
	if id < 1 || id > len(c.KafkaProcs) {
		c.t.Fatalf("harness: no Kafka node %d", id)
	}
	return c.KafkaProcs[id-1]
}

// WaitKafkaBrokers waits until a running node's metadata lists at least n brokers.
func (c *Cluster) WaitKafkaBrokers(n int, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		for i, p := range c.KafkaProcs {
			if !p.Running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			got, err := realkafka.LiveBrokers(ctx, c.Kafka.Nodes[i].Addr)
			cancel()
			if err == nil && got >= n {
				return
			}
			if err == nil {
				err = fmt.Errorf("%d brokers registered", got)
			}
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("harness: fewer than %d Kafka brokers after %s: %v", n, timeout, last)
}

// PartitionState is a partition of the events topic as the metadata describes it.
type PartitionState struct {
	ID       int
	Leader   int // node id, -1 without a leader
	Replicas []int
	ISR      []int
}

// Partitions returns the events topic's partitions from the metadata of any node that
// answers.
func (c *Cluster) Partitions() ([]PartitionState, error) {
	client, done := c.kafkaClient()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.Topic}})
	if err != nil {
		return nil, err
	}
	var out []PartitionState
	for _, t := range meta.Topics {
		if t.Name != c.Topic {
			continue
		}
		for _, p := range t.Partitions {
			ps := PartitionState{ID: p.ID, Leader: -1}
			if p.Leader.Host != "" {
				ps.Leader = p.Leader.ID
			}
			for _, r := range p.Replicas {
				ps.Replicas = append(ps.Replicas, r.ID)
			}
			for _, r := range p.Isr {
				ps.ISR = append(ps.ISR, r.ID)
			}
			out = append(out, ps)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// BusiestLeader returns the node that leads the partitions holding the most messages of
// the events topic, and those partitions.
func (c *Cluster) BusiestLeader() (int, []int) {
	c.t.Helper()
	parts, err := c.Partitions()
	if err != nil {
		c.t.Fatalf("harness: reading partitions: %v", err)
	}
	client, done := c.kafkaClient()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends := endOffsets(ctx, client, c.Topic)
	load := map[int]int64{}
	led := map[int][]int{}
	for _, p := range parts {
		if p.Leader < 0 {
			continue
		}
		load[p.Leader] += ends[p.ID]
		led[p.Leader] = append(led[p.Leader], p.ID)
	}
	best := -1
	for node, n := range load {
		if best < 0 || n > load[best] || (n == load[best] && node < best) {
			best = node
		}
	}
	if best < 0 {
		c.t.Fatalf("harness: no partition of %s has a leader", c.Topic)
	}
	return best, led[best]
}

// Coordinator returns the node that coordinates consumer group group.
func (c *Cluster) Coordinator(group string) (int, error) {
	client, done := c.kafkaClient()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.FindCoordinator(ctx, &kafka.FindCoordinatorRequest{Key: group, KeyType: kafka.CoordinatorKeyTypeConsumer})
	if err != nil {
		return 0, err
	}
	if resp.Error != nil {
		return 0, resp.Error
	}
	return resp.Coordinator.NodeID, nil
}

// WaitFullyReplicated waits until every partition of the events topic has a leader and
// all its replicas in sync, and returns how long that took.
func (c *Cluster) WaitFullyReplicated(timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < timeout {
		parts, err := c.Partitions()
		if err == nil {
			last = ""
			for _, p := range parts {
				if p.Leader < 0 || len(p.ISR) < len(p.Replicas) {
					last = fmt.Sprintf("partition %d: leader %d, ISR %v of %v", p.ID, p.Leader, p.ISR, p.Replicas)
					break
				}
			}
			if last == "" && len(parts) > 0 {
				return time.Since(start)
			}
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("harness: the events topic was not fully replicated within %s (%s)", timeout, last)
	return 0
}

// EndOffsets returns the events topic's end offset of each partition.
func (c *Cluster) EndOffsets() map[int]int64 {
	client, done := c.kafkaClient()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return endOffsets(ctx, client, c.Topic)
}
