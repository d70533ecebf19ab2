// Package embedded is the in-process Kafka-protocol broker (franz-go's kfake) of the
// all-in-one (`pulseboard run`, `pulseboard broker`) and of the tests. It lives apart from
// pkg/kafkax so that the standalone services, which only talk to a real cluster, never
// link kfake (cmd/pulseboard/exposure_test.go checks with `go list -deps`): import it
// only from cmd/pulseboard and from tests.
package embedded

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Broker is an in-process Kafka-protocol broker (franz-go's kfake). It speaks the real
// protocol on TCP, so kafka-go, kcat and any other Kafka tool work against it, but it
// keeps everything in memory unless DataDir is set: the all-in-one drains it before
// stopping.
type Broker struct {
	cluster *kfake.Cluster
}

// Options configure the embedded broker.
type Options struct {
	// Port to listen on (127.0.0.1); 0 picks a free port.
	Port int
	// Topics are created at start with Partitions partitions each.
	Topics     []string
	Partitions int
	// DataDir, when set, persists the log to disk and reloads it on start.
	DataDir string
	// WrapListener, when set, wraps the broker's listener. Tests use it to take the broker
	// down or make it hang (drop or stall its connections) while it keeps its address,
	// which clients learn from metadata, so a proxy in front of the bootstrap address
	// alone would not do.
	WrapListener func(net.Listener) net.Listener
}

// segmentBytes is the embedded broker's log.segment.bytes. kfake keeps an in-memory
// broker's segments as byte slices grown by doubling until a write finds the segment
// past this size: at the 100 MiB default, copying them was a fifth of the broker's CPU.
// A segment is rolled once it reaches the size, so the write that gets it there must
// still fit: 15 MiB segments fill 16 MiB slices (at 16 MiB every slice doubled to 32 MiB
// for its last write, and the broker's heap was twice its data).
const segmentBytes = 15 << 20

// maxMessageBytes is the embedded broker's message.max.bytes (and its topics'
// max.message.bytes): above the producer's 4 MiB batches.
const maxMessageBytes = 8 << 20

// Start starts a single-broker cluster on 127.0.0.1.
func Start(o Options) (*Broker, error) {
	if o.Partitions < 1 {
		o.Partitions = 1
	}
	// kfake listens on all interfaces for a port; bind the loopback address explicitly.
	port := o.Port
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil || o.WrapListener == nil {
				return ln, err
			}
			return o.WrapListener(ln), nil
		}),
		kfake.SeedTopics(int32(o.Partitions), o.Topics...),
		kfake.DefaultNumPartitions(o.Partitions),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(maxMessageBytes), "log.segment.bytes": strconv.Itoa(segmentBytes)}),
	}
	if o.DataDir != "" {
		opts = append(opts, kfake.DataDir(o.DataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("starting the embedded Kafka broker on 127.0.0.1:%d: %w", o.Port, err)
	}
	e := &Broker{cluster: c}
	if err := e.setTopicMaxMessageBytes(o.Topics); err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

// setTopicMaxMessageBytes states the topics' max.message.bytes explicitly: kfake enforces
// its broker-wide message.max.bytes but describes topics with Kafka's 1 MiB default, and
// the producer sizes its batches by what the topic describes.
func (e *Broker) setTopicMaxMessageBytes(topics []string) error {
	if len(topics) == 0 {
		return nil
	}
	transport := &kafka.Transport{DialTimeout: 3 * time.Second}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(e.Addrs()...), Transport: transport, Timeout: 10 * time.Second}
	var res []kafka.AlterConfigRequestResource
	for _, t := range topics {
		res = append(res, kafka.AlterConfigRequestResource{ResourceType: kafka.ResourceTypeTopic, ResourceName: t,
			Configs: []kafka.AlterConfigRequestConfig{{Name: "max.message.bytes", Value: strconv.Itoa(maxMessageBytes)}}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.AlterConfigs(ctx, &kafka.AlterConfigsRequest{Resources: res})
	if err != nil {
		return fmt.Errorf("embedded broker: setting max.message.bytes: %w", err)
	}
	for r, err := range resp.Errors {
		if err != nil {
			return fmt.Errorf("embedded broker: setting max.message.bytes of %s: %w", r.Name, err)
		}
	}
	return nil
}

// Addrs are the bootstrap addresses.
func (e *Broker) Addrs() []string { return e.cluster.ListenAddrs() }

// Close stops the broker; anything not persisted is gone.
func (e *Broker) Close() { e.cluster.Close() }
