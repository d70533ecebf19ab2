// Package kafkax configures segmentio/kafka-go the way PulseBoard's promises need it
// (docs/reliability.md K1–K14). The embedded Kafka-protocol broker of development and
// tests is pkg/kafkax/embedded, which the standalone services do not link. Nothing here
// relies on a kafka-go zero value for anything that matters.
package kafkax

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// WriterOptions tune the shared producer.
type WriterOptions struct {
	// BatchTimeout bounds how long a synchronous write waits for company. kafka-go's 1 s
	// default would make every single-event request take a second (K6).
	BatchTimeout time.Duration
	// BatchSize is the number of messages that closes a batch early.
	BatchSize int
	// BatchBytes must exceed the largest event (K8); the per-event cap enforces that.
	BatchBytes int64
	// WriteTimeout bounds one produce request.
	WriteTimeout time.Duration
	// MaxAttempts bounds kafka-go's internal retries of one batch.
	MaxAttempts int
	// Completion is called once per batch, after its final outcome (success or failure),
	// also for synchronous writes. Used to account in-flight bytes exactly.
	Completion func(messages []kafka.Message, err error)
}

// DefaultWriterOptions are the tuned defaults of docs/reliability.md's starting configuration.
func DefaultWriterOptions() WriterOptions {
	return WriterOptions{
		BatchTimeout: 2 * time.Millisecond,
		BatchSize:    1000,
		BatchBytes:   4 << 20,
		WriteTimeout: 5 * time.Second,
		MaxAttempts:  3,
	}
}

// NewWriter returns the producer: acks from all in-sync replicas (K1: the zero value is
// RequireNone), synchronous (K2: async drops errors), and keyed by project id with the
// murmur2 partitioner of the Java client (so other producers that key by project id agree
// on partitions; kafka-go's default Hash balancer uses FNV-1a and would not).
func NewWriter(brokers []string, topic string, o WriterOptions) (*kafka.Writer, error) {
	w := &kafka.Writer{
		Addr:                   kafka.TCP(brokers...),
		Topic:                  topic,
		Balancer:               kafka.Murmur2Balancer{},
		RequiredAcks:           kafka.RequireAll,
		Async:                  false,
		BatchTimeout:           o.BatchTimeout,
		BatchSize:              o.BatchSize,
		BatchBytes:             o.BatchBytes,
		WriteTimeout:           o.WriteTimeout,
		ReadTimeout:            o.WriteTimeout,
		MaxAttempts:            o.MaxAttempts,
		WriteBackoffMin:        50 * time.Millisecond,
		WriteBackoffMax:        500 * time.Millisecond,
		AllowAutoTopicCreation: false,
		Completion:             o.Completion,
		Transport: &kafka.Transport{
			DialTimeout: 3 * time.Second,
			// Refresh metadata often so leader moves and a restarted broker are noticed
			// quickly (K9).
			MetadataTTL: 5 * time.Second,
			IdleTimeout: 30 * time.Second,
		},
	}
	if w.RequiredAcks != kafka.RequireAll || w.Async {
		return nil, errors.New("kafka writer must use acks=all and synchronous writes")
	}
	return w, nil
}

// MaxHold is how long kafka-go may keep a message after WriteMessages returned (it keeps
// retrying a batch after the caller's context ended, K3/K4): the bound after which
// in-flight accounting may assume the message is gone.
func (o WriterOptions) MaxHold() time.Duration {
	perAttempt := 2*o.WriteTimeout + 3*time.Second + 500*time.Millisecond
	return time.Duration(o.MaxAttempts)*perAttempt + o.BatchTimeout
}

// ReaderOptions tune a consumer group member.
type ReaderOptions struct {
	GroupID  string
	MinBytes int
	MaxBytes int
	MaxWait  time.Duration
	// SessionTimeout is how long the group coordinator waits for a member's heartbeat
	// before it gives the member's partitions to others: after a crash (kill -9, a lost
	// machine) they stay unconsumed that long [DefaultSessionTimeout]. Brokers refuse
	// values outside group.min/max.session.timeout.ms (6 s to 30 min by default).
	SessionTimeout time.Duration
}

// DefaultSessionTimeout is the consumer group session timeout unless configured.
const DefaultSessionTimeout = 10 * time.Second

// heartbeat is the heartbeat interval for a session timeout: a third of it at most (the
// Kafka guideline), and no more than 3 s.
func heartbeat(session time.Duration) time.Duration {
	return min(session/3, 3*time.Second)
}

func (o ReaderOptions) session() time.Duration {
	if o.SessionTimeout <= 0 {
		return DefaultSessionTimeout
	}
	return o.SessionTimeout
}

// NewReader returns a consumer group reader with synchronous commits (CommitInterval 0,
// K11), FirstOffset for partitions without a committed offset (K13), and partition
// watching so new partitions are consumed (K14). Callers must use FetchMessage and
// CommitMessages, never ReadMessage (K10).
func NewReader(brokers []string, topic string, o ReaderOptions) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:                brokers,
		GroupID:                o.GroupID,
		Topic:                  topic,
		MinBytes:               o.MinBytes,
		MaxBytes:               o.MaxBytes,
		MaxWait:                o.MaxWait,
		CommitInterval:         0,
		StartOffset:            kafka.FirstOffset,
		WatchPartitionChanges:  true,
		PartitionWatchInterval: 5 * time.Second,
		HeartbeatInterval:      heartbeat(o.session()),
		SessionTimeout:         o.session(),
		RebalanceTimeout:       30 * time.Second,
		ReadBackoffMin:         100 * time.Millisecond,
		ReadBackoffMax:         1 * time.Second,
		QueueCapacity:          1000,
	})
}

// Topic describes a topic PulseBoard needs.
type Topic struct {
	Name       string
	Partitions int
}

// EnsureTopics creates the topics that do not exist yet and waits until every partition
// of every topic has a leader: a real broker creates topics asynchronously, and a
// producer or reader that starts before the leaders are elected gets
// NOT_LEADER_OR_FOLLOWER or UNKNOWN_TOPIC_OR_PARTITION. New topics get replication factor
// 3 and min.insync.replicas 2 when the cluster has three brokers or more (with acks=all,
// an acknowledged event is then on two replicas at least), else 1; on a managed cluster
// create them beforehand the same way.
func EnsureTopics(ctx context.Context, brokers []string, topics ...Topic) error {
	if len(brokers) == 0 {
		return errors.New("no Kafka brokers configured")
	}
	var d kafka.Dialer
	d.Timeout = 5 * time.Second
	// Any broker will do: the first of the list may be the one that is down.
	var conn *kafka.Conn
	var err error
	for _, b := range brokers {
		if conn, err = d.DialContext(ctx, "tcp", b); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("connecting to Kafka at %s: %w", strings.Join(brokers, ","), err)
	}
	defer conn.Close()
	setDeadline := func() {
		dl := time.Now().Add(10 * time.Second)
		if ctxDL, ok := ctx.Deadline(); ok && ctxDL.Before(dl) {
			dl = ctxDL
		}
		_ = conn.SetDeadline(dl)
	}
	setDeadline()
	existing := map[string]bool{}
	parts, err := conn.ReadPartitions()
	if err != nil {
		return fmt.Errorf("reading Kafka metadata: %w", err)
	}
	for _, p := range parts {
		existing[p.Topic] = true
	}
	brokerList, err := conn.Brokers()
	if err != nil {
		return fmt.Errorf("listing Kafka brokers: %w", err)
	}
	rf := 3
	var configs []kafka.ConfigEntry
	if len(brokerList) < 3 {
		rf = 1
	} else {
		configs = []kafka.ConfigEntry{{ConfigName: "min.insync.replicas", ConfigValue: "2"}}
	}
	var missing []kafka.TopicConfig
	for _, t := range topics {
		if !existing[t.Name] {
			missing = append(missing, kafka.TopicConfig{Topic: t.Name, NumPartitions: t.Partitions, ReplicationFactor: rf, ConfigEntries: configs})
		}
	}
	if len(missing) > 0 {
		controller, err := conn.Controller()
		if err != nil {
			return fmt.Errorf("finding the Kafka controller: %w", err)
		}
		cc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(controller.Host, strconv.Itoa(controller.Port)))
		if err != nil {
			return fmt.Errorf("connecting to the Kafka controller: %w", err)
		}
		defer cc.Close()
		_ = cc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := cc.CreateTopics(missing...); err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("creating topics: %w", err)
		}
	}
	// Ready when the metadata names a leader for every partition and each leader answers
	// for its partitions (a broker learns that it leads a partition a little after the
	// metadata says so).
	transport := &kafka.Transport{DialTimeout: 3 * time.Second, MetadataTTL: 100 * time.Millisecond}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: transport, Timeout: 5 * time.Second}
	for _, t := range topics {
		if existing[t.Name] {
			t.Partitions = 0 // as many as it has: an existing topic keeps its count
		}
		for {
			setDeadline()
			err := topicLed(conn, t)
			if err == nil {
				err = topicServed(ctx, client, t.Name)
			}
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("topic %s is not ready: %w", t.Name, err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// topicLed reports (as an error) why topic t does not yet have a leader for each of its
// partitions in the broker's metadata (and, when t.Partitions is set, why it does not
// have that many yet).
func topicLed(conn *kafka.Conn, t Topic) error {
	parts, err := conn.ReadPartitions(t.Name)
	if err != nil {
		return err
	}
	if len(parts) == 0 || (t.Partitions > 0 && len(parts) < t.Partitions) {
		return fmt.Errorf("%d of %d partitions known", len(parts), t.Partitions)
	}
	for _, p := range parts {
		if p.Error != nil {
			return fmt.Errorf("partition %d: %w", p.ID, p.Error)
		}
		if p.Leader.Host == "" {
			return fmt.Errorf("partition %d has no leader yet", p.ID)
		}
	}
	return nil
}

// topicServed reports (as an error) why a partition's leader does not yet answer a
// ListOffsets request for it.
func topicServed(ctx context.Context, client *kafka.Client, topic string) error {
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return err
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return t.Error
		}
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.FirstOffsetOf(p.ID))
		}
	}
	if len(reqs) == 0 {
		return fmt.Errorf("no partitions in metadata")
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return err
	}
	if len(offs.Topics[topic]) < len(reqs) {
		return fmt.Errorf("offsets of %d of %d partitions", len(offs.Topics[topic]), len(reqs))
	}
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			return fmt.Errorf("partition %d: %w", po.Partition, po.Error)
		}
	}
	return nil
}

// Ping checks that a broker answers a metadata request.
func Ping(ctx context.Context, brokers []string) error {
	if len(brokers) == 0 {
		return errors.New("no Kafka brokers configured")
	}
	var d kafka.Dialer
	d.Timeout = 2 * time.Second
	var last error
	for _, b := range brokers {
		conn, err := d.DialContext(ctx, "tcp", b)
		if err != nil {
			last = err
			continue
		}
		// Conn methods ignore ctx: bound the metadata round trip by ctx's deadline (or the
		// dial timeout), or a broker that accepts connections but never answers would
		// block every readiness probe forever.
		deadline := time.Now().Add(d.Timeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		_ = conn.SetDeadline(deadline)
		_, err = conn.Brokers()
		conn.Close()
		if err == nil {
			return nil
		}
		last = err
	}
	return fmt.Errorf("no Kafka broker answered: %w", last)
}
