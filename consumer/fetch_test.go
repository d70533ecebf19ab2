package consumer

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// chanReader is a messageReader whose fetched-but-unread messages are a channel.
type chanReader struct{ ch chan kafkaMessage }

func (r chanReader) FetchMessage(ctx context.Context) (kafkaMessage, error) {
	select {
	case m := <-r.ch:
		return m, nil
	case <-ctx.Done():
		return kafkaMessage{}, ctx.Err()
	}
}

func (chanReader) CommitMessages(context.Context, ...kafkaMessage) error { return nil }
func (r chanReader) Buffered() int                                       { return len(r.ch) }

func fetchAsync(s *Service, r messageReader) <-chan []kafkaMessage {
	out := make(chan []kafkaMessage, 1)
	go func() {
		b, _ := s.fetch(context.Background(), r)
		out <- b
	}()
	return out
}

// TestFetchClosesACaughtUpBatch: with nothing stored yet (or fast stores), a batch holding
// everything fetched so far closes at once instead of waiting BatchWait for company.
func TestFetchClosesACaughtUpBatch(t *testing.T) {
	t.Parallel()
	s := &Service{cfg: Config{BatchSize: 100, BatchWait: time.Hour}}
	r := chanReader{ch: make(chan kafkaMessage, 10)}
	for i := range 3 {
		r.ch <- kafkaMessage{Offset: int64(i)}
	}
	done := fetchAsync(s, r)
	var batch []kafkaMessage
	require.Eventually(t, func() bool {
		select {
		case batch = <-done:
			return true
		default:
			return false
		}
	}, 30*time.Second, 5*time.Millisecond, "the batch waited for BatchWait (an hour)")
	require.Len(t, batch, 3)
}

// TestFetchWaitsAsLongAsTheLastStore: after a store that took 200 ms, a caught-up batch
// stays open about that long, taking the messages that arrive meanwhile, then closes
// without waiting for BatchWait or BatchSize.
func TestFetchWaitsAsLongAsTheLastStore(t *testing.T) {
	t.Parallel()
	s := &Service{cfg: Config{BatchSize: 1000, BatchWait: time.Hour}}
	s.lastStore.Store(int64(200 * time.Millisecond))
	r := chanReader{ch: make(chan kafkaMessage, 1000)}
	r.ch <- kafkaMessage{Offset: 0}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a message every 10 ms for 5 s
		for i := 1; i < 500; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				r.ch <- kafkaMessage{Offset: int64(i)}
			}
		}
	}()
	var batch []kafkaMessage
	select {
	case batch = <-fetchAsync(s, r):
	case <-time.After(30 * time.Second):
		t.Fatal("the batch waited for BatchWait (an hour)")
	}
	require.Greater(t, len(batch), 1, "the batch waited for company")
	require.Less(t, len(batch), 400, "the batch closed after about the last store's duration, not at the end of the stream")
	for i, m := range batch {
		require.EqualValues(t, i, m.Offset)
	}
}
