package producer

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

const testPartitions = 4

func newTestProducer(t *testing.T, o Options) (*Producer, *kafkatest.Cluster) {
	t.Helper()
	kc := kafkatest.New(t, testPartitions)
	o.Brokers, o.Topic = kc.Brokers, kc.Topic
	if o.Writer.BatchSize == 0 {
		o.Writer = kafkax.DefaultWriterOptions()
	}
	p, err := New(o, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p, kc
}

// TestEnqueueGroupsRequests: messages of requests that arrive while a partition's write
// is in flight join one open batch, which closes at BatchSize messages or BatchBytes.
// (The queue here has no flusher, so nothing is written.)
func TestEnqueueGroupsRequests(t *testing.T) {
	t.Parallel()
	p := &Producer{batchSize: 5, batchBytes: 100}
	q := &partitionQueue{p: p}
	msg := func(n int) kafka.Message { return kafka.Message{Key: []byte("k"), Value: make([]byte, n-1)} }

	w1, err := q.enqueue([]kafka.Message{msg(10), msg(10)}, nil, 0)
	require.NoError(t, err)
	w2, err := q.enqueue([]kafka.Message{msg(10)}, nil, 0)
	require.NoError(t, err)
	require.Len(t, q.batches, 1)
	require.Equal(t, w1, w2, "both requests wait for the same batch")
	require.Len(t, q.batches[0].msgs, 3)
	require.EqualValues(t, 30, q.batches[0].bytes)

	// Past BatchSize (5 messages) a request spans two batches and waits for both.
	w3, err := q.enqueue([]kafka.Message{msg(10), msg(10), msg(10), msg(10)}, nil, 0)
	require.NoError(t, err)
	require.Len(t, q.batches, 2)
	require.Equal(t, []*batch{q.batches[0], q.batches[1]}, w3)
	require.Len(t, q.batches[0].msgs, 5)
	require.Len(t, q.batches[1].msgs, 2)

	// Past BatchBytes (100) a new batch opens; a single message larger than the limit
	// still gets a batch of its own.
	w4, err := q.enqueue([]kafka.Message{msg(90), msg(150)}, nil, 0)
	require.NoError(t, err)
	require.Len(t, q.batches, 4)
	require.Equal(t, []*batch{q.batches[2], q.batches[3]}, w4)
	for i, want := range []int64{50, 20, 90, 150} {
		require.Equal(t, want, q.batches[i].bytes, "batch %d", i)
	}

	q.closed = true
	_, err = q.enqueue([]kafka.Message{msg(1)}, nil, 0)
	require.ErrorIs(t, err, errClosed)
}

// TestProduceOrderAndPartitions: concurrent callers, several keys per request and per
// partition; every message lands exactly once, on the murmur2 partition of its key, in
// each caller's order; and no in-flight byte stays counted.
func TestProduceOrderAndPartitions(t *testing.T) {
	t.Parallel()
	p, kc := newTestProducer(t, Options{})
	const callers, calls = 16, 30
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range calls {
				// Odd calls mix keys (several partitions in one request), even calls use
				// the caller's key only.
				var msgs []kafka.Message
				for j := range 1 + i%4 {
					key := fmt.Sprintf("key-%d", c)
					if i%2 == 1 {
						key = fmt.Sprintf("key-%d", (c+j)%callers)
					}
					msgs = append(msgs, kafka.Message{Key: []byte(key), Value: []byte(fmt.Sprintf("%d/%d/%d", c, i, j))})
				}
				if err := p.Produce(context.Background(), msgs, nil); err != nil {
					t.Errorf("caller %d call %d: %v", c, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	require.Zero(t, p.inflight.Load())

	got := readAll(t, kc)
	seen := map[string]bool{}
	last := map[string]string{} // per (caller, key): the last value seen, in offset order
	parts := []int{0, 1, 2, 3}
	for _, m := range got {
		require.False(t, seen[string(m.Value)], "duplicate %s", m.Value)
		seen[string(m.Value)] = true
		require.Equal(t, kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: m.Key}, parts...), m.Partition, "key %s", m.Key)
		var c, i, j int
		_, err := fmt.Sscanf(string(m.Value), "%d/%d/%d", &c, &i, &j)
		require.NoError(t, err)
		stream := fmt.Sprintf("%d %s", c, m.Key)
		if prev, ok := last[stream]; ok {
			var pi, pj int
			_, _ = fmt.Sscanf(prev, "%d/%d", &pi, &pj)
			require.True(t, pi < i || (pi == i && pj < j), "caller %d key %s: %s after %s", c, m.Key, m.Value, prev)
		}
		last[stream] = fmt.Sprintf("%d/%d", i, j)
	}
	want := 0
	for i := range calls {
		want += 1 + i%4
	}
	require.Len(t, seen, callers*want)
}

// TestProduceAfterClose: nothing is accepted after Close, and the refused bytes are not
// left counted (they never reached a batch, so no completion would release them).
func TestProduceAfterClose(t *testing.T) {
	t.Parallel()
	p, _ := newTestProducer(t, Options{})
	require.NoError(t, p.Produce(context.Background(), []kafka.Message{{Key: []byte("k"), Value: []byte("v")}}, nil))
	require.NoError(t, p.Close())
	err := p.Produce(context.Background(), []kafka.Message{{Key: []byte("k"), Value: []byte("v")}}, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	require.Zero(t, p.inflight.Load())
	require.NoError(t, p.Produce(context.Background(), nil, nil), "nothing to write")
}

// readAll reads every message of the topic, partition by partition in offset order.
func readAll(t *testing.T, kc *kafkatest.Cluster) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(kc.Brokers...)}
	reqs := make([]kafka.OffsetRequest, testPartitions)
	for p := range reqs {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{kc.Topic: reqs}})
	require.NoError(t, err)
	var all []kafka.Message
	for _, po := range res.Topics[kc.Topic] {
		require.NoError(t, po.Error)
		if po.LastOffset == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: kc.Brokers, Topic: kc.Topic, Partition: po.Partition, MaxWait: 50 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			require.NoError(t, err)
			all = append(all, m)
			if m.Offset >= po.LastOffset-1 {
				break
			}
		}
		require.NoError(t, r.Close())
	}
	return all
}

// TestBatchesFitTheTopicsMessageLimit: concurrent requests for one partition that add up
// to several MiB are written as record batches the broker accepts. A real Kafka broker
// refuses a batch over the topic's max.message.bytes (1 MiB by default) with
// MESSAGE_TOO_LARGE, for good; the writer is tuned for 4 MiB batches, so the producer
// must cap them by the topic's limit (the real-broker tier runs this against Kafka's
// defaults; the embedded broker allows 8 MiB). Batches are also capped at maxBatchBytes
// (fairness, batcher.go).
func TestBatchesFitTheTopicsMessageLimit(t *testing.T) {
	t.Parallel()
	p, kc := newTestProducer(t, Options{})
	require.LessOrEqual(t, p.batchBytes, int64(kafkax.DefaultWriterOptions().BatchBytes))
	require.LessOrEqual(t, p.batchBytes, int64(maxBatchBytes))
	if kc.Embedded != nil { // 8 MiB allowed: only the fairness cap applies
		require.Equal(t, int64(maxBatchBytes), p.batchBytes)
	} else { // Kafka's default 1 MiB message limit, less the batch's framing
		require.Less(t, p.batchBytes, int64(maxBatchBytes))
	}
	value := make([]byte, 60<<10) // the largest events the ingestor accepts are 64 KiB
	const requests, perRequest = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, requests)
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]kafka.Message, perRequest)
			for j := range msgs {
				msgs[j] = kafka.Message{Key: []byte("one-partition"), Value: append([]byte(fmt.Sprintf("%d-%d:", i, j)), value...)}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs <- p.Produce(ctx, msgs, nil)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, readAll(t, kc), requests*perRequest)
}

// TestFitBatchBytes: a batch's records plus framing fit the topic's max.message.bytes.
func TestFitBatchBytes(t *testing.T) {
	t.Parallel()
	require.Equal(t, int64(4<<20), fitBatchBytes(4<<20, 1000, 8<<20), "a roomy topic leaves the writer's size")
	got := fitBatchBytes(4<<20, 1000, defaultMaxMessageBytes)
	require.Equal(t, int64(defaultMaxMessageBytes-batchHeaderBytes-1000*recordHeaderBytes), got)
	require.Equal(t, int64(defaultMaxMessageBytes/2), fitBatchBytes(4<<20, 100_000, defaultMaxMessageBytes), "never below half the limit")
}
