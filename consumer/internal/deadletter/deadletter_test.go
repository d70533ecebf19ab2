package deadletter

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

func headers(m kafka.Message) map[string]string {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	return h
}

func TestWriteKeepsOriginalAndAddsReason(t *testing.T) {
	t.Parallel()
	kc := kafkatest.New(t, 1)
	w, err := New(kc.Brokers, kc.DLQTopic, 1<<20)
	require.NoError(t, err)
	defer w.Close()
	orig := kafka.Message{Topic: "pulseboard.events", Partition: 3, Offset: 42, Key: []byte("k"), Value: []byte(`{"x":`),
		Headers: []kafka.Header{{Key: "trace", Value: []byte("t1")}}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	failed, err := w.Write(ctx, []Letter{{Msg: orig, Code: "INVALID_JSON", Reason: "body is not valid JSON"}})
	require.NoError(t, err)
	require.Empty(t, failed)

	r := kafkax.NewReader(kc.Brokers, kc.DLQTopic, kafkax.ReaderOptions{GroupID: "t", MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	m, err := r.FetchMessage(ctx)
	require.NoError(t, err)
	require.Equal(t, orig.Key, m.Key)
	require.Equal(t, orig.Value, m.Value)
	h := headers(m)
	require.Equal(t, "t1", h["trace"])
	require.Equal(t, "INVALID_JSON", h[HeaderCode])
	require.Equal(t, "body is not valid JSON", h[HeaderReason])
	require.Equal(t, "pulseboard.events", h[HeaderTopic])
	require.Equal(t, "3", h[HeaderPartition])
	require.Equal(t, "42", h[HeaderOffset])
	_, err = time.Parse(time.RFC3339Nano, h[HeaderTime])
	require.NoError(t, err)
	require.NotContains(t, h, HeaderTruncated)
}

// A value too large for the dead-letter topic is cut and marked rather than stalling the
// partition with a write that can never succeed.
func TestOversizedValueIsTruncated(t *testing.T) {
	t.Parallel()
	w := &Writer{maxBytes: 200 << 10, now: time.Now}
	big := strings.Repeat("x", 300<<10)
	m := w.message(Letter{Msg: kafka.Message{Key: []byte("k"), Value: []byte(big)}, Code: "PAYLOAD_TOO_LARGE", Reason: "r"}, time.Now(), false)
	require.Len(t, m.Value, truncatedValueBytes)
	require.Equal(t, "307200", headers(m)[HeaderTruncated])

	small := w.message(Letter{Msg: kafka.Message{Value: []byte("v")}}, time.Now(), false)
	require.Equal(t, []byte("v"), small.Value)
	require.NotContains(t, headers(small), HeaderTruncated)
}
