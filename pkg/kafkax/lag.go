package kafkax

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// GroupLag returns how many messages of topic the consumer group has not committed yet:
// the sum over the topic's partitions of (end offset − committed offset). A partition
// without a committed offset, or whose committed offset lies before the log start (the
// messages it pointed at were deleted by retention), counts from its first offset,
// because that is where a group member starting with FirstOffset would begin (K13).
//
// Because the consumer commits an offset only after everything before it is stored
// (docs/reliability.md promise 8), a lag of 0 means every message produced so far is in
// Postgres or in the dead-letter topic: the all-in-one's drain and the tests wait for it.
//
// Retriable Kafka errors (a coordinator or leader that is moving or still loading) are
// retried for up to lagRetryFor within ctx.
func GroupLag(ctx context.Context, brokers []string, group, topic string) (int64, error) {
	deadline := time.Now().Add(lagRetryFor)
	for {
		lag, err := groupLag(ctx, brokers, group, topic)
		var kerr kafka.Error
		if err == nil || !errors.As(err, &kerr) || !kerr.Temporary() || time.Now().After(deadline) {
			return lag, err
		}
		select {
		case <-ctx.Done():
			return lag, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lagRetryFor bounds GroupLag's retries of retriable errors.
const lagRetryFor = 10 * time.Second

func groupLag(ctx context.Context, brokers []string, group, topic string) (int64, error) {
	if len(brokers) == 0 {
		return 0, errors.New("no Kafka brokers configured")
	}
	// A private transport, closed on return, so no pooled connections (and their
	// goroutines) outlive the call the way kafka.DefaultTransport's would.
	transport := &kafka.Transport{DialTimeout: 3 * time.Second, MetadataTTL: time.Second}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: transport, Timeout: 10 * time.Second}

	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, fmt.Errorf("reading metadata of %s: %w", topic, err)
	}
	var partitions []int
	for _, t := range meta.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return 0, fmt.Errorf("reading metadata of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			partitions = append(partitions, p.ID)
		}
	}
	if len(partitions) == 0 {
		return 0, fmt.Errorf("topic %s has no partitions (does it exist?)", topic)
	}

	requests := make([]kafka.OffsetRequest, 0, 2*len(partitions))
	for _, p := range partitions {
		requests = append(requests, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: requests}})
	if err != nil {
		return 0, fmt.Errorf("listing offsets of %s: %w", topic, err)
	}
	type bounds struct{ first, last int64 }
	ends := make(map[int]bounds, len(partitions))
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			return 0, fmt.Errorf("listing offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		ends[po.Partition] = bounds{first: po.FirstOffset, last: po.LastOffset}
	}

	committed, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: partitions}})
	if err != nil {
		return 0, fmt.Errorf("fetching offsets of group %s: %w", group, err)
	}
	// A group that never committed is "not found" on some brokers (kfake) and has -1
	// offsets on others (Apache Kafka): both mean "no commit".
	if committed.Error != nil && !errors.Is(committed.Error, kafka.GroupIdNotFound) {
		return 0, fmt.Errorf("fetching offsets of group %s: %w", group, committed.Error)
	}
	commits := make(map[int]int64, len(partitions))
	for _, p := range committed.Topics[topic] {
		if errors.Is(p.Error, kafka.GroupIdNotFound) {
			continue
		}
		if p.Error != nil {
			return 0, fmt.Errorf("fetching offset of group %s on %s/%d: %w", group, topic, p.Partition, p.Error)
		}
		commits[p.Partition] = p.CommittedOffset
	}

	var lag int64
	for _, p := range partitions {
		b, ok := ends[p]
		if !ok {
			return 0, fmt.Errorf("no offsets returned for %s/%d", topic, p)
		}
		c, ok := commits[p]
		if !ok || c < b.first { // -1 = no commit; below first = expired by retention
			c = b.first
		}
		if b.last > c {
			lag += b.last - c
		}
	}
	return lag, nil
}
