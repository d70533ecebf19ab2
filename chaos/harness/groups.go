package harness

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

// AlerterGroup is the alerters' consumer group (ALERTER_GROUP's default).
const AlerterGroup = "pulseboard-alerter"

func (c *Cluster) kafkaClient() (*kafka.Client, func()) {
	transport := &kafka.Transport{DialTimeout: 3 * time.Second, MetadataTTL: time.Second}
	return &kafka.Client{Addr: kafka.TCP(c.BrokerList...), Transport: transport, Timeout: 10 * time.Second},
		transport.CloseIdleConnections
}

// GroupOffsets returns the offsets group has committed on the events topic, by
// partition (-1 where it has committed nothing).
func (c *Cluster) GroupOffsets(group string) (map[int]int64, error) {
	client, done := c.kafkaClient()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	partitions := topicPartitions(ctx, client, c.Topic)
	if partitions == nil {
		return nil, fmt.Errorf("no partitions of %s", c.Topic)
	}
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{c.Topic: partitions}})
	if err != nil {
		return nil, err
	}
	if resp.Error != nil && !errors.Is(resp.Error, kafka.GroupIdNotFound) {
		return nil, resp.Error
	}
	out := make(map[int]int64, len(partitions))
	for _, p := range partitions {
		out[p] = -1
	}
	for _, p := range resp.Topics[c.Topic] {
		if p.Error == nil {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// RewindGroup moves the committed offsets of group on the events topic back by n
// messages in all, spread over the partitions in proportion to their committed offsets
// (never below 0), the way an operator resets a group with kafka-consumer-groups
// --shift-by. The group must have no members (stop its consumers first): the commit is
// made outside any generation. It returns the offsets before and after.
func (c *Cluster) RewindGroup(group string, n int64) (before, after map[int]int64, err error) {
	before, err = c.GroupOffsets(group)
	if err != nil {
		return nil, nil, err
	}
	var total int64
	partitions := make([]int, 0, len(before))
	for p, off := range before {
		partitions = append(partitions, p)
		total += max(off, 0)
	}
	if total < n {
		return nil, nil, fmt.Errorf("group %s has committed %d messages, fewer than the %d to rewind", group, total, n)
	}
	sort.Ints(partitions)
	after = make(map[int]int64, len(before))
	left := n
	var commits []kafka.OffsetCommit
	for i, p := range partitions {
		off := max(before[p], 0)
		back := n * off / total
		if i == len(partitions)-1 {
			back = left
		}
		back = min(back, off, left)
		left -= back
		after[p] = off - back
		if before[p] >= 0 {
			commits = append(commits, kafka.OffsetCommit{Partition: p, Offset: off - back, Metadata: "chaos rewind"})
		}
	}
	for i := 0; left > 0 && i < len(partitions); i++ { // rounding: take the rest where there is room
		p := partitions[i]
		back := min(after[p], left)
		after[p] -= back
		left -= back
		for j := range commits {
			if commits[j].Partition == p {
				commits[j].Offset = after[p]
			}
		}
	}
	client, done := c.kafkaClient()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{
		GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{c.Topic: commits},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("committing the rewound offsets of %s: %w", group, err)
	}
	for _, p := range resp.Topics[c.Topic] {
		if p.Error != nil {
			return nil, nil, fmt.Errorf("committing the rewound offset of %s/%d: %w", group, p.Partition, p.Error)
		}
	}
	got, err := c.GroupOffsets(group)
	if err != nil {
		return nil, nil, err
	}
	for p, off := range after {
		if before[p] >= 0 && got[p] != off {
			return nil, nil, fmt.Errorf("group %s partition %d: committed %d after the rewind, want %d", group, p, got[p], off)
		}
	}
	return before, after, nil
}

// GroupLagOf is the lag of any group on the events topic (Lag is the consumers').
func (c *Cluster) GroupLagOf(group string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return kafkax.GroupLag(ctx, c.BrokerList, group, c.Topic)
}

// WaitGroupLag0 waits until group has committed everything in the events topic.
func (c *Cluster) WaitGroupLag0(group string, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var lag int64
	var err error
	for time.Since(start) < timeout {
		if lag, err = c.GroupLagOf(group); err == nil && lag == 0 {
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("group %s: lag did not reach 0 within %s (last: %d, %v)", group, timeout, lag, err)
	return 0
}

// Track adds a process the cluster did not start (an own PostgreSQL, say) to the ones
// whose resource ceilings the report shows.
func (c *Cluster) Track(p *Proc) { c.addProc(p) }
