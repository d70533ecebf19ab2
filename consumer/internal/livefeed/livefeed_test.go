package livefeed

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

type tally struct {
	mu      sync.Mutex
	done    int
	failed  int
	dropped int
}

func (c *tally) opts(maxPending int64) Options {
	return Options{
		Timeout:         2 * time.Second,
		MaxPendingBytes: maxPending,
		OnDone: func(items []Item, failed int, _ error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.done += len(items)
			c.failed += failed
		},
		OnDropped: func(n int) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.dropped += n
		},
	}
}

func (c *tally) get() (done, failed, dropped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done, c.failed, c.dropped
}

// Batches are published in the order they were handed over, items in batch order, and
// Close drains the queue.
func TestPublishesInOrderAndDrainsOnClose(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	ch := "livefeed-test:" + uuid.NewString()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ps := rdb.Subscribe(ctx, ch)
	defer ps.Close()
	_, err := ps.Receive(ctx)
	require.NoError(t, err)
	msgs := ps.Channel(redis.WithChannelSize(1000))

	var c tally
	p := New(rdb, discard, c.opts(1<<20))
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	n := 0
	for range 10 {
		batch := make([]Item, 20)
		for i := range batch {
			batch[i] = Item{Channel: ch, Payload: []byte(strconv.Itoa(n)), ReceivedAt: time.Now()}
			n++
		}
		require.True(t, p.Publish(batch))
	}
	p.Close()
	<-done
	for i := range n {
		select {
		case m := <-msgs:
			require.Equal(t, strconv.Itoa(i), m.Payload)
		case <-ctx.Done():
			t.Fatalf("received %d of %d", i, n)
		}
	}
	d, f, dr := c.get()
	require.Equal(t, n, d)
	require.Zero(t, f)
	require.Zero(t, dr)
}

// A full queue drops the batch instead of blocking, and counts it.
func TestFullQueueDropsWithoutBlocking(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	var c tally
	p := New(rdb, discard, c.opts(100))
	// Run is not started: nothing drains the queue.
	require.True(t, p.Publish([]Item{{Channel: "c", Payload: make([]byte, 60)}}))
	require.False(t, p.Publish([]Item{{Channel: "c", Payload: make([]byte, 60)}, {Channel: "c", Payload: nil}}))
	_, _, dropped := c.get()
	require.Equal(t, 2, dropped)

	// Stopping with items queued drops (and counts) them.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Run(ctx)
	_, _, dropped = c.get()
	require.Equal(t, 3, dropped)
}

// A Redis that does not answer makes the pipeline fail, counted, within the timeout.
func TestRedisDownIsCountedNotRetried(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer rdb.Close()
	var c tally
	p := New(rdb, discard, c.opts(1<<20))
	done := make(chan struct{})
	go func() { defer close(done); p.Run(context.Background()) }()
	require.True(t, p.Publish([]Item{{Channel: "c", Payload: []byte("1")}, {Channel: "c", Payload: []byte("2")}}))
	p.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the publisher did not give up")
	}
	d, f, _ := c.get()
	require.Equal(t, 2, d)
	require.Equal(t, 2, f)
}
