package live

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The queue keeps order across growth, honours both caps, queues a resync marker only
// together with the message it precedes, and releases its ring when it drains.
func TestMsgQueue(t *testing.T) {
	frame := make([]byte, 92) // 92 + ptrBytes = 100 bytes per message
	q := newMsgQueue(transportWS, 1000, 1070)
	require.Nil(t, q.ring, "an idle queue holds no ring")
	var in []*message
	for range 10 {
		m := &message{ws: frame}
		in = append(in, m)
		require.True(t, q.push(m))
	}
	require.False(t, q.push(&message{ws: frame}), "the byte cap is reached")
	require.False(t, q.push(&message{missed: 3}, &message{ws: frame}), "marker and message go in together or not at all")
	require.True(t, q.push(&message{missed: 3}), "a marker alone still fits")
	require.Equal(t, 11, q.len())

	out, more := q.pop(nil, 4, 1<<20)
	require.True(t, more)
	require.Equal(t, in[:4], out)
	out, more = q.pop(out[:0], 100, 250) // stops once 250 bytes were taken
	require.True(t, more)
	require.Equal(t, in[4:7], out)
	out, more = q.pop(out[:0], 100, 1<<20)
	require.False(t, more)
	require.Equal(t, in[7:], out[:3])
	require.Equal(t, int64(3), out[3].missed)
	require.Zero(t, q.bytes)
	require.Len(t, q.ring, queueMinCap, "the smallest ring is kept")

	big := newMsgQueue(transportWS, 1000, 1<<20)
	for range 100 {
		require.True(t, big.push(&message{ws: frame}))
	}
	require.Len(t, big.ring, 128)
	for more := true; more; {
		_, more = big.pop(nil, 30, 1<<20)
	}
	require.Nil(t, big.ring, "a drained queue releases a grown ring")

	small := newMsgQueue(transportSSE, 2, 1<<20)
	require.True(t, small.push(&message{sse: frame}, &message{sse: frame}))
	require.False(t, small.push(&message{sse: frame}), "the message cap is reached")
}
