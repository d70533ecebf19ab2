package kafkax_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

func TestGroupLag(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kc := kafkatest.New(t, 3)

	// An empty topic has no lag, with or without a group that ever committed.
	lag, err := kafkax.GroupLag(ctx, kc.Brokers, "lag-test", kc.Topic)
	require.NoError(t, err)
	require.Zero(t, lag)

	w, err := kafkax.NewWriter(kc.Brokers, kc.Topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	defer closeWriter(w)
	const n = 30
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("key-" + strconv.Itoa(i)), Value: []byte("v")}
	}
	require.NoError(t, w.WriteMessages(ctx, msgs...))

	// A group without commits counts every partition from its first offset.
	lag, err = kafkax.GroupLag(ctx, kc.Brokers, "lag-test", kc.Topic)
	require.NoError(t, err)
	require.EqualValues(t, n, lag)

	// Commit a prefix of what one member fetched: the lag shrinks by exactly that much.
	r := kafkax.NewReader(kc.Brokers, kc.Topic, kafkax.ReaderOptions{GroupID: "lag-test", MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	const k = 7
	fetched := make([]kafka.Message, 0, n)
	for range k {
		m, err := r.FetchMessage(ctx)
		require.NoError(t, err)
		fetched = append(fetched, m)
	}
	require.NoError(t, r.CommitMessages(ctx, fetched...))
	lag, err = kafkax.GroupLag(ctx, kc.Brokers, "lag-test", kc.Topic)
	require.NoError(t, err)
	require.EqualValues(t, n-k, lag)

	// Another group is independent.
	lag, err = kafkax.GroupLag(ctx, kc.Brokers, "other-group", kc.Topic)
	require.NoError(t, err)
	require.EqualValues(t, n, lag)

	for len(fetched) < n {
		m, err := r.FetchMessage(ctx)
		require.NoError(t, err)
		fetched = append(fetched, m)
	}
	require.NoError(t, r.CommitMessages(ctx, fetched...))
	lag, err = kafkax.GroupLag(ctx, kc.Brokers, "lag-test", kc.Topic)
	require.NoError(t, err)
	require.Zero(t, lag)

	_, err = kafkax.GroupLag(ctx, kc.Brokers, "lag-test", "no-such-topic")
	require.Error(t, err)
}

func closeWriter(w *kafka.Writer) {
	_ = w.Close()
	if tr, ok := w.Transport.(*kafka.Transport); ok {
		tr.CloseIdleConnections()
	}
}
