package live_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// The Socket.IO endpoint's limits, driven over raw Engine.IO 4 (the real
// socket.io-client is in api/socketio_test.go and the browser test in cmd/pulseboard).

// eioPolling is a raw Engine.IO polling session.
type eioPolling struct {
	t   testing.TB
	url string // …/socket.io/?EIO=4&transport=polling&sid=…
	sid string
	hc  *http.Client
}

func (b *bundle) eioOpen(t testing.TB) *eioPolling {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: waitFor}
	resp, err := hc.Get(b.srv.URL + "/socket.io/?EIO=4&transport=polling")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.True(t, strings.HasPrefix(string(body), "0{"), "%s", body)
	var open struct{ SID string }
	require.NoError(t, json.Unmarshal(body[1:], &open))
	return &eioPolling{t: t, url: b.srv.URL + "/socket.io/?EIO=4&transport=polling&sid=" + open.SID, sid: open.SID, hc: hc}
}

func (p *eioPolling) post(packets ...string) (int, string) {
	p.t.Helper()
	resp, err := p.hc.Post(p.url, "text/plain;charset=UTF-8", strings.NewReader(strings.Join(packets, "\x1e")))
	require.NoError(p.t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (p *eioPolling) poll() (int, []string) {
	p.t.Helper()
	resp, err := p.hc.Get(p.url)
	require.NoError(p.t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, []string{string(body)}
	}
	return resp.StatusCode, strings.Split(string(body), "\x1e")
}

// until polls until a packet with prefix arrives and returns it (pings are answered).
func (p *eioPolling) until(prefix string) string {
	p.t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		status, pkts := p.poll()
		require.Equal(p.t, http.StatusOK, status, "%v", pkts)
		for _, pk := range pkts {
			if pk == "2" {
				p.post("3")
			}
			if strings.HasPrefix(pk, prefix) {
				return pk
			}
		}
	}
	p.t.Fatalf("no packet %q", prefix)
	return ""
}

// requireEnded checks that the session is over: a poll gets the close packet (the
// session is ending) or 400 "Session ID unknown" (it is gone).
func (p *eioPolling) requireEnded() {
	p.t.Helper()
	status, pkts := p.poll()
	if status == http.StatusOK {
		require.Equal(p.t, []string{"1"}, pkts)
		return
	}
	require.Equal(p.t, http.StatusBadRequest, status, "%v", pkts)
	require.JSONEq(p.t, `{"code":1,"message":"Session ID unknown"}`, pkts[0])
}

// connect authenticates with auth.token and subscribes to the bundle's project.
func (p *eioPolling) connectAndSubscribe(b *bundle, token string) {
	p.t.Helper()
	status, _ := p.post(`40{"token":"` + token + `"}`)
	require.Equal(p.t, http.StatusOK, status)
	p.until(`40{"sid":`)
	p.post(fmt.Sprintf(`42["subscribe",%q]`, b.project.ID))
	require.Equal(p.t, fmt.Sprintf(`42["subscribed",{"projectId":"%s"}]`, b.project.ID), p.until(`42["subscribed"`))
}

// A Socket.IO client that stops polling is disconnected once its queue stayed full for
// WriteTimeout (the queue bounds what it holds: LIVE_QUEUE_SIZE / LIVE_QUEUE_BYTES, as
// for the other transports), and a reading client of the same project gets every event.
func TestSocketIOSlowClientIsDropped(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.WriteTimeout = 300 * time.Millisecond; o.cfg.QueueSize = 16 })
	slow := b.eioOpen(t)
	slow.connectAndSubscribe(b, b.token)
	fast := b.dialWS(t)
	require.Equal(t, 1.0, b.metric(t, "pulseboard_api_live_connections", map[string]string{"transport": "socketio"}))

	deadline := time.Now().Add(waitFor)
	for b.metric(t, "pulseboard_api_live_slow_clients_closed_total", map[string]string{"transport": "socketio", "reason": "queue_full"}) == 0 {
		require.True(t, time.Now().Before(deadline), "the client that does not poll was never disconnected")
		e := b.publish(t, b.newEvent("flood", `{}`))
		require.Equal(t, e, readWS(t, fast))
	}
	require.Positive(t, b.metric(t, "pulseboard_api_live_messages_dropped_total", map[string]string{"transport": "socketio"}))
	eventually(t, func() bool {
		return b.metric(t, "pulseboard_api_live_connections", map[string]string{"transport": "socketio"}) == 0
	}, "the slow socket was not released")
	slow.requireEnded()
}

// Packets from the client are bounded: a polling body over LIVE_MAX_MESSAGE_BYTES is
// 413 and ends the session; so does a second concurrent poll; a WebSocket message over
// it is closed with 1009; a binary packet with 1003.
func TestSocketIOInputLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.MaxMessageBytes = 512; o.cfg.MaxFrameBytes = 512 })
	p := b.eioOpen(t)
	status, body := p.post(`42["x","` + strings.Repeat("a", 600) + `"]`)
	require.Equal(t, http.StatusRequestEntityTooLarge, status, body)
	p.requireEnded()

	// Two polls at once: one waits, the other is refused and ends the session, which
	// answers the waiting one with the close packet.
	p = b.eioOpen(t)
	answers := make(chan string, 2)
	for range 2 {
		go func() {
			resp, err := p.hc.Get(p.url)
			if err != nil {
				answers <- err.Error()
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			answers <- fmt.Sprintf("%d %s", resp.StatusCode, body)
		}()
	}
	var got []string
	for range 2 {
		select {
		case a := <-answers:
			got = append(got, a)
		case <-time.After(waitFor):
			t.Fatalf("overlapping polls were not both answered: %v", got)
		}
	}
	require.ElementsMatch(t, []string{`400 {"code":3,"message":"Bad request"}`, "200 1"}, got)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	wsURL := "ws" + strings.TrimPrefix(b.srv.URL, "http") + "/socket.io/?EIO=4&transport=websocket"
	for _, tc := range []struct {
		typ  websocket.MessageType
		msg  string
		code websocket.StatusCode
	}{
		{websocket.MessageText, `42["x","` + strings.Repeat("a", 600) + `"]`, websocket.StatusMessageTooBig},
		{websocket.MessageBinary, "\x01\x02", websocket.StatusUnsupportedData},
	} {
		c, _, err := websocket.Dial(ctx, wsURL, nil)
		require.NoError(t, err)
		_, open, err := c.Read(ctx)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(string(open), `0{"sid":"`), "%s", open)
		require.Contains(t, string(open), `"upgrades":[]`)
		require.NoError(t, c.Write(ctx, tc.typ, []byte(tc.msg)))
		require.Equal(t, tc.code, readWSClose(t, c))
	}
	eventually(t, func() bool {
		return b.metric(t, "pulseboard_api_live_connections", map[string]string{"transport": "socketio"}) == 0
	},
		"sessions left open")
}

// A deleted project ends its subscription with an "error" event (the socket stays and
// can subscribe to another project); the token's exp closes the transport after an
// "error" event, without a DISCONNECT, so socket.io-client reconnects.
func TestSocketIOProjectDeletedAndTokenExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) {
		o.cfg.RevocationCheckInterval = 50 * time.Millisecond
		o.tokenTTL = 3 * time.Second
	})
	ctx := context.Background()
	other, err := pgstore.CreateProject(ctx, b.pool, b.user.ID, "other")
	require.NoError(t, err)
	p := b.eioOpen(t)
	p.connectAndSubscribe(b, b.token)
	p.post(fmt.Sprintf(`421["subscribe",{"projectId":%q}]`, other.ID))
	require.Equal(t, fmt.Sprintf(`431[{"projectId":"%s"}]`, other.ID), p.until(`431`))

	_, err = b.pool.Exec(ctx, `DELETE FROM projects WHERE id = $1`, b.project.ID)
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf(`42["error",{"code":"PROJECT_NOT_FOUND","message":"Project not found or access denied","projectId":"%s"}]`, b.project.ID),
		p.until(`42["error"`))
	ev := b.newEvent("still", `{}`)
	ev.ProjectID = other.ID
	e := b.publish(t, ev)
	require.Equal(t, `42["event",`+e+`]`, p.until(`42["event"`), "the other subscription stays")

	require.Equal(t, `42["error",{"code":"UNAUTHORIZED","message":"token expired"}]`, p.until(`42["error"`))
	require.Equal(t, "1", p.until("1"), "then the close packet, on a poll of its own")
	p.requireEnded()
}

// Hub.Close ends sessions that never authenticated too: a waiting poll gets the close
// packet, and no goroutine is left (TestMain's goleak check).
func TestSocketIOCloseEndsPendingSessions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := b.eioOpen(t)
	got := make(chan []string, 1)
	go func() {
		resp, err := p.hc.Get(p.url)
		if err != nil {
			got <- []string{err.Error()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		got <- []string{string(body)}
	}()
	time.Sleep(100 * time.Millisecond) // the poll is waiting
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	b.hub.Close(ctx)
	select {
	case pkts := <-got:
		require.Equal(t, []string{"1"}, pkts)
	case <-time.After(waitFor):
		t.Fatal("the waiting poll was not ended by Close")
	}
	resp, err := p.hc.Get(b.srv.URL + "/socket.io/?EIO=4&transport=polling")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}
