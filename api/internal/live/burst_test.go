package live_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// burstEvents is a consumer batch (CONSUMER_BATCH_SIZE): the consumer publishes the
// events of a stored batch in one pipeline, so they reach the api back to back.
const burstEvents = 5000

// A whole consumer batch published at once reaches clients that read as fast as they
// can completely, in order and without a resync, on both transports (issue 6: with a
// queue of 256 messages such a burst overflowed even for a fast reader, and a single
// client saw well under half of the events at 10k events/s).
func TestConsumerBatchBurstReachesFastClients(t *testing.T) {
	t.Parallel()
	b := setup(t)
	wsc := b.dialWS(t)
	sse := b.openSSE(t, nil, "?token="+b.token)

	pad := strings.Repeat("p", 200) // loadgen's default event size
	want := make([]string, burstEvents)
	pipe := b.rdb.Pipeline()
	ctx := context.Background()
	for i := range want {
		e := b.newEvent(fmt.Sprintf("burst-%d", i), fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad))
		js := e.AppendJSON(nil)
		want[i] = string(js)
		pipe.Publish(ctx, redisx.EventsChannel(b.project.ID), js)
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)

	// Both clients read concurrently, each as fast as it can.
	sseErr := make(chan error, 1)
	go func() {
		for i := range want {
			var ev sseEvent
			select {
			case ev = <-sse.events:
			case <-time.After(waitFor):
				sseErr <- fmt.Errorf("SSE: no message %d in time", i)
				return
			}
			if ev.data != want[i] {
				sseErr <- fmt.Errorf("SSE message %d is %.80s…, want event %d", i, ev.data, i)
				return
			}
		}
		sseErr <- nil
	}()
	for i := range want {
		got := readWS(t, wsc)
		require.Equal(t, want[i], got, "WebSocket message %d: every event of the burst, in order, no resync", i)
	}
	require.NoError(t, <-sseErr)
	for _, tr := range []string{"ws", "sse"} {
		labels := map[string]string{"transport": tr}
		require.Zero(t, b.metric(t, "pulseboard_api_live_messages_dropped_total", labels), tr)
		eventually(t, func() bool {
			return b.metric(t, "pulseboard_api_live_messages_sent_total", labels) == burstEvents
		}, tr+": messages_sent_total does not count the burst")
	}
}
