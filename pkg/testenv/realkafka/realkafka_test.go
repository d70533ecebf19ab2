package realkafka_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

// Each version starts, takes acks=all writes, serves them to a consumer group, and keeps
// them across a kill -9 and restart of its node.
func TestRealBrokerKillRestartKeepsAcknowledgedMessages(t *testing.T) {
	for _, version := range realkafka.Versions() {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			c := realkafka.StartT(t, realkafka.Options{Version: version})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			require.NoError(t, kafkax.EnsureTopics(ctx, c.Brokers(), kafkax.Topic{Name: "t", Partitions: 3}))
			w, err := kafkax.NewWriter(c.Brokers(), "t", kafkax.DefaultWriterOptions())
			require.NoError(t, err)
			var msgs []kafka.Message
			for i := range 30 {
				msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint(i % 7)), Value: []byte(fmt.Sprint(i))})
			}
			require.NoError(t, w.WriteMessages(ctx, msgs...))
			require.NoError(t, w.Close())

			n := c.Nodes[0]
			pid := n.PID()
			n.Kill()
			require.False(t, n.Running())
			require.NoError(t, n.Start())
			require.NoError(t, n.WaitServing(ctx, time.Minute))
			require.NotEqual(t, pid, n.PID())

			r, err := kafkax.NewGroupReader(c.Brokers(), "t", kafkax.ReaderOptions{GroupID: "g", MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
			require.NoError(t, err)
			defer r.Close()
			seen := map[string]bool{}
			for len(seen) < 30 {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					t.Logf("fetch: %v", err) // a rebalance or a leader still coming back
					continue
				}
				seen[string(m.Value)] = true
				require.NoError(t, r.CommitMessages(ctx, m))
			}
			lag, err := kafkax.GroupLag(ctx, c.Brokers(), "g", "t")
			require.NoError(t, err)
			require.Zero(t, lag)
		})
	}
}
