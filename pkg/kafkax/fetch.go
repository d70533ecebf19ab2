package kafkax

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/retry"
)

// MessageFetcher is the part of *GroupReader that forming a batch uses. A fetcher that
// also has Buffered() int (GroupReader does) lets a batch close once it holds every
// message fetched so far (BatchPolicy.Linger).
type MessageFetcher interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
}

// BatchPolicy is how a service forms its batches (FetchBatch).
type BatchPolicy struct {
	// Size closes a batch at this many messages.
	Size int
	// Wait closes a batch this long after its first message at most.
	Wait time.Duration
	// Linger, when set, is called once the first message is in hand: a batch that holds
	// every message fetched so far closes as soon as it has been open that long (Wait at
	// most). Nil: the batch stays open for Wait or until it is full.
	Linger func() time.Duration
	// OnFirst, when set, is called with a batch's first message as soon as it is fetched.
	OnFirst func(first kafka.Message)
}

// FetchBatch returns the next batch: it waits for a first message, then takes messages
// until the batch is full, Wait has passed since the first one, or (with Linger) the
// batch holds every message fetched and has been open Linger long. When ctx is cancelled
// it returns what it has and no error; the caller finishes it.
func FetchBatch(ctx context.Context, r MessageFetcher, p BatchPolicy) ([]kafka.Message, error) {
	first, err := r.FetchMessage(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, err
	}
	// Grown as messages come: a batch is often a single message at low load, and 1,024
	// preallocated messages (about 200 KiB) per batch were the consumer's and the
	// alerter's largest allocation while idle-ish (bench step 8's quiet neighbour).
	batch := make([]kafka.Message, 1, min(p.Size, 16))
	batch[0] = first
	if p.OnFirst != nil {
		p.OnFirst(first)
	}
	fctx, cancel := context.WithTimeout(ctx, p.Wait)
	defer cancel()
	start := time.Now()
	var linger time.Duration
	var buffered interface{ Buffered() int }
	if p.Linger != nil {
		linger = min(p.Linger(), p.Wait)
		buffered, _ = r.(interface{ Buffered() int })
	}
	for len(batch) < p.Size {
		if buffered != nil && buffered.Buffered() == 0 {
			wait := linger - time.Since(start)
			if wait <= 0 {
				return batch, nil
			}
			m, err := fetchWithin(fctx, r, wait)
			if err != nil {
				if fctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
					return batch, nil
				}
				return batch, err
			}
			batch = append(batch, m)
			continue
		}
		m, err := r.FetchMessage(fctx)
		if err != nil {
			if fctx.Err() != nil {
				return batch, nil
			}
			return batch, err
		}
		batch = append(batch, m)
	}
	return batch, nil
}

// fetchWithin is FetchMessage bounded by d as well as by ctx.
func fetchWithin(ctx context.Context, r MessageFetcher, d time.Duration) (kafka.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return r.FetchMessage(ctx)
}

// FetchLoop is the loop the consumer and the alerter read their topic with: form a batch,
// hand it over, repeat; fetch errors are retried with backoff, since kafka-go reports
// group and connection trouble there and heals on its own.
type FetchLoop struct {
	// Name prefixes the error returned when the reader is closed ("consumer").
	Name string
	// Fetch forms the next batch (each service's batching policy, usually FetchBatch).
	// When ctx is cancelled it returns what it has and no error.
	Fetch func(ctx context.Context) ([]kafka.Message, error)
	// Handle takes every non-empty batch, also the one in hand when ctx was cancelled.
	// An error ends the loop: with that error, or nil when ctx was cancelled meanwhile.
	Handle func(batch []kafka.Message) error
	// BackoffMin and BackoffMax bound the delay between retries of a failed fetch.
	BackoffMin, BackoffMax time.Duration
	// Logger gets a warning per failed fetch; OnError (metrics) is called with it.
	Logger  *slog.Logger
	OnError func(err error)
}

// Run loops until ctx is cancelled (returning nil, after handing over the batch in hand),
// Handle fails, or the reader is closed (io.EOF).
func (l FetchLoop) Run(ctx context.Context) error {
	var failures int
	for {
		batch, ferr := l.Fetch(ctx)
		if len(batch) > 0 {
			if err := l.Handle(batch); err != nil {
				if ctx.Err() != nil {
					return nil // stopping: the batch stays uncommitted and is redelivered
				}
				return err
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if ferr == nil {
			failures = 0
			continue
		}
		if errors.Is(ferr, io.EOF) {
			return fmt.Errorf("%s: the Kafka reader closed: %w", l.Name, ferr)
		}
		if l.OnError != nil {
			l.OnError(ferr)
		}
		if l.Logger != nil {
			l.Logger.Warn("fetching from Kafka failed; retrying", "error", ferr)
		}
		if !retry.Sleep(ctx, retry.Backoff(l.BackoffMin, l.BackoffMax, failures)) {
			return nil
		}
		failures++
	}
}
