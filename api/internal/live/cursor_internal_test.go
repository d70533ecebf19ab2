package live

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

func TestCursorRoundTripAndOrder(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC().Truncate(time.Microsecond)
	a := cursor{receivedAt: now, id: uuid.Must(uuid.NewV7())}
	got, err := parseCursor(a.String())
	require.NoError(t, err)
	require.Equal(t, a, got)

	b := cursor{receivedAt: now, id: uuid.Must(uuid.NewV7())}
	later := cursor{receivedAt: now.Add(time.Millisecond), id: uuid.UUID{}}
	require.Equal(t, -1, a.compare(b), "same time: ordered by id bytes")
	require.Equal(t, 1, b.compare(a))
	require.Equal(t, -1, b.compare(later), "time first")
	require.Zero(t, a.compare(got))

	for _, bad := range []string{"", "x", a.String() + "A", a.String()[1:], "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"} {
		_, err := parseCursor(bad)
		require.ErrorIs(t, err, errBadCursor, bad)
	}
}

func TestEventCursorFromPublishedJSON(t *testing.T) {
	t.Parallel()
	e := event.Event{ID: uuid.Must(uuid.NewV7()), ProjectID: uuid.New(), Type: event.TypeError, Name: "x",
		Payload: []byte(`{}`), Timestamp: time.Now(), ReceivedAt: time.Now().Truncate(time.Millisecond)}
	c, ok := eventCursor(e.AppendJSON(nil))
	require.True(t, ok)
	require.Equal(t, e.ID, c.id)
	require.True(t, e.ReceivedAt.Equal(c.receivedAt))
	_, ok = eventCursor([]byte(`{"id":"nope"}`))
	require.False(t, ok)
}

func TestAppendSSESplitsLines(t *testing.T) {
	t.Parallel()
	require.Equal(t, "id: c\ndata: {}\n\n", string(appendSSE(nil, "c", []byte(`{}`))))
	require.Equal(t, "data: a\ndata: b\ndata: c\ndata: \n\n", string(appendSSE(nil, "", []byte("a\nb\r\nc\r"))))
}

func TestRevokedIsSecondGranular(t *testing.T) {
	t.Parallel()
	cut := time.Date(2026, 1, 1, 12, 0, 0, 500e6, time.UTC)
	require.True(t, revoked(cut.Add(-2*time.Second).Truncate(time.Second), cut))
	require.False(t, revoked(cut.Truncate(time.Second), cut), "same second: accepted")
	require.False(t, revoked(cut.Add(time.Second).Truncate(time.Second), cut))
}
