package kafkax_test

import (
	"context"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

// committed reads the group's committed offsets of partitions 0..n-1.
func committed(t *testing.T, ctx context.Context, kc *kafkatest.Cluster, group string, n int) map[int]int64 {
	t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(kc.Brokers...), Timeout: 10 * time.Second}
	ps := make([]int, n)
	for i := range ps {
		ps[i] = i
	}
	resp, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{kc.Topic: ps}})
	require.NoError(t, err)
	out := map[int]int64{}
	for _, p := range resp.Topics[kc.Topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// K12: a member that still holds messages of a generation that has ended cannot commit
// them, so the partition's new owner's committed offset never moves backwards; the
// member itself goes on with the partitions of the new generation.
func TestGroupReaderRefusesCommitsOfAnEndedGeneration(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const partitions, n = 2, 60
	kc := kafkatest.New(t, partitions)
	w, err := kafkax.NewWriter(kc.Brokers, kc.Topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	defer closeWriter(w)
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("key-" + strconv.Itoa(i)), Value: []byte("v")}
	}
	require.NoError(t, w.WriteMessages(ctx, msgs...))

	opts := kafkax.ReaderOptions{GroupID: "k12", MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond}
	a, err := kafkax.NewGroupReader(kc.Brokers, kc.Topic, opts)
	require.NoError(t, err)
	defer a.Close()
	// A owns both partitions: it commits a little and holds the rest uncommitted.
	var held []kafka.Message
	for len(held) < 20 {
		m, err := a.FetchMessage(ctx)
		require.NoError(t, err)
		held = append(held, m)
	}
	require.NoError(t, a.CommitMessages(ctx, held[0]))

	// B joins: a new generation splits the partitions. B reads everything it gets and
	// commits it.
	b, err := kafkax.NewGroupReader(kc.Brokers, kc.Topic, opts)
	require.NoError(t, err)
	defer b.Close()
	var bGot []kafka.Message
	for {
		wait := 3 * time.Second
		if len(bGot) == 0 {
			wait = 45 * time.Second // the rebalance: A notices it at its next heartbeat
		}
		fctx, fcancel := context.WithTimeout(ctx, wait)
		m, err := b.FetchMessage(fctx)
		fcancel()
		if err != nil {
			require.NotEmpty(t, bGot, "B never got a partition")
			break
		}
		require.NoError(t, b.CommitMessages(ctx, m))
		bGot = append(bGot, m)
	}
	before := committed(t, ctx, kc, "k12", partitions)

	// A's messages of the first generation can no longer be committed…
	require.Error(t, a.CommitMessages(ctx, held...))
	after := committed(t, ctx, kc, "k12", partitions)
	for p, off := range before {
		require.GreaterOrEqual(t, after[p], off, "partition %d's committed offset moved backwards", p)
	}
	// …and A goes on with its partition of the new generation, from the committed offset.
	m, err := a.FetchMessage(ctx)
	require.NoError(t, err)
	require.NoError(t, a.CommitMessages(ctx, m))
	for _, x := range bGot {
		require.NotEqual(t, x.Partition, m.Partition, "A and B were both given partition %d", m.Partition)
	}
}

// The basics: every message once per group in order per partition, commits reach the
// group (lag 0), and Close ends FetchMessage with io.EOF.
func TestGroupReaderFetchCommitClose(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 50
	kc := kafkatest.New(t, 3)
	w, err := kafkax.NewWriter(kc.Brokers, kc.Topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	defer closeWriter(w)
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("key-" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))}
	}
	require.NoError(t, w.WriteMessages(ctx, msgs...))

	r, err := kafkax.NewGroupReader(kc.Brokers, kc.Topic, kafkax.ReaderOptions{GroupID: "basic", MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	require.NoError(t, err)
	seen := map[string]bool{}
	last := map[int]int64{}
	for len(seen) < n {
		m, err := r.FetchMessage(ctx)
		require.NoError(t, err)
		require.False(t, seen[string(m.Value)], "message %s twice", m.Value)
		seen[string(m.Value)] = true
		if l, ok := last[m.Partition]; ok {
			require.Greater(t, m.Offset, l, "partition %d out of order", m.Partition)
		}
		last[m.Partition] = m.Offset
		require.NoError(t, r.CommitMessages(ctx, m))
	}
	lag, err := kafkax.GroupLag(ctx, kc.Brokers, "basic", kc.Topic)
	require.NoError(t, err)
	require.Zero(t, lag)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	_, err = r.FetchMessage(ctx)
	require.ErrorIs(t, err, io.EOF)
}
