package producer

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
)

// bulkOf is a call of n messages of about 64 KiB for key, tagged tag00, tag01, …
func bulkOf(key []byte, tag string, n int) []kafka.Message {
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: key, Value: []byte(fmt.Sprintf("%s%02d:%s", tag, i, strings.Repeat("a", 64<<10)))}
	}
	return msgs
}

// arrivals records when each produce request reached the scripted broker, and its size.
type arrivals struct {
	mu    sync.Mutex
	at    []time.Time
	bytes []int
}

func (a *arrivals) record(at time.Time, n int) {
	a.mu.Lock()
	a.at = append(a.at, at)
	a.bytes = append(a.bytes, n)
	a.mu.Unlock()
}

// A paced bulk call is released to the broker in batches of paceBatchBytes, each no
// earlier than its share of the call at the pace, and is acknowledged whole.
func TestPacedBulkCallIsReleasedAtItsPace(t *testing.T) {
	t.Parallel()
	arr := &arrivals{}
	b := &scriptedBroker{onProduce: arr.record}
	p := newScriptedProducer(t, b)
	msgs := bulkOf(keyFor(t, 0), "A", 32) // 2 MiB
	var size int64
	for i := range msgs {
		size += messageSize(&msgs[i])
	}
	const pace = 4 << 20 // 2 MiB over about half a second
	start := time.Now()
	require.NoError(t, p.ProducePaced(context.Background(), msgs, nil, pace))
	elapsed := time.Since(start)

	arr.mu.Lock()
	defer arr.mu.Unlock()
	require.GreaterOrEqual(t, len(arr.at), 8, "2 MiB in batches of %d bytes", paceBatchBytes)
	done := 0
	for i, at := range arr.at {
		require.LessOrEqual(t, arr.bytes[i], paceBatchBytes+(65<<10), "request %d holds one paced batch", i)
		due := time.Duration(float64(done) / pace * float64(time.Second))
		require.GreaterOrEqual(t, at.Sub(start), due-time.Millisecond, "request %d came before its share of the pace", i)
		done += arr.bytes[i]
	}
	last := arr.bytes[len(arr.bytes)-1]
	require.GreaterOrEqual(t, elapsed, time.Duration(float64(size-int64(last))/pace*float64(time.Second)))

	b.mu.Lock()
	defer b.mu.Unlock()
	require.Len(t, b.stored[0], len(msgs))
	for i, v := range b.stored[0] {
		require.True(t, strings.HasPrefix(v, fmt.Sprintf("A%02d:", i)), "in order")
	}
}

// A paced key holds back nobody else on its partition: another project's unpaced bulk
// call and a small call are acknowledged while the paced one is still being released,
// and every key keeps its order, the paced key's later small call included.
func TestPacedKeyHoldsNoOtherKeyOnItsPartition(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{}
	p := newScriptedProducer(t, b)
	keys := keysFor(t, 0, 3)
	paced, bulk, small := keys[0], keys[1], keys[2]

	pacedDone := make(chan error, 1)
	go func() { pacedDone <- p.ProducePaced(context.Background(), bulkOf(paced, "P", 32), nil, 1<<20) }() // about 2 s
	require.Eventually(t, func() bool { return b.arrived.Load() >= 1 }, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Produce(ctx, bulkOf(bulk, "B", 32), nil))
	require.NoError(t, p.Produce(ctx, []kafka.Message{{Key: small, Value: []byte("S0")}}, nil))
	var wg sync.WaitGroup
	produceAsync(t, p, &wg, paced, "P-after") // queued behind its own paced batches
	select {
	case err := <-pacedDone:
		t.Fatalf("the paced call finished before the others: %v", err)
	default:
	}
	require.NoError(t, <-pacedDone)
	wg.Wait()

	b.mu.Lock()
	defer b.mu.Unlock()
	var ps, bs []string
	for _, v := range b.stored[0] {
		switch v[0] {
		case 'P':
			ps = append(ps, v[:min(len(v), 7)])
		case 'B':
			bs = append(bs, v[:3])
		}
	}
	require.Len(t, ps, 33)
	for i := range 32 {
		require.Equal(t, fmt.Sprintf("P%02d:", i), ps[i][:4], "the paced key's order")
	}
	require.Equal(t, "P-after", ps[32], "a paced key's later call does not overtake its paced batches")
	require.Len(t, bs, 32)
	for i, v := range bs {
		require.Equal(t, fmt.Sprintf("B%02d", i), v, "the other bulk key's order")
	}
}

// A key's calls are paced one after the other, a call that would end past the bound is
// refused with the wait until it fits, and keys whose time has passed are forgotten.
func TestPacerChainsAKeysCallsAndBoundsItsBacklog(t *testing.T) {
	t.Parallel()
	var pc pacer
	now := time.Unix(1000, 0)
	const pace = 1 << 20
	start, _, ok := pc.schedule([]byte("a"), 1<<20, pace, now, 2*time.Second)
	require.True(t, ok)
	require.Equal(t, now, start, "an idle key starts now")
	start, _, ok = pc.schedule([]byte("a"), 1<<19, pace, now, 2*time.Second)
	require.True(t, ok)
	require.Equal(t, now.Add(time.Second), start, "the next call starts where the last one ends")
	start, _, ok = pc.schedule([]byte("b"), 1<<20, pace, now, 2*time.Second)
	require.True(t, ok)
	require.Equal(t, now, start, "keys are paced apart")

	_, wait, ok := pc.schedule([]byte("a"), 1<<20, pace, now, 2*time.Second)
	require.False(t, ok, "1.5 s queued + 1 s is past the 2 s bound")
	require.Equal(t, 500*time.Millisecond, wait)
	start, _, ok = pc.schedule([]byte("a"), 1<<20, pace, now.Add(wait), 2*time.Second)
	require.True(t, ok, "it fits once the wait has passed")
	require.Equal(t, now.Add(1500*time.Millisecond), start)

	later := now.Add(time.Hour)
	for i := range sweepAt {
		_, _, ok := pc.schedule(fmt.Appendf(nil, "k%d", i), 1, pace, later, time.Second)
		require.True(t, ok)
	}
	pc.mu.Lock()
	_, keptA := pc.next["a"]
	pc.mu.Unlock()
	require.False(t, keptA, "a key whose time passed is swept")
}

// A paced call too far ahead of its key's schedule is refused at once as overloaded,
// having queued nothing.
func TestPacedCallPastTheBacklogBoundIsRefused(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{}
	p := newScriptedProducer(t, b)
	// 2 MiB at 512 KiB/s is 4 s of pacing, past half the 5 s produce timeout.
	err := p.ProducePaced(context.Background(), bulkOf(keyFor(t, 0), "A", 32), nil, 512<<10)
	require.ErrorIs(t, err, ErrOverloaded)
	require.Equal(t, 1.0, testutil.ToFloat64(p.errors.WithLabelValues("overloaded")), "counted as overloaded")
	require.Zero(t, b.arrived.Load(), "nothing was sent")
	require.Zero(t, p.inflight.Load(), "no byte stays counted")
}

// Close sends what is queued without waiting for its pace: a paced call is acknowledged
// whole long before its schedule would have ended.
func TestCloseSendsPacedBatchesAtOnce(t *testing.T) {
	t.Parallel()
	b := &scriptedBroker{}
	p := newScriptedProducer(t, b)
	msgs := bulkOf(keyFor(t, 0), "A", 32)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.ProducePaced(context.Background(), msgs, nil, 1<<20) }() // about 2 s
	require.Eventually(t, func() bool { return b.arrived.Load() >= 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, p.Close())
	require.NoError(t, <-done)
	require.Less(t, time.Since(start), time.Second, "Close waited for the pace")
	b.mu.Lock()
	defer b.mu.Unlock()
	require.Len(t, b.stored[0], len(msgs))
}
