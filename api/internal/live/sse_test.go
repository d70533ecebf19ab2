package live_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// An SSE client that reconnects with Last-Event-ID gets exactly the events it missed,
// from Postgres, then live ones: no gap, no duplicate, even for an event that was stored
// before the replay but published after it.
func TestSSEReconnectReplaysMissedEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Events stored and published like the consumer does: commit, then PUBLISH.
	emit := func(name string) string {
		e := b.newEvent(name, fmt.Sprintf(`{"name":%q}`, name))
		b.store(t, e)
		return b.publish(t, e)
	}
	first := b.openSSE(t, nil, "?token="+b.token)
	e1, e2 := emit("e1"), emit("e2")
	require.Equal(t, e1, first.next(t).data)
	ev2 := first.next(t)
	require.Equal(t, e2, ev2.data)
	require.NoError(t, first.resp.Body.Close())
	eventually(t, func() bool { return b.sumMetric(t, "pulseboard_api_live_connections") == 0 }, "first stream not released")

	// Missed while disconnected: stored (and published to nobody).
	e3, e4 := emit("e3"), emit("e4")
	// e5 is committed but its PUBLISH is late: it arrives after the client is back.
	late := b.newEvent("e5", `{"name":"e5"}`)
	b.store(t, late)

	second := b.openSSE(t, http.Header{"Last-Event-ID": {ev2.id}, "Authorization": {"Bearer " + b.token}}, "")
	lateJSON := b.publish(t, late)
	e6 := emit("e6")

	var got []string
	ids := map[string]bool{}
	for len(got) < 4 {
		ev := second.next(t)
		require.True(t, ev.hasID, "every event carries its cursor: %s", ev.data)
		require.False(t, ids[ev.id], "duplicate cursor")
		ids[ev.id] = true
		got = append(got, ev.data)
	}
	// Replayed events come back from Postgres (jsonb) byte-identical to the live ones.
	require.Equal(t, []string{e3, e4, lateJSON, e6}, got)

	// Nothing else is pending: the next event is the next one published.
	e7 := emit("e7")
	require.Equal(t, e7, second.next(t).data)
	// An event committed after the replay but received earlier than the replayed ones
	// (a slower consumer) is not in the replay, so it must come live: the splice skips
	// replayed ids, not everything below the last replayed cursor.
	slow := b.newEvent("slow", `{"name":"slow"}`)
	slow.ReceivedAt = slow.ReceivedAt.Add(-time.Minute)
	b.store(t, slow)
	require.Equal(t, b.publish(t, slow), second.next(t).data)
	// e3, e4, e5, and e6 too if it was committed before the replay query ran.
	require.GreaterOrEqual(t, b.metric(t, "pulseboard_api_live_replayed_events_total", nil), 3.0)

	// ?lastEventId= works too (for clients that cannot set headers), and a cursor
	// from the replay is as good as one from a live event.
	third := b.openSSE(t, nil, "?token="+b.token+"&lastEventId="+ev2.id)
	for _, want := range []string{e3, e4, lateJSON, e6, e7} {
		require.Equal(t, want, third.next(t).data)
	}
}

// More missed events than ReplayLimit: a resync with the count of the ones not
// replayed, then the newest ReplayLimit, then live ones. An unknown cursor: a resync
// with an unknown count, then live ones.
func TestSSEReplayIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.ReplayLimit = 3; o.cfg.ReplayWindow = time.Hour })
	var all []event.Event
	var js []string
	base := time.Now().UTC().Add(-30 * time.Minute).Truncate(event.Precision)
	for i := range 6 {
		e := b.newEvent(fmt.Sprintf("m%d", i), `{}`)
		e.ReceivedAt = base.Add(time.Duration(i) * time.Second)
		b.store(t, e)
		all = append(all, e)
		js = append(js, string(e.AppendJSON(nil)))
	}
	// Learn e0's cursor the way a client does: from a live event.
	s := b.openSSE(t, nil, "?token="+b.token)
	b.publish(t, all[0])
	cur := s.next(t).id
	require.NoError(t, s.resp.Body.Close())

	s = b.openSSE(t, http.Header{"Last-Event-ID": {cur}}, "?token="+b.token)
	ev := s.next(t)
	require.JSONEq(t, `{"type":"resync","missed":2}`, ev.data) // m1 and m2
	require.False(t, ev.hasID)
	for _, want := range js[3:] {
		require.Equal(t, want, s.next(t).data)
	}
	live := b.publish(t, b.newEvent("live", `{}`))
	require.Equal(t, live, s.next(t).data)

	// Outside the window: a cursor older than ReplayWindow misses what lies before it.
	old := b.newEvent("old", `{}`)
	old.ReceivedAt = time.Now().UTC().Add(-90 * time.Minute).Truncate(event.Precision)
	b.store(t, old)
	oldStream := b.openSSE(t, nil, "?token="+b.token)
	b.publish(t, old)
	oldCur := oldStream.next(t).id
	s = b.openSSE(t, http.Header{"Last-Event-ID": {oldCur}}, "?token="+b.token)
	require.JSONEq(t, `{"type":"resync","missed":3}`, s.next(t).data) // m0, m1, m2
	for _, want := range js[3:] {
		require.Equal(t, want, s.next(t).data)
	}

	s = b.openSSE(t, http.Header{"Last-Event-ID": {"not-a-cursor"}}, "?token="+b.token)
	require.JSONEq(t, `{"type":"resync","missed":-1}`, s.next(t).data)
	live = b.publish(t, b.newEvent("live2", `{}`))
	require.Equal(t, live, s.next(t).data)
}
