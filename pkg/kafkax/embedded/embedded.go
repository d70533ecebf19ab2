// Package embedded is the in-process Kafka-protocol broker (franz-go's kfake) of the
// all-in-one (`pulseboard run`, `pulseboard broker`) and of the tests. It lives apart from
// pkg/kafkax so that the standalone services, which only talk to a real cluster, never
// link kfake (cmd/pulseboard/exposure_test.go checks with `go list -deps`): import it
// only from cmd/pulseboard and from tests.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pulseboard/pulseboard/pkg/netx"
)

// Broker is an in-process Kafka-protocol broker (franz-go's kfake). It speaks the real
// protocol on TCP, so kafka-go, kcat and any other Kafka tool work against it, but it
// keeps everything in memory unless DataDir is set: the all-in-one drains it before
// stopping.
type Broker struct {
	cluster *kfake.Cluster
	ret     *retention // nil without Options.Retention
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
	// Retention, when its Groups are set, trims what those consumer groups have stored
	// and refuses produce requests once the broker holds Retention.MaxBytes (see
	// Retention). Without it the broker keeps every record until it stops.
	Retention Retention
	// Logger receives the broker's own events (accept errors, produce refused); nil
	// discards them.
	Logger *slog.Logger
	// Registerer, when set, gets the broker's metrics (pulseboard_ingest_broker_*).
	Registerer prometheus.Registerer
	// SegmentBytes overrides log.segment.bytes [segmentBytes]: tests roll segments small
	// to see retention free them.
	SegmentBytes int
}

// segmentBytes is the embedded broker's log.segment.bytes. kfake keeps an in-memory
// broker's segments as byte slices grown by doubling until a write finds the segment
// past this size: at the 100 MiB default, copying them was a fifth of the broker's CPU.
// A segment is rolled once it reaches the size, so the write that gets it there must
// still fit: 3 MiB segments fill 4 MiB slices (at 4 MiB every slice would double to
// 8 MiB for its last write, and the broker's heap would be twice its data). Retention
// frees memory a whole segment at a time, and every partition written to holds a
// partly filled one, so the segments are small: 12 partitions hold at most 48 MiB of
// active segments (at 15 MiB it was 192 MiB).
const segmentBytes = 3 << 20

// maxMessageBytes is the embedded broker's message.max.bytes (and its topics'
// max.message.bytes): above the producer's 4 MiB batches.
const maxMessageBytes = 8 << 20

// Start starts a single-broker cluster on 127.0.0.1.
func Start(o Options) (*Broker, error) {
	if o.Partitions < 1 {
		o.Partitions = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Retention.validate(); err != nil {
		return nil, err
	}
	// kfake listens on all interfaces for a port; bind the loopback address explicitly.
	// Its accept loop returns on the first error and never listens again (out of file
	// descriptors under a connection flood, the broker would be gone for good): the
	// RetryListener retries every error until the listener is closed.
	port := o.Port
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = segmentBytes
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				return nil, err
			}
			if o.WrapListener != nil {
				ln = o.WrapListener(ln)
			}
			return retryListener(ln, o.Logger), nil
		}),
		kfake.SeedTopics(int32(o.Partitions), o.Topics...),
		kfake.DefaultNumPartitions(o.Partitions),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(maxMessageBytes), "log.segment.bytes": strconv.Itoa(o.SegmentBytes)}),
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
	if len(o.Retention.Groups) > 0 {
		e.ret = startRetention(c, o)
	}
	return e, nil
}

// retryListener wraps ln so that its Accept survives descriptor exhaustion, logging the
// first error of each run of failures.
func retryListener(ln net.Listener, logger *slog.Logger) net.Listener {
	rl := netx.NewRetryListener(ln)
	rl.OnError = func(err error, backoff time.Duration) {
		if backoff == 5*time.Millisecond { // the first retry of a run
			logger.Warn("embedded broker: accepting a connection failed; retrying", "err", err)
		}
	}
	return rl
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

// Cluster is the kfake cluster underneath (tests inspect partitions and groups).
func (e *Broker) Cluster() *kfake.Cluster { return e.cluster }

// Close stops the broker; anything not persisted is gone.
func (e *Broker) Close() {
	if e.ret != nil {
		e.ret.stop()
	}
	e.cluster.Close()
}
