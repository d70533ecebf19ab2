package producer

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

// scriptedBroker is a kafka-go RoundTripper standing in for a broker: one topic of two
// partitions led by broker 1, and produce answers that fail chosen partitions.
type scriptedBroker struct {
	mu       sync.Mutex
	topic    string
	failReq  int // the produce request (1-based) that fails failPart
	failPart int32
	requests [][]int32 // partitions of each produce request, in order
	stored   map[int32][]string
	release  chan struct{}  // when set, produce requests wait for it
	holdOnly map[int32]bool // when set, only requests with one of these partitions wait
	arrived  atomic.Int32   // produce requests received
	// onProduce, when set, is told of each produce request: when it arrived and the
	// bytes of the values it held.
	onProduce func(at time.Time, valueBytes int)
}

func (b *scriptedBroker) RoundTrip(ctx context.Context, _ net.Addr, req protocol.Message) (protocol.Message, error) {
	switch r := req.(type) {
	case *metadataAPI.Request:
		return &metadataAPI.Response{Topics: []metadataAPI.ResponseTopic{{Name: b.topic, Partitions: []metadataAPI.ResponsePartition{
			{PartitionIndex: 0, LeaderID: 1}, {PartitionIndex: 1, LeaderID: 1},
		}}}}, nil
	case *produceAPI.Request:
		arrivedAt := time.Now()
		b.arrived.Add(1)
		held := b.holdOnly == nil
		for _, p := range r.Topics[0].Partitions {
			held = held || b.holdOnly[p.Partition]
		}
		if b.release != nil && held {
			select {
			case <-b.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		var parts []int32
		var valueBytes int
		n := len(b.requests) + 1
		res := &produceAPI.Response{Topics: []produceAPI.ResponseTopic{{Topic: b.topic}}}
		for _, p := range r.Topics[0].Partitions {
			parts = append(parts, p.Partition)
			rp := produceAPI.ResponsePartition{Partition: p.Partition}
			if n == b.failReq && p.Partition == b.failPart {
				rp.ErrorCode = int16(kafka.NotLeaderForPartition)
			} else {
				rr := p.RecordSet.Records
				for {
					rec, err := rr.ReadRecord()
					if err == io.EOF {
						break
					}
					if err != nil {
						return nil, err
					}
					v, _ := io.ReadAll(rec.Value)
					valueBytes += len(v)
					b.stored[p.Partition] = append(b.stored[p.Partition], string(v))
				}
			}
			res.Topics[0].Partitions = append(res.Topics[0].Partitions, rp)
		}
		b.requests = append(b.requests, parts)
		if b.onProduce != nil {
			b.onProduce(arrivedAt, valueBytes)
		}
		return res, nil
	}
	panic("unexpected request")
}

// keyFor returns a key that the murmur2 balancer puts on partition p of 2.
func keyFor(t *testing.T, p int) []byte {
	for i := range 100 {
		k := []byte{byte('a' + i)}
		if (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: k}, 0, 1) == p {
			return k
		}
	}
	t.Fatal("no key")
	return nil
}

func newScriptedProducer(t *testing.T, b *scriptedBroker) *Producer {
	t.Helper()
	o := kafkax.DefaultWriterOptions()
	p, err := New(Options{Brokers: []string{"127.0.0.1:1"}, Topic: "events", Writer: o}, prometheus.NewRegistry())
	require.NoError(t, err)
	p.backoffMin, p.backoffMax = time.Millisecond, 5*time.Millisecond
	b.topic = p.topic
	b.stored = map[int32][]string{}
	p.w.Transport = b
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// TestOneRequestPerLeader: batches of partitions led by one broker that are ready at the
// same time (every lane to the broker busy) share one produce request, and a partition
// that failed in it is retried alone (the one that succeeded is not sent twice), before
// anything queued after it.
func TestOneRequestPerLeader(t *testing.T) {
	t.Parallel()
	// The second request fails partition 0.
	b := &scriptedBroker{failReq: 2, failPart: 0, release: make(chan struct{})}
	p := newScriptedProducer(t, b)
	p.requestsPerBroker = 1
	k0, k1 := keyFor(t, 0), keyFor(t, 1)

	// The first request (partition 0 alone) is held by the broker; meanwhile both
	// partitions get messages, which must travel together in the next request.
	var wg sync.WaitGroup
	produce := func(key []byte, v string) { produceAsync(t, p, &wg, key, v) }
	produce(k0, "a0")
	require.Eventually(t, func() bool { return b.arrived.Load() == 1 }, 5*time.Second, time.Millisecond)
	produce(k0, "a1")
	produce(k1, "b0")
	require.Eventually(t, func() bool { return p.open.Load() == 3 }, 5*time.Second, time.Millisecond)
	close(b.release)
	wg.Wait()
	produce(k0, "a2")
	wg.Wait()

	b.mu.Lock()
	defer b.mu.Unlock()
	require.Equal(t, [][]int32{{0}, {0, 1}, {0}, {0}}, sortEach(b.requests), "requests and their partitions")
	require.Equal(t, []string{"a0", "a1", "a2"}, b.stored[0], "partition 0 in order, once each")
	require.Equal(t, []string{"b0"}, b.stored[1])
	require.Zero(t, p.inflight.Load())
}

// TestRequestBytesBounded: partitions that would take a request past its byte bound wait
// for the next request (one partition's batch always goes).
func TestRequestBytesBounded(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{release: make(chan struct{})}
	p := newScriptedProducer(t, b)
	p.maxRequestBytes = 100
	p.requestsPerBroker = 1 // the later batches wait for the first request together
	k0, k1 := keyFor(t, 0), keyFor(t, 1)
	var wg sync.WaitGroup
	produce := func(key []byte, v string) { produceAsync(t, p, &wg, key, v) }
	produce(k0, "a0")
	require.Eventually(t, func() bool { return b.arrived.Load() == 1 }, 5*time.Second, time.Millisecond)
	produce(k1, strings.Repeat("b", 60))
	produce(k0, strings.Repeat("a", 60))
	require.Eventually(t, func() bool { return p.open.Load() == 3 }, 5*time.Second, time.Millisecond)
	close(b.release)
	wg.Wait()

	b.mu.Lock()
	defer b.mu.Unlock()
	require.Len(t, b.requests, 3, "a0, then the two 60-byte batches in separate requests: %v", b.requests)
	require.Equal(t, []int32{0}, b.requests[0])
	require.Len(t, b.requests[1], 1)
	require.Len(t, b.requests[2], 1)
	require.NotEqual(t, b.requests[1], b.requests[2])
	require.Len(t, b.stored[0], 2)
	require.Len(t, b.stored[1], 1)
}

// TestSmallBatchNotBehindBigRequest (issue 16 item 4): while one partition's big batch
// is out to the broker, another partition's messages travel in a request of their own
// (another lane) and are acknowledged; a big body is split into batches of at most
// maxBatchBytes that go one after the other, in order.
func TestSmallBatchNotBehindBigRequest(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{release: make(chan struct{}), holdOnly: map[int32]bool{0: true}}
	p := newScriptedProducer(t, b)
	require.Equal(t, defaultRequestsPerBroker, p.requestsPerBroker)
	k0, k1 := keyFor(t, 0), keyFor(t, 1)

	// Partition 0: 3 MiB in one call (a flooder's batch), held by the broker.
	big := make([]kafka.Message, 48)
	for i := range big {
		big[i] = kafka.Message{Key: k0, Value: []byte(fmt.Sprintf("%02d:%s", i, strings.Repeat("a", 64<<10)))}
	}
	bigDone := make(chan error, 1)
	go func() { bigDone <- p.Produce(context.Background(), big, nil) }()
	require.Eventually(t, func() bool { return b.arrived.Load() == 1 }, 5*time.Second, time.Millisecond)

	// Partition 1's single event is acknowledged while partition 0 is held.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Produce(ctx, []kafka.Message{{Key: k1, Value: []byte("b0")}}, nil))
	select {
	case err := <-bigDone:
		t.Fatalf("the big batch finished while held: %v", err)
	default:
	}
	close(b.release)
	require.NoError(t, <-bigDone)

	b.mu.Lock()
	defer b.mu.Unlock()
	require.Equal(t, []string{"b0"}, b.stored[1])
	require.Len(t, b.stored[0], len(big))
	for i, v := range b.stored[0] {
		require.True(t, strings.HasPrefix(v, fmt.Sprintf("%02d:", i)), "partition 0 in order")
	}
	var zeros int
	for _, r := range b.requests {
		require.Len(t, r, 1, "no request mixes the big batch with another partition: %v", b.requests)
		if r[0] == 0 {
			zeros++
		}
	}
	require.GreaterOrEqual(t, zeros, 3, "3 MiB went as batches of at most %d bytes", maxBatchBytes)
}

// keysFor returns n distinct keys that Murmur2 puts in partition p of 2.
func keysFor(t *testing.T, p, n int) [][]byte {
	var keys [][]byte
	for i := 0; i < 1000 && len(keys) < n; i++ {
		k := []byte(fmt.Sprintf("project-%d", i))
		if (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: k}, 0, 1) == p {
			keys = append(keys, k)
		}
	}
	require.Len(t, keys, n)
	return keys
}

// Projects share partitions. A project's 3 MiB body is queued as several batches of one
// partition that go one after the other; another project's single event for the same
// partition waits for the batch in flight only, not for the whole body, and every
// project's events keep their order: a small call of the flooding project itself still
// queues after its big one (issue 16 item 4).
func TestSmallCallOvertakesAnotherProjectsBulkOnItsPartition(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{release: make(chan struct{})}
	p := newScriptedProducer(t, b)
	keys := keysFor(t, 0, 3)
	flooder, neighbour, third := keys[0], keys[1], keys[2]

	big := make([]kafka.Message, 48)
	for i := range big {
		big[i] = kafka.Message{Key: flooder, Value: []byte(fmt.Sprintf("A%02d:%s", i, strings.Repeat("a", 64<<10)))}
	}
	bigDone := make(chan error, 1)
	go func() { bigDone <- p.Produce(context.Background(), big, nil) }()
	// The first batch of the body is in flight, held by the broker; the rest is queued.
	require.Eventually(t, func() bool { return b.arrived.Load() == 1 }, 5*time.Second, time.Millisecond)

	// queued counts the messages waiting in partition 0's queue (nothing more is sent
	// while its first batch is held).
	q := p.queue(0)
	queued := func() int {
		q.mu.Lock()
		defer q.mu.Unlock()
		n := 0
		for _, b := range q.batches {
			n += len(b.msgs)
		}
		return n
	}
	require.Eventually(t, func() bool { return queued() > 0 }, 5*time.Second, time.Millisecond)
	body := queued()
	var wg sync.WaitGroup
	produceAsync(t, p, &wg, neighbour, "B0")
	produceAsync(t, p, &wg, third, "C0")
	require.Eventually(t, func() bool { return queued() == body+2 }, 5*time.Second, time.Millisecond)
	produceAsync(t, p, &wg, flooder, "A-after")
	require.Eventually(t, func() bool { return queued() == body+3 }, 5*time.Second, time.Millisecond)
	produceAsync(t, p, &wg, neighbour, "B1")
	require.Eventually(t, func() bool { return queued() == body+4 }, 5*time.Second, time.Millisecond)
	close(b.release)
	wg.Wait()
	require.NoError(t, <-bigDone)

	b.mu.Lock()
	defer b.mu.Unlock()
	got := b.stored[0]
	require.Len(t, got, len(big)+4)
	pos := map[string]int{}
	var flooded []string
	for i, v := range got {
		pos[v[:min(len(v), 7)]] = i
		if v[0] == 'A' {
			flooded = append(flooded, v[:min(len(v), 7)])
		}
	}
	firstBatch := len(big) - body // the body's messages in the batch that was in flight
	require.Less(t, pos["B0"], firstBatch+2, "the neighbour's event went right after the batch in flight: %v", pos)
	require.Less(t, pos["C0"], firstBatch+2, "so did the third project's (in the same batch): %v", pos)
	require.Less(t, pos["B0"], pos["B1"], "a project's events keep their order")
	for i := range big {
		require.Equal(t, fmt.Sprintf("A%02d:", i), flooded[i][:4], "the flooder's body in order")
	}
	require.Equal(t, "A-after", flooded[len(flooded)-1], "the flooder's next call queues after its body")
}

// produceAsync produces one message in a goroutine of wg.
func produceAsync(t *testing.T, p *Producer, wg *sync.WaitGroup, key []byte, v string) {
	wg.Go(func() {
		if err := p.Produce(context.Background(), []kafka.Message{{Key: key, Value: []byte(v)}}, nil); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	})
}

// TestFreeOnceNothingHoldsTheMessages: Produce's free runs exactly once when the
// messages' batches completed (here before Produce returns) and when they were refused
// without being queued; never while a batch still holds them.
func TestFreeOnceNothingHoldsTheMessages(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{release: make(chan struct{})}
	p := newScriptedProducer(t, b)
	var freed atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- p.Produce(context.Background(), []kafka.Message{{Key: []byte("k"), Value: []byte("v")}, {Key: []byte("j"), Value: []byte("w")}}, func() { freed.Add(1) })
	}()
	require.Eventually(t, func() bool { return b.arrived.Load() == 1 }, 5*time.Second, time.Millisecond)
	require.Zero(t, freed.Load(), "the broker holds the batch")
	close(b.release)
	require.NoError(t, <-done)
	require.EqualValues(t, 1, freed.Load())

	p.maxBytes = 1 // nothing fits: refused before queueing
	err := p.Produce(context.Background(), []kafka.Message{{Key: []byte("k"), Value: []byte("v")}}, func() { freed.Add(1) })
	require.ErrorIs(t, err, ErrOverloaded)
	require.EqualValues(t, 2, freed.Load())
}

func sortEach(rs [][]int32) [][]int32 {
	out := make([][]int32, len(rs))
	for i, r := range rs {
		out[i] = append([]int32(nil), r...)
		for a := 1; a < len(out[i]); a++ {
			for c := a; c > 0 && out[i][c] < out[i][c-1]; c-- {
				out[i][c], out[i][c-1] = out[i][c-1], out[i][c]
			}
		}
	}
	return out
}

// TestCoarseDeadlines: a deadline channel never closes early, closes within a granule
// (plus scheduling), and waits sharing a granule share a channel.
func TestCoarseDeadlines(t *testing.T) {
	t.Parallel()
	var c coarseDeadlines
	now := time.Now()
	a, b := c.after(now, 30*time.Millisecond), c.after(now, 30*time.Millisecond)
	require.Equal(t, a, b)
	<-a
	require.GreaterOrEqual(t, time.Since(now), 30*time.Millisecond)
	c.mu.Lock()
	require.Empty(t, c.m, "closed granules are forgotten")
	c.mu.Unlock()
}
