// Package producer is the ingestor's only way into Kafka: kafka-go produce requests with
// acks from all in-sync replicas, batched by group commit (see batcher.go: concurrent
// requests share a partition's next produce request, which is sent as soon as the
// previous one is acknowledged), a deadline per request, and a bound on the bytes waiting
// for the broker.
//
// The bound is the subtle part. A batch is retried after the caller's context has ended
// (docs/reliability.md K3/K4, as kafka-go's Writer does), so bytes are not free when Produce
// returns with an error; they are free when the batch's final outcome is known. Each
// request's messages carry a ticket in Message.WriterData that the completion releases.
// A request whose messages never reached a batch is released at once, and every ticket
// also expires after the longest time a message can be held (a safety net).
package producer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/failpoint"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

// ErrOverloaded means the in-flight byte budget is exhausted: shed with 503.
var ErrOverloaded = errors.New("too many bytes waiting for the broker")

// ErrUnavailable means the broker did not acknowledge within the deadline (or failed):
// answer 503 and let the client retry with the same event ids.
var ErrUnavailable = errors.New("the broker did not acknowledge the events")

// Options configure a Producer.
type Options struct {
	Brokers          []string
	Topic            string
	Writer           kafkax.WriterOptions
	Timeout          time.Duration // per request, default 5 s
	MaxInflightBytes int64         // default 64 MiB
}

// Producer writes events and waits for acks=all.
type Producer struct {
	// w is kafkax's Writer, used as the configuration (acks=all, partitioner, limits,
	// retries) and for its Transport; its own batching is not used (batcher.go).
	w               *kafka.Writer
	topic           string
	batchSize       int
	batchBytes      int64
	maxRequestBytes int64
	// requestsPerBroker bounds the produce requests in flight to one broker.
	requestsPerBroker int
	writeTimeout      time.Duration
	maxAttempts       int
	backoffMin        time.Duration
	backoffMax        time.Duration
	timeout           time.Duration
	maxBytes          int64
	maxHold           time.Duration
	inflight          atomic.Int64
	shedding          atomic.Bool // a request was shed since the in-flight bytes were last low

	mu         sync.Mutex // guards closed and growing queues
	closed     bool
	queues     atomic.Pointer[[]*partitionQueue] // by partition
	pending    sync.WaitGroup                    // batches without a final outcome
	open       atomic.Int64                      // their number
	rmu        sync.Mutex                        // guards ready, retries, requests
	ready      []*partitionQueue                 // partitions that may have a batch to send
	retries    []flight                          // batches to send again (or that waited for their leader)
	requests   map[int32]int                     // produce requests in flight, by leader
	kick       chan struct{}                     // wakes the dispatcher
	stop       chan struct{}                     // closed once every batch completed (Close)
	dispatched chan struct{}                     // closed when the dispatcher returned
	meta       atomic.Pointer[topicMeta]
	partitions atomic.Pointer[[]int]
	msgPool    sync.Pool // *[]kafka.Message
	deadlines  coarseDeadlines
	pacer      pacer // paced keys' next release times (pace.go)
	// maxPaceWait bounds how far ahead a key's paced writes may be scheduled: half the
	// produce timeout, so a paced call is acknowledged well before its deadline.
	maxPaceWait time.Duration
	draining    atomic.Bool // Close: paced batches go without waiting for their time

	ackLatency  prometheus.Histogram
	errors      *prometheus.CounterVec
	inflightG   prometheus.GaugeFunc
	batchEvents prometheus.Histogram
}

// New builds the producer and registers its metrics.
func New(o Options, reg prometheus.Registerer) (*Producer, error) {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxInflightBytes <= 0 {
		o.MaxInflightBytes = 64 << 20
	}
	p := &Producer{timeout: o.Timeout, maxBytes: o.MaxInflightBytes, maxHold: o.Writer.MaxHold(), maxPaceWait: o.Timeout / 2,
		requests: map[int32]int{}, kick: make(chan struct{}, 1), stop: make(chan struct{}), dispatched: make(chan struct{})}
	w, err := kafkax.NewWriter(o.Brokers, o.Topic, o.Writer)
	if err != nil {
		return nil, err
	}
	if w.BatchSize <= 0 || w.BatchBytes <= 0 || w.MaxAttempts <= 0 || w.WriteTimeout <= 0 || w.Balancer == nil {
		return nil, errors.New("producer: the writer options must set BatchSize, BatchBytes, MaxAttempts and WriteTimeout")
	}
	w.RequiredAcks = unsafeAcks(w.RequiredAcks)
	p.w = w
	p.topic = w.Topic
	p.batchSize, p.batchBytes = w.BatchSize, w.BatchBytes
	// A record batch larger than the topic's max.message.bytes is refused for good
	// (MESSAGE_TOO_LARGE); where the limit cannot be read, assume Kafka's default.
	limit, err := topicMaxMessageBytes(o.Brokers, o.Topic, o.Timeout)
	if err != nil || limit <= 0 {
		limit = defaultMaxMessageBytes
	}
	p.batchBytes = min(maxBatchBytes, fitBatchBytes(p.batchBytes, p.batchSize, limit))
	p.maxRequestBytes = max(maxRequestBytes, p.batchBytes)
	p.requestsPerBroker = defaultRequestsPerBroker
	p.writeTimeout, p.maxAttempts = w.WriteTimeout, w.MaxAttempts
	p.backoffMin, p.backoffMax = max(w.WriteBackoffMin, time.Millisecond), max(w.WriteBackoffMax, w.WriteBackoffMin)
	go p.dispatch()
	f := promauto.With(reg)
	p.ackLatency = f.NewHistogram(prometheus.HistogramOpts{
		Name:    "pulseboard_ingest_produce_ack_seconds",
		Help:    "Time from handing events to the Kafka writer until acks=all (or failure), per request.",
		Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	p.errors = f.NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_ingest_produce_errors_total",
		Help: "Requests whose events the broker did not acknowledge, by reason (timeout, broker, overloaded).",
	}, []string{"reason"})
	// Export zeros from the start: a series that appears with its first error hides that
	// error from rate() and increase(), and alerts on it see nothing.
	for _, reason := range []string{"timeout", "broker", "overloaded"} {
		p.errors.WithLabelValues(reason)
	}
	p.batchEvents = f.NewHistogram(prometheus.HistogramOpts{
		Name:    "pulseboard_ingest_produce_batch_events",
		Help:    "Events per Kafka produce batch as completed by the writer.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 8),
	})
	p.inflightG = f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_ingest_inflight_bytes",
		Help: "Bytes handed to the Kafka writer and not yet acknowledged or failed.",
	}, func() float64 { return float64(p.inflight.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_ingest_inflight_bytes_limit",
		Help: "The in-flight byte budget; past it ingest answers 503.",
	}, func() float64 { return float64(p.maxBytes) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_ingest_batch_bytes_limit",
		Help: "The largest record batch the producer builds: its writer setting, capped to fit the topic's max.message.bytes.",
	}, func() float64 { return float64(p.batchBytes) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_ingest_writer_required_acks",
		Help: "The producer's RequiredAcks (-1 = all in-sync replicas); anything else breaks durability.",
	}, func() float64 { return float64(p.w.RequiredAcks) })
	return p, nil
}

type ticket struct {
	p         *Producer
	bytes     int64
	remaining atomic.Int32
	released  atomic.Bool
	free      func() // Produce's free: called once no batch holds any of the messages
}

func (t *ticket) release() {
	if t.released.CompareAndSwap(false, true) {
		t.p.inflight.Add(-t.bytes)
	}
}

// complete reports the final outcome of a batch. It runs on the goroutine of a produce
// request, so it must not panic or block.
func (p *Producer) complete(msgs []kafka.Message, _ error) {
	p.batchEvents.Observe(float64(len(msgs)))
	for i := range msgs {
		t, ok := msgs[i].WriterData.(*ticket)
		if !ok {
			continue
		}
		if t.remaining.Add(-1) == 0 {
			t.release()
			t.free()
		}
	}
}

// Overloaded reports whether the producer is shedding (readiness). The budget is rarely
// exactly full: requests are shed once the next one does not fit. So a shed request
// keeps this true until the in-flight bytes have drained below half the budget.
func (p *Producer) Overloaded() bool {
	n := p.inflight.Load()
	if n >= p.maxBytes {
		return true
	}
	if p.shedding.Load() {
		if n > p.maxBytes/2 {
			return true
		}
		p.shedding.Store(false)
	}
	return false
}

// Produce writes msgs and returns once every one is acknowledged by all in-sync replicas.
// The messages' Key and Value must not alias request buffers (fasthttp reuses them): the
// producer may hold them after Produce returns (a batch is retried after the caller's
// deadline). free, when not nil, is called once no batch holds any of them any more, so
// their memory can be reused; it is not called when that moment is unknown (a message
// that never got a final outcome, or one refused after others were queued), and the
// memory is then left to the garbage collector.
func (p *Producer) Produce(ctx context.Context, msgs []kafka.Message, free func()) error {
	return p.ProducePaced(ctx, msgs, free, 0)
}

// ProducePaced is Produce for a call whose key's bulk writes are paced at pace bytes/s
// (0: not paced). Only a call of a single key that fills more than a batch (a big request
// body) is paced: pace.go says why and how. It returns ErrOverloaded, having queued
// nothing, when the key's paced writes are already scheduled too far ahead.
func (p *Producer) ProducePaced(ctx context.Context, msgs []kafka.Message, free func(), pace float64) error {
	var size int64
	for i := range msgs {
		size += int64(len(msgs[i].Key) + len(msgs[i].Value))
	}
	if free == nil {
		free = func() {}
	}
	if p.inflight.Add(size) > p.maxBytes {
		p.inflight.Add(-size)
		p.shedding.Store(true)
		p.errors.WithLabelValues("overloaded").Inc()
		free()
		return ErrOverloaded
	}
	t := &ticket{p: p, bytes: size, free: free}
	t.remaining.Store(int32(len(msgs)))
	for i := range msgs {
		msgs[i].WriterData = t
	}
	start := time.Now()
	enqueued, err := p.send(ctx, p.deadlines.after(start, p.timeout), msgs, pace)
	p.ackLatency.Observe(time.Since(start).Seconds())
	if !enqueued {
		t.release() // no batch holds these messages: nothing will complete them
		free()
	}
	if err == nil {
		t.release() // normally already released by Completion
		// Fault tests: Kafka holds the events, the client has no answer yet.
		failpoint.Hit("ingestor/after-produce-ack")
		return nil
	}
	// A batch may still hold (and even deliver) the messages: keep their bytes counted
	// until its completion, or until the longest a message can be held.
	// (release is idempotent, so a late timer is harmless).
	if !t.released.Load() {
		time.AfterFunc(p.maxHold, t.release)
	}
	reason := "broker"
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		reason = "timeout"
	case errors.Is(err, ErrOverloaded): // a paced key's backlog (pace.go)
		reason = "overloaded"
	}
	p.errors.WithLabelValues(reason).Inc()
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Close writes what is queued, waits for it, and closes the connections. Call it after
// the HTTP server stopped accepting. kafka-go's Writer.Close leaves an explicit
// Transport's idle connections open, so they are closed here too.
func (p *Producer) Close() error {
	p.closeQueues()
	err := p.w.Close()
	if t, ok := p.w.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
	return err
}

// coarseDeadlines hands out channels that close at instants rounded up to a granule, one
// timer per granule however many requests share it. A context.WithTimeout per request
// (a timer armed and stopped each time) was 4 % of the ingestor's CPU at 40k requests/s;
// a deadline of seconds does not need nanoseconds.
type coarseDeadlines struct {
	mu sync.Mutex
	m  map[int64]chan struct{}
}

const deadlineGranule = 10 * time.Millisecond

// after returns a channel closed at now+d or up to a granule later.
func (c *coarseDeadlines) after(now time.Time, d time.Duration) <-chan struct{} {
	k := now.Add(d).UnixNano()/int64(deadlineGranule) + 1
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.m[k]; ok {
		return ch
	}
	if c.m == nil {
		c.m = make(map[int64]chan struct{})
	}
	ch := make(chan struct{})
	c.m[k] = ch
	time.AfterFunc(time.Until(time.Unix(0, k*int64(deadlineGranule))), func() {
		c.mu.Lock()
		delete(c.m, k)
		c.mu.Unlock()
		close(ch)
	})
	return ch
}

// recordBatchOverhead bounds what a record batch adds to its records' keys, values and
// headers: the batch header (61 bytes) and, per record, its length, attributes,
// timestamp and offset deltas, key, value and header lengths (varints, 32 bytes at most
// for the record sizes PulseBoard writes).
const (
	batchHeaderBytes  = 61
	recordHeaderBytes = 32
	// defaultMaxMessageBytes is Kafka's default message.max.bytes.
	defaultMaxMessageBytes = 1048588
)

// fitBatchBytes caps the bytes of keys, values and headers a batch may hold so that the
// encoded record batch stays within the topic's max.message.bytes: a real broker refuses
// a larger batch with MESSAGE_TOO_LARGE, which is final (Kafka's default is 1 MiB, less
// than the 4 MiB batches the writer is tuned for). A single event larger than that is
// still sent alone and refused by the broker.
func fitBatchBytes(batchBytes int64, batchSize int, limit int64) int64 {
	fit := limit - batchHeaderBytes - int64(batchSize)*recordHeaderBytes
	if fit < limit/2 { // many tiny records: cap by half the limit rather than nothing
		fit = limit / 2
	}
	return min(batchBytes, fit)
}

// topicMaxMessageBytes reads the topic's max.message.bytes (the broker default unless the
// topic overrides it).
func topicMaxMessageBytes(brokers []string, topic string, timeout time.Duration) (int64, error) {
	transport := &kafka.Transport{DialTimeout: 3 * time.Second}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: transport, Timeout: timeout}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"max.message.bytes"},
	}}})
	if err != nil {
		return 0, err
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			return 0, r.Error
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName == "max.message.bytes" {
				return strconv.ParseInt(e.ConfigValue, 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("topic %s: no max.message.bytes in the answer", topic)
}
