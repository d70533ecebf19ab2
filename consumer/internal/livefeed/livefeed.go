// Package livefeed publishes newly stored events to their projects' Redis channels for
// the live streams. Live streams are best-effort (docs/reliability.md promise 13), so this
// package never holds the pipeline up: batches are handed to one publishing goroutine
// through a queue bounded in bytes, a full queue drops the batch, and a failed PUBLISH
// pipeline is counted and logged, never retried. One goroutine keeps the order in which
// batches were handed over, and within a batch the order of its events (offset order).
package livefeed

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Item is one event to publish.
type Item struct {
	Channel    string
	Payload    []byte
	ReceivedAt time.Time
}

// Options tune a Publisher.
type Options struct {
	// Timeout bounds one PUBLISH pipeline.
	Timeout time.Duration
	// MaxPendingBytes bounds the payload bytes waiting to be published.
	MaxPendingBytes int64
	// OnDone is called after each pipeline with the batch and how many of its
	// PUBLISHes failed (err is the first failure).
	OnDone func(items []Item, failed int, err error)
	// OnDropped is called with the number of events dropped because the queue was full
	// or the publisher stopped before reaching them.
	OnDropped func(n int)
}

// Publisher owns the publishing goroutine (Run).
type Publisher struct {
	rdb     *redis.Client
	logger  *slog.Logger
	opts    Options
	queue   chan []Item
	pending atomic.Int64

	closeOnce sync.Once
}

// New returns a Publisher; start Run in a goroutine.
func New(rdb *redis.Client, logger *slog.Logger, opts Options) *Publisher {
	if opts.OnDone == nil {
		opts.OnDone = func([]Item, int, error) {}
	}
	if opts.OnDropped == nil {
		opts.OnDropped = func(int) {}
	}
	return &Publisher{rdb: rdb, logger: logger, opts: opts, queue: make(chan []Item, 1024)}
}

// Publish hands items over without blocking. It reports false (and counts the items as
// dropped) when the queue is full.
func (p *Publisher) Publish(items []Item) bool {
	if len(items) == 0 {
		return true
	}
	n := size(items)
	if p.pending.Add(n) > p.opts.MaxPendingBytes {
		p.pending.Add(-n)
		p.drop(len(items), "live-feed queue full")
		return false
	}
	select {
	case p.queue <- items:
		return true
	default:
		p.pending.Add(-n)
		p.drop(len(items), "live-feed queue full")
		return false
	}
}

// Close stops accepting batches; Run returns once it has published what was queued.
// Publish must not be called after Close.
func (p *Publisher) Close() { p.closeOnce.Do(func() { close(p.queue) }) }

// Run publishes queued batches until Close was called and the queue is drained, or
// until ctx ends (what is still queued then is dropped and counted).
func (p *Publisher) Run(ctx context.Context) {
	for {
		// A stop wins over queued work (select alone would pick at random).
		if ctx.Err() != nil {
			p.dropQueued()
			return
		}
		select {
		case <-ctx.Done():
		case items, ok := <-p.queue:
			if !ok {
				return
			}
			p.publish(ctx, items)
			p.pending.Add(-size(items))
		}
	}
}

// dropQueued empties the queue without publishing and counts what it dropped.
func (p *Publisher) dropQueued() {
	dropped := 0
	for {
		select {
		case items, ok := <-p.queue:
			if ok {
				dropped += len(items)
				p.pending.Add(-size(items))
				continue
			}
		default:
		}
		break
	}
	if dropped > 0 {
		p.drop(dropped, "publisher stopped")
	}
}

func (p *Publisher) publish(ctx context.Context, items []Item) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	pipe := p.rdb.Pipeline()
	for _, it := range items {
		pipe.Publish(ctx, it.Channel, it.Payload)
	}
	cmds, err := pipe.Exec(ctx)
	failed := 0
	var first error
	if err != nil {
		for _, c := range cmds {
			if c.Err() != nil {
				failed++
				if first == nil {
					first = c.Err()
				}
			}
		}
		if failed == 0 { // the pipeline failed as a whole
			failed, first = len(items), err
		}
		p.logger.Warn("publishing to the live feed failed; live clients miss these events (they are stored)",
			"events", len(items), "failed", failed, "error", first)
	}
	p.opts.OnDone(items, failed, first)
}

func (p *Publisher) drop(n int, why string) {
	p.logger.Warn("dropping live-feed events (they are stored)", "events", n, "reason", why)
	p.opts.OnDropped(n)
}

func size(items []Item) int64 {
	var n int64
	for _, it := range items {
		n += int64(len(it.Payload) + len(it.Channel))
	}
	return n
}
