package harness

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// LiveWatcher subscribes to the live-feed channels of the cluster's projects on its
// Redis, the way the api does, and collects the ids of the events published there.
type LiveWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	ids      map[uuid.UUID]int
	messages int
}

// WatchLive subscribes to every project's events channel; it stops when the test ends.
// go-redis resubscribes on its own after a Redis restart.
func (c *Cluster) WatchLive() *LiveWatcher {
	c.t.Helper()
	rdb := c.Redis.Client()
	chans := make([]string, 0, len(c.Projects))
	for _, p := range c.Projects {
		chans = append(chans, redisx.EventsChannel(p.ID))
	}
	ctx, cancel := context.WithCancel(context.Background())
	sub := rdb.Subscribe(ctx, chans...)
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if _, err := sub.Receive(sctx); err != nil { // the subscription confirmation
		cancel()
		c.t.Fatalf("harness: subscribing to the live feed: %v", err)
	}
	w := &LiveWatcher{cancel: cancel, done: make(chan struct{}), ids: map[uuid.UUID]int{}}
	go func() {
		defer close(w.done)
		defer rdb.Close()
		defer sub.Close()
		ch := sub.Channel(redis.WithChannelSize(100_000))
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				var ev struct {
					ID uuid.UUID `json:"id"`
				}
				w.mu.Lock()
				w.messages++
				if json.Unmarshal([]byte(m.Payload), &ev) == nil {
					w.ids[ev.ID]++
				}
				w.mu.Unlock()
			}
		}
	}()
	c.t.Cleanup(w.Stop)
	return w
}

// Stop unsubscribes (idempotent).
func (w *LiveWatcher) Stop() {
	w.cancel()
	<-w.done
}

// Messages returns how many messages arrived.
func (w *LiveWatcher) Messages() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.messages
}

// Coverage returns how many of ids were received at least once.
func (w *LiveWatcher) Coverage(ids []uuid.UUID) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, id := range ids {
		if w.ids[id] > 0 {
			n++
		}
	}
	return n
}
