package live_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// cursorBefore is an SSE cursor (Last-Event-ID) that lies before every event received
// after at: the time at, the nil id.
func cursorBefore(at time.Time) string {
	var raw [24]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(at.UnixMicro()))
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

// storeBig stores n events of project, each with a payload of about size bytes,
// received one millisecond apart from base on, in one statement.
func (b *bundle) storeBig(t testing.TB, project uuid.UUID, n, size int, base time.Time) {
	t.Helper()
	_, err := b.pool.Exec(context.Background(), `
		INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at)
		SELECT gen_random_uuid(), $1, 'event', 'big-' || i,
			jsonb_build_object('i', i, 'pad', repeat('x', $3)),
			$4::timestamptz + i * interval '1 millisecond', $4::timestamptz + i * interval '1 millisecond'
		FROM generate_series(1, $2) i`, project, n, size, base)
	require.NoError(t, err)
}

// sseBlockBytes is the size of an event's block on the wire.
func sseBlockBytes(ev sseEvent) int {
	n := len("data: ") + len(ev.data) + 2
	if ev.hasID {
		n += len("id: ") + len(ev.id) + 1
	}
	return n
}

// A replay is bounded in bytes as well as in events (issue 16 item 2): of 12 events of
// about 60 KiB, a 128 KiB cap replays the newest ones that fit, after a resync with the
// count of the others, and live events follow without a gap or a duplicate.
func TestSSEReplayIsBoundedInBytes(t *testing.T) {
	t.Parallel()
	const maxBytes = 128 << 10
	b := setup(t, func(o *setupOpts) { o.cfg.ReplayMaxBytes = maxBytes })
	base := time.Now().UTC().Add(-20 * time.Minute).Truncate(time.Millisecond)
	b.storeBig(t, b.project.ID, 12, 60<<10, base)

	s := b.openSSE(t, http.Header{"Last-Event-ID": {cursorBefore(base)}}, "?token="+b.token)
	ev := s.next(t)
	typ, m := typeOf(t, ev.data)
	require.Equal(t, "resync", typ, "more was missed than fits: a resync goes first")
	missed := int(m["missed"].(float64))
	require.Positive(t, missed)
	replayed := 12 - missed
	require.Positive(t, replayed, "at least one 60 KiB event fits 128 KiB")
	total := 0
	for i := range replayed {
		ev := s.next(t)
		typ, m := typeOf(t, ev.data)
		require.Equal(t, "", typ)
		// The newest ones, oldest first.
		require.Equal(t, fmt.Sprintf("big-%d", missed+i+1), m["name"])
		require.True(t, ev.hasID)
		total += sseBlockBytes(ev)
	}
	require.LessOrEqual(t, total, maxBytes, "the replay wrote more than LIVE_REPLAY_MAX_BYTES")
	// Nothing else was replayed: the next message is the next live event.
	live := b.publish(t, b.newEvent("live", `{}`))
	require.Equal(t, live, s.next(t).data)
	require.Equal(t, float64(replayed), b.metric(t, "pulseboard_api_live_replayed_events_total", nil))

	// The id of the last replayed event resumes after it: nothing more to replay.
	require.Equal(t, 0.0, b.metric(t, "pulseboard_api_live_replays_running", nil))
}

// rawSSE opens an SSE request on a TCP connection with a small receive buffer and
// returns the connection without reading anything: a client that never reads.
func (b *bundle) rawSSE(t testing.TB, project uuid.UUID, token, lastEventID string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(b.srv.URL, "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	_, err = fmt.Fprintf(conn, "GET /realtime/%s/sse?token=%s HTTP/1.1\r\nHost: x\r\nLast-Event-ID: %s\r\n\r\n", project, token, lastEventID)
	require.NoError(t, err)
	return conn
}

// A replay has one overall deadline (LIVE_REPLAY_TIMEOUT), not a fresh one per write: a
// client that never reads, and one that reads a little now and then, are both cut off
// when it passes, and everything the stream held (its goroutines, its replay slot, the
// Postgres connection the rows were streamed on) is released. Not parallel: it counts
// the process's goroutines.
func TestSSEReplayDeadlineCutsOffSlowReaders(t *testing.T) {
	b := setup(t, func(o *setupOpts) {
		o.cfg.ReplayMaxBytes = 64 << 20
		o.cfg.ReplayLimit = 1000
		o.cfg.ReplayTimeout = 2 * time.Second
	})
	base := time.Now().UTC().Add(-20 * time.Minute).Truncate(time.Millisecond)
	// 16 MiB: more than the kernel buffers between a client that does not read and
	// the server, so the replay blocks in a write.
	b.storeBig(t, b.project.ID, 270, 60<<10, base)
	baseline := runtime.NumGoroutine()

	stalled := b.rawSSE(t, b.project.ID, b.token, cursorBefore(base))
	trickle := b.rawSSE(t, b.project.ID, b.token, cursorBefore(base))
	eventually(t, func() bool { return b.metric(t, "pulseboard_api_live_replays_running", nil) == 2 }, "both replays did not start")
	// The trickling client reads 4 KiB every 100 ms: every write makes some progress,
	// which a per-write deadline would never stop (16 MiB at 40 KiB/s is 7 minutes).
	trickled := make(chan int64, 1)
	var cutOff atomic.Bool
	go func() {
		var n int64
		buf := make([]byte, 4096)
		for {
			k, err := trickle.Read(buf)
			n += int64(k)
			if err != nil {
				trickled <- n
				return
			}
			if !cutOff.Load() {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	start := time.Now()
	eventually(t, func() bool { return b.sumMetric(t, "pulseboard_api_live_connections") == 0 }, "the slow replays were not cut off")
	require.Less(t, time.Since(start), waitFor, "liveness: cut off long before the 7 minutes the replay would take")
	// The trickling reader sees the end of the stream once it has drained what the
	// kernel buffered; it now reads at full speed.
	cutOff.Store(true)
	select {
	case n := <-trickled:
		require.Less(t, n, int64(16<<20), "the trickling client did not get the whole replay")
	case <-time.After(2 * waitFor):
		t.Fatal("the trickling client's connection was not closed")
	}
	_ = stalled.SetReadDeadline(time.Now().Add(waitFor))
	_, err := io.Copy(io.Discard, stalled)
	require.NoError(t, err, "the stalled client's connection was closed by the server")

	require.Equal(t, 0.0, b.metric(t, "pulseboard_api_live_replays_running", nil))
	require.GreaterOrEqual(t, b.metric(t, "pulseboard_api_live_slow_clients_closed_total",
		map[string]string{"transport": "sse", "reason": "write_timeout"}), 2.0)
	eventually(t, func() bool { return b.pool.Stat().AcquiredConns() == 0 }, "a replay kept its Postgres connection")
	eventually(t, func() bool { return runtime.NumGoroutine() <= baseline }, "goroutines not back to baseline")

	// The slots are free again: a reading client is replayed to.
	s := b.openSSE(t, http.Header{"Last-Event-ID": {cursorBefore(base.Add(270 * time.Millisecond))}}, "?token="+b.token)
	_, m := typeOf(t, s.next(t).data)
	require.Equal(t, "big-270", m["name"])
}

// At most LIVE_REPLAY_CONCURRENCY replays run at once, and LIVE_REPLAY_PER_USER of one
// user's. A reconnect that finds no slot within a second is sent a resync with an
// unknown count instead of its replay (the client refetches through the query API), and
// its stream goes on with live events.
func TestSSEReplayConcurrencyIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) {
		o.cfg.ReplayMaxBytes = 64 << 20
		o.cfg.ReplayConcurrency = 2
		o.cfg.ReplayPerUser = 1
		o.cfg.ReplayTimeout = 5 * time.Second
	})
	ctx := context.Background()
	base := time.Now().UTC().Add(-20 * time.Minute).Truncate(time.Millisecond)
	b.storeBig(t, b.project.ID, 270, 60<<10, base)
	newUser := func(name string) (uuid.UUID, string) {
		u, err := pgstore.UpsertUser(ctx, b.pool, name, name+"-"+uuid.NewString()+"@example.com", "x")
		require.NoError(t, err)
		p, err := pgstore.CreateProject(ctx, b.pool, u.ID, name+"'s")
		require.NoError(t, err)
		return p.ID, b.issue(t, u.ID, time.Now())
	}
	busy := func() float64 {
		return b.metric(t, "pulseboard_api_live_resyncs_sent_total", map[string]string{"transport": "sse", "reason": "replay_busy"})
	}

	// Ada's first replay holds one slot (its client does not read).
	b.rawSSE(t, b.project.ID, b.token, cursorBefore(base))
	eventually(t, func() bool { return b.metric(t, "pulseboard_api_live_replays_running", nil) == 1 }, "the first replay did not start")
	// Her second one is over her own bound.
	s := b.openSSE(t, http.Header{"Last-Event-ID": {cursorBefore(base)}}, "?token="+b.token)
	require.JSONEq(t, `{"type":"resync","missed":-1}`, s.next(t).data)
	require.Equal(t, 1.0, busy())
	live := b.publish(t, b.newEvent("live", `{}`))
	require.Equal(t, live, s.next(t).data, "the refused replay's stream goes on live")

	// Bob's takes the second global slot.
	bobProject, bobToken := newUser("bob")
	b.storeBig(t, bobProject, 270, 60<<10, base)
	b.rawSSE(t, bobProject, bobToken, cursorBefore(base))
	eventually(t, func() bool { return b.metric(t, "pulseboard_api_live_replays_running", nil) == 2 }, "bob's replay did not start")
	// Carol's is over the global bound.
	carolProject, carolToken := newUser("carol")
	b.storeBig(t, carolProject, 1, 10, base)
	url := b.sseURL(carolProject.String()) + "?token=" + carolToken
	c, status := b.trySSE(t, url, http.Header{"Last-Event-ID": {cursorBefore(base)}})
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, c.next(t).data, `"connected"`)
	require.JSONEq(t, `{"type":"resync","missed":-1}`, c.next(t).data)
	require.Equal(t, 2.0, busy())
	require.Equal(t, 2.0, b.metric(t, "pulseboard_api_live_replays_running", nil))

	// When the stalled replays pass their deadline, the slots are free again.
	eventually(t, func() bool { return b.metric(t, "pulseboard_api_live_replays_running", nil) == 0 }, "the stalled replays kept their slots")
	c, status = b.trySSE(t, url, http.Header{"Last-Event-ID": {cursorBefore(base)}})
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, c.next(t).data, `"connected"`)
	_, m := typeOf(t, c.next(t).data)
	require.Equal(t, "big-1", m["name"])
}
