package kafkax

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
)

// scriptedFetcher answers FetchMessage from a channel of results.
type scriptedFetcher struct {
	results chan fetchResult
}

type fetchResult struct {
	m   kafka.Message
	err error
}

func (f scriptedFetcher) FetchMessage(ctx context.Context) (kafka.Message, error) {
	select {
	case r := <-f.results:
		return r.m, r.err
	case <-ctx.Done():
		return kafka.Message{}, ctx.Err()
	}
}

func (f scriptedFetcher) Buffered() int { return len(f.results) }

func TestFetchBatchClosesWhenFullOrAfterWait(t *testing.T) {
	t.Parallel()
	f := scriptedFetcher{results: make(chan fetchResult, 10)}
	for i := range 5 {
		f.results <- fetchResult{m: kafka.Message{Offset: int64(i)}}
	}
	var first kafka.Message
	batch, err := FetchBatch(context.Background(), f, BatchPolicy{Size: 3, Wait: time.Hour, OnFirst: func(m kafka.Message) { first = m }})
	require.NoError(t, err)
	require.Len(t, batch, 3)
	require.EqualValues(t, 0, first.Offset)

	// Two left, no Linger: the batch waits for Wait.
	start := time.Now()
	batch, err = FetchBatch(context.Background(), f, BatchPolicy{Size: 3, Wait: 50 * time.Millisecond})
	require.NoError(t, err)
	require.Len(t, batch, 2)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)

	// Caught up with a zero Linger: closes at once.
	f.results <- fetchResult{m: kafka.Message{Offset: 5}}
	batch, err = FetchBatch(context.Background(), f, BatchPolicy{Size: 3, Wait: time.Hour, Linger: func() time.Duration { return 0 }})
	require.NoError(t, err)
	require.Len(t, batch, 1)

	// Cancelled while waiting for the first message: nothing, no error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	batch, err = FetchBatch(ctx, f, BatchPolicy{Size: 3, Wait: time.Hour})
	require.NoError(t, err)
	require.Empty(t, batch)
}

func TestFetchLoopRetriesThenStopsOnEOF(t *testing.T) {
	t.Parallel()
	f := scriptedFetcher{results: make(chan fetchResult, 10)}
	boom := errors.New("boom")
	f.results <- fetchResult{err: boom}
	f.results <- fetchResult{m: kafka.Message{Offset: 1}}
	f.results <- fetchResult{err: io.EOF}
	var errs []error
	var handled []kafka.Message
	err := FetchLoop{
		Name: "tester",
		Fetch: func(ctx context.Context) ([]kafka.Message, error) {
			return FetchBatch(ctx, f, BatchPolicy{Size: 1, Wait: time.Second})
		},
		Handle:     func(b []kafka.Message) error { handled = append(handled, b...); return nil },
		BackoffMin: time.Millisecond,
		BackoffMax: time.Millisecond,
		OnError:    func(err error) { errs = append(errs, err) },
	}.Run(context.Background())
	require.ErrorIs(t, err, io.EOF)
	require.ErrorContains(t, err, "tester: the Kafka reader closed")
	require.Equal(t, []error{boom}, errs)
	require.Len(t, handled, 1)
}

func TestFetchLoopHandleErrorEndsTheLoop(t *testing.T) {
	t.Parallel()
	f := scriptedFetcher{results: make(chan fetchResult, 10)}
	f.results <- fetchResult{m: kafka.Message{Offset: 1}}
	bad := errors.New("bad")
	err := FetchLoop{
		Name: "tester",
		Fetch: func(ctx context.Context) ([]kafka.Message, error) {
			return FetchBatch(ctx, f, BatchPolicy{Size: 1, Wait: time.Second})
		},
		Handle: func([]kafka.Message) error { return bad },
	}.Run(context.Background())
	require.ErrorIs(t, err, bad)

	// Cancelled: the loop returns nil, even when Handle failed because of it.
	ctx, cancel := context.WithCancel(context.Background())
	f.results <- fetchResult{m: kafka.Message{Offset: 2}}
	err = FetchLoop{
		Name: "tester",
		Fetch: func(ctx context.Context) ([]kafka.Message, error) {
			return FetchBatch(ctx, f, BatchPolicy{Size: 1, Wait: time.Second})
		},
		Handle: func([]kafka.Message) error { cancel(); return context.Canceled },
	}.Run(ctx)
	require.NoError(t, err)
}
