package live_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/api/internal/live"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv/faultproxy"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// Every client of a project gets every event, in order, whichever way it authenticated;
// a client leaving (even the last one, which unsubscribes) never affects the others.
func TestFanOutToEveryClientInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pid := b.project.ID.String()
	ws1 := b.dialWS(t) // ?token=
	ws2 := b.dialWSWith(t, b.wsURL(pid), &websocket.DialOptions{Subprotocols: []string{"bearer", b.token}})
	require.Equal(t, "bearer", ws2.Subprotocol(), "the bearer subprotocol must be selected, never the token")
	sse := b.openSSE(t, http.Header{"Authorization": {"Bearer " + b.token}}, "")
	require.Equal(t, 3.0, b.sumMetric(t, "pulseboard_api_live_connections"))

	var want []string
	for i := range 20 {
		want = append(want, b.publish(t, b.newEvent(fmt.Sprintf("e%d", i), fmt.Sprintf(`{"i":%d}`, i))))
	}
	for i, w := range want {
		require.Equal(t, w, readWS(t, ws1), "ws1 message %d", i)
		require.Equal(t, w, readWS(t, ws2), "ws2 message %d", i)
		ev := sse.next(t)
		require.Equal(t, w, ev.data, "sse message %d", i)
		require.True(t, ev.hasID)
	}

	// One client leaves: the others keep receiving.
	require.NoError(t, ws1.Close(websocket.StatusNormalClosure, "bye"))
	eventually(t, func() bool { return b.sumMetric(t, "pulseboard_api_live_connections") == 2 }, "ws1 not released")
	// A stream of another project needs a subscription pass, which runs after the one
	// that handled ws1 leaving: once it is connected, that leave has had its effect.
	other, err := pgstore.CreateProject(context.Background(), b.pool, b.user.ID, "other")
	require.NoError(t, err)
	oc, _, err := websocket.Dial(context.Background(), b.wsURL(other.ID.String())+"?token="+b.token, nil)
	require.NoError(t, err)
	_ = readWS(t, oc)
	e := b.publish(t, b.newEvent("after-ws1", `{}`))
	require.Equal(t, e, readWS(t, ws2))
	require.Equal(t, e, sse.next(t).data)
	require.NoError(t, oc.Close(websocket.StatusNormalClosure, "bye"))

	// Everyone leaves (the subscription goes), then a new client comes back.
	require.NoError(t, ws2.Close(websocket.StatusNormalClosure, "bye"))
	require.NoError(t, sse.resp.Body.Close())
	eventually(t, func() bool { return b.sumMetric(t, "pulseboard_api_live_connections") == 0 }, "streams not released")
	ws3 := b.dialWSWith(t, b.wsURL(pid), &websocket.DialOptions{HTTPHeader: http.Header{
		"Authorization": {"Bearer " + b.token}, "Origin": {allowedOrigin}}})
	e = b.publish(t, b.newEvent("after-resubscribe", `{}`))
	require.Equal(t, e, readWS(t, ws3))
}

// Every refusal happens before the upgrade, as a JSON error.
func TestRefusedBeforeUpgrade(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.MaxConnsPerUser = 2 })
	ctx := context.Background()
	pid := b.project.ID.String()

	other, err := pgstore.UpsertUser(ctx, b.pool, "Bob", "bob-"+uuid.NewString()+"@example.com", "x")
	require.NoError(t, err)
	othersProject, err := pgstore.CreateProject(ctx, b.pool, other.ID, "bob's")
	require.NoError(t, err)
	revokedUser, err := pgstore.UpsertUser(ctx, b.pool, "Eve", "eve-"+uuid.NewString()+"@example.com", "x")
	require.NoError(t, err)
	revokedProject, err := pgstore.CreateProject(ctx, b.pool, revokedUser.ID, "eve's")
	require.NoError(t, err)
	revokedToken := b.issue(t, revokedUser.ID, time.Now())
	_, err = b.pool.Exec(ctx, `UPDATE users SET tokens_valid_after = now() + interval '1 minute' WHERE id = $1`, revokedUser.ID)
	require.NoError(t, err)
	// Expired 5 s ago: inside the parser's 30 s leeway, but streams get no leeway.
	expired := b.issue(t, b.user.ID, time.Now().Add(-15*time.Minute-5*time.Second))

	cases := []struct {
		name    string
		project string
		query   string
		header  http.Header
		status  int
		code    string
	}{
		{name: "no token", project: pid, status: 401, code: "UNAUTHORIZED"},
		{name: "garbage token", project: pid, query: "?token=abc", status: 401, code: "UNAUTHORIZED"},
		{name: "expired token", project: pid, query: "?token=" + expired, status: 401, code: "UNAUTHORIZED"},
		{name: "revoked token", project: revokedProject.ID.String(), query: "?token=" + revokedToken, status: 401, code: "UNAUTHORIZED"},
		{name: "basic auth", project: pid, header: http.Header{"Authorization": {"Basic YTpi"}}, query: "?token=" + b.token, status: 401, code: "UNAUTHORIZED"},
		{name: "bad origin", project: pid, query: "?token=" + b.token, header: http.Header{"Origin": {"https://evil.example"}}, status: 403, code: "FORBIDDEN_ORIGIN"},
		{name: "null origin", project: pid, query: "?token=" + b.token, header: http.Header{"Origin": {"null"}}, status: 403, code: "FORBIDDEN_ORIGIN"},
		{name: "another user's project", project: othersProject.ID.String(), query: "?token=" + b.token, status: 404, code: "PROJECT_NOT_FOUND"},
		{name: "missing project", project: uuid.NewString(), query: "?token=" + b.token, status: 404, code: "PROJECT_NOT_FOUND"},
		{name: "malformed project id", project: "not-a-uuid", query: "?token=" + b.token, status: 404, code: "PROJECT_NOT_FOUND"},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/ws", func(t *testing.T) {
			dctx, cancel := context.WithTimeout(ctx, waitFor)
			defer cancel()
			c, resp, err := websocket.Dial(dctx, b.wsURL(tc.project)+tc.query, &websocket.DialOptions{HTTPHeader: tc.header})
			require.Error(t, err)
			require.Nil(t, c)
			requireJSONError(t, resp, tc.status, tc.code)
		})
		t.Run(tc.name+"/sse", func(t *testing.T) {
			requireSSERefused(t, b.sseURL(tc.project)+tc.query, tc.header, tc.status, tc.code)
		})
	}

	t.Run("plain GET on the WebSocket route", func(t *testing.T) {
		resp, err := http.Get(b.srv.URL + "/realtime/" + pid + "?token=" + b.token)
		require.NoError(t, err)
		requireJSONError(t, resp, 400, "BAD_REQUEST")
	})

	t.Run("too many streams for one user", func(t *testing.T) {
		b.dialWS(t)
		b.openSSE(t, nil, "?token="+b.token)
		dctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		_, resp, err := websocket.Dial(dctx, b.wsURL(pid)+"?token="+b.token, nil)
		require.Error(t, err)
		requireJSONError(t, resp, 429, "RATE_LIMITED")
		require.NotEmpty(t, resp.Header.Get("Retry-After"))
		requireSSERefused(t, b.sseURL(pid)+"?token="+b.token, nil, 429, "RATE_LIMITED")
	})
	require.Positive(t, b.metric(t, "pulseboard_api_live_rejected_total", map[string]string{"transport": "ws", "reason": "not_found"}))
}

func requireJSONError(t *testing.T, resp *http.Response, status int, code string) {
	t.Helper()
	require.NotNil(t, resp)
	defer resp.Body.Close()
	require.Equal(t, status, resp.StatusCode, "no 101: refused before the upgrade")
	require.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	var body struct {
		Success *bool  `json:"success"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.NotNil(t, body.Success)
	require.False(t, *body.Success)
	require.Equal(t, code, body.Code)
	require.NotEmpty(t, body.Message)
}

func requireSSERefused(t *testing.T, url string, header http.Header, status int, code string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	requireJSONError(t, resp, status, code)
}

// A client that stops reading is disconnected after the write deadline; the other
// clients keep receiving every event.
func TestClientThatStopsReadingIsDisconnected(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.WriteTimeout = time.Second; o.cfg.QueueSize = 16 })
	stalled := b.dialWS(t)
	fast := b.dialWS(t)
	big := `{"blob":"` + strings.Repeat("x", 32<<10) + `"}`

	labels := map[string]string{"transport": "ws"}
	var sent []string
	deadline := time.Now().Add(waitFor)
	for b.sumMetric(t, "pulseboard_api_live_slow_clients_closed_total") == 0 {
		require.True(t, time.Now().Before(deadline), "the stalled client was never disconnected")
		e := b.publish(t, b.newEvent("big", big))
		sent = append(sent, e)
		require.Equal(t, e, readWS(t, fast), "the fast client must get every event while the other stalls")
	}
	eventually(t, func() bool { return b.metric(t, "pulseboard_api_live_connections", labels) == 1 }, "stalled client not released")
	for range 3 {
		e := b.publish(t, b.newEvent("after", `{}`))
		require.Equal(t, e, readWS(t, fast))
	}
	// The stalled client's connection is gone: reading drains what the kernel holds,
	// then fails.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for {
		if _, _, err := stalled.Read(ctx); err != nil {
			require.NoError(t, ctx.Err(), "the stalled client's connection was not closed")
			break
		}
	}
	t.Logf("stalled client disconnected after %d events of 32 KiB", len(sent))
}

// Messages dropped for a client whose queue was full are reported with a resync that
// counts them, once the client has room again, and delivery continues in order.
func TestOverflowSendsResync(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.QueueSize = 4; o.cfg.WriteTimeout = 20 * time.Second })
	c := b.dialWS(t)
	big := `{"blob":"` + strings.Repeat("y", 60<<10) + `"}`
	labels := map[string]string{"transport": "ws"}

	// The client does not read: big events fill the socket buffers until the writer
	// blocks, then the queue overflows.
	var published []string
	deadline := time.Now().Add(waitFor)
	for b.metric(t, "pulseboard_api_live_messages_dropped_total", labels) < 5 {
		require.True(t, time.Now().Before(deadline), "no message was ever dropped")
		payload := `{}`
		if len(published) < 300 {
			payload = big
		}
		published = append(published, b.publish(t, b.newEvent(fmt.Sprintf("p%d", len(published)), payload)))
	}

	// The client reads again: events in publish order with the dropped ones missing, and
	// resyncs counting them. After each resync a marker event is published (it may be
	// dropped too, while the dispatcher works through its backlog); once the latest
	// marker arrives, every drop before it has been reported.
	next, missed, marker := 0, 0.0, ""
	for {
		msg := readWS(t, c)
		typ, m := typeOf(t, msg)
		if typ == "resync" {
			missed += m["missed"].(float64)
			marker = fmt.Sprintf("marker-%d", len(published))
			published = append(published, b.publish(t, b.newEvent(marker, `{}`)))
			continue
		}
		require.Empty(t, typ)
		for next < len(published) && published[next] != msg {
			next++ // dropped
		}
		require.Less(t, next, len(published), "an event arrived out of order or twice")
		next++
		if marker != "" && m["name"] == marker {
			break
		}
	}
	dropped := b.metric(t, "pulseboard_api_live_messages_dropped_total", labels)
	require.Positive(t, missed)
	require.Equal(t, dropped, missed, "the resync must count every dropped message")
	require.Positive(t, b.metric(t, "pulseboard_api_live_resyncs_sent_total", map[string]string{"transport": "ws", "reason": "overflow"}))
	require.Equal(t, 1.0, b.metric(t, "pulseboard_api_live_connections", labels), "an overflow alone must not close the client")
}

// Client frames are bounded per frame and per message (1009) and text must be UTF-8
// (1007); a message at the limit is fine.
func TestClientFrameLimits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	write := func(t *testing.T, c *websocket.Conn, parts ...[]byte) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if len(parts) == 1 {
			require.NoError(t, c.Write(ctx, websocket.MessageText, parts[0]))
			return
		}
		w, err := c.Writer(ctx, websocket.MessageText)
		require.NoError(t, err)
		for _, p := range parts {
			_, err := w.Write(p) // one frame per Write
			require.NoError(t, err)
		}
		require.NoError(t, w.Close())
	}
	kb := func(n int) []byte { return []byte(strings.Repeat("a", n)) }

	t.Run("oversize frame", func(t *testing.T) {
		c := b.dialWS(t)
		write(t, c, kb(4097))
		require.Equal(t, websocket.StatusMessageTooBig, readWSClose(t, c))
	})
	t.Run("oversize fragmented message", func(t *testing.T) {
		c := b.dialWS(t)
		write(t, c, kb(2000), kb(2000), kb(2000)) // every frame under the cap, the message over
		require.Equal(t, websocket.StatusMessageTooBig, readWSClose(t, c))
	})
	t.Run("invalid UTF-8", func(t *testing.T) {
		c := b.dialWS(t)
		write(t, c, []byte{'o', 'k', 0xc3, 0x28})
		require.Equal(t, websocket.StatusInvalidFramePayloadData, readWSClose(t, c))
	})
	t.Run("frame flood", func(t *testing.T) {
		c := b.dialWS(t)
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		for range 150 {
			if c.Write(ctx, websocket.MessageText, []byte("hi")) != nil {
				break // the server may already have closed
			}
		}
		require.Equal(t, websocket.StatusPolicyViolation, readWSClose(t, c))
	})
	t.Run("at the limit", func(t *testing.T) {
		c := b.dialWS(t)
		write(t, c, kb(2048), kb(2048))
		write(t, c, kb(4096))
		e := b.publish(t, b.newEvent("still-open", `{}`))
		require.Equal(t, e, readWS(t, c), "the connection must stay open")
	})
}

// The server pings; a client that answers stays, one that never answers is dropped
// after 2.5 × PingInterval.
func TestPingKeepsLiveClientsAndDropsSilentOnes(t *testing.T) {
	t.Parallel()
	// Long enough that a reader starved on a loaded machine still answers within 2.5 ×
	// ping (100 ms failed at load 17); the loop below still spans three read deadlines.
	const ping = 500 * time.Millisecond
	b := setup(t, func(o *setupOpts) { o.cfg.PingInterval = ping })
	b.dialWS(t) // silent: never reads, so never answers a ping
	alive := b.dialWS(t)
	msgs := make(chan string, 64)
	go func() { // reading answers the pings
		defer close(msgs)
		for {
			_, data, err := alive.Read(context.Background())
			if err != nil {
				return
			}
			msgs <- string(data)
		}
	}()
	labels := map[string]string{"transport": "ws"}
	eventually(t, func() bool { return b.metric(t, "pulseboard_api_live_connections", labels) == 1 }, "the silent client was not dropped")

	// The live client outlives many read deadlines (it sends nothing but pongs).
	tick := time.NewTicker(ping)
	defer tick.Stop()
	for range 8 {
		<-tick.C
		e := b.publish(t, b.newEvent("tick", `{}`))
		select {
		case got, ok := <-msgs:
			require.True(t, ok, "the live client was disconnected")
			require.Equal(t, e, got)
		case <-time.After(waitFor):
			t.Fatal("no event")
		}
	}
	require.Equal(t, 1.0, b.metric(t, "pulseboard_api_live_connections", labels))
	require.NoError(t, alive.Close(websocket.StatusNormalClosure, ""))
	for range msgs {
	}
}

// A stream ends when its token expires, at exp and not 30 s later (the parser's leeway).
func TestTokenExpiryClosesStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.tokenTTL = 2 * time.Second })
	b.token = b.issue(t, b.user.ID, time.Now())
	claims, err := b.tokens.Verify(b.token)
	require.NoError(t, err)
	exp := claims.ExpiresAt.Time
	c := b.dialWS(t)
	sse := b.openSSE(t, nil, "?token="+b.token)

	require.Equal(t, websocket.StatusCode(4001), readWSClose(t, c))
	closedAt := time.Now()
	sse.ended(t)
	require.False(t, closedAt.Before(exp.Add(-50*time.Millisecond)), "closed before exp")
	require.Less(t, closedAt.Sub(exp), 5*time.Second, "closed long after exp")
	requireSSERefused(t, b.sseURL(b.project.ID.String())+"?token="+b.token, nil, 401, "UNAUTHORIZED")
}

// Logging out everywhere (tokens_valid_after) and deleting the project close open streams.
func TestRevocationClosesOpenStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.RevocationCheckInterval = 50 * time.Millisecond })
	c := b.dialWS(t)
	sse := b.openSSE(t, nil, "?token="+b.token)
	_, err := b.pool.Exec(context.Background(), `UPDATE users SET tokens_valid_after = now() + interval '2 seconds' WHERE id = $1`, b.user.ID)
	require.NoError(t, err)
	require.Equal(t, websocket.StatusCode(4001), readWSClose(t, c))
	sse.ended(t)
}

// CloseUser ("log out everywhere", issue 16 item 6) closes the user's streams at once,
// without waiting for the revocation check (here an hour), and only theirs.
func TestCloseUserClosesOnlyThatUsersStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.RevocationCheckInterval = time.Hour })
	c := b.dialWS(t)
	sse := b.openSSE(t, nil, "?token="+b.token)
	require.Zero(t, b.hub.CloseUser(uuid.New()), "another user has no streams")
	require.Equal(t, 2, b.hub.CloseUser(b.user.ID))
	require.Equal(t, websocket.StatusCode(4001), readWSClose(t, c))
	sse.ended(t)
}

// Close ends every stream (WebSocket 1001) and refuses new ones.
func TestCloseSendsGoingAway(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c1 := b.dialWS(t)
	c2 := b.dialWS(t)
	sse := b.openSSE(t, nil, "?token="+b.token)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	done := make(chan struct{})
	go func() { b.hub.Close(ctx); close(done) }()
	require.Equal(t, websocket.StatusGoingAway, readWSClose(t, c1))
	require.Equal(t, websocket.StatusGoingAway, readWSClose(t, c2))
	sse.ended(t)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
	require.Zero(t, b.sumMetric(t, "pulseboard_api_live_connections"))
	requireSSERefused(t, b.sseURL(b.project.ID.String())+"?token="+b.token, nil, 503, "UNAVAILABLE")
}

// Redis goes away (docs/reliability.md F14): open streams stay; a stream of a project not yet
// subscribed is refused with 503 rather than told "connected" with nothing behind it;
// once Redis is back, go-redis re-subscribes, the clients are told to resync (whatever
// was published in the gap is lost) and delivery resumes.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	opts, err := redis.ParseURL(redistest.URL(t))
	require.NoError(t, err)
	proxy := faultproxy.New(t, opts.Addr)
	opts.Addr = proxy.Addr()
	hubRedis := redis.NewClient(opts)
	t.Cleanup(func() { _ = hubRedis.Close() })
	b := setup(t, func(o *setupOpts) { o.redis = hubRedis; o.cfg.SubscribeTimeout = 500 * time.Millisecond })
	other, err := pgstore.CreateProject(context.Background(), b.pool, b.user.ID, "second")
	require.NoError(t, err)
	otherURL := b.wsURL(other.ID.String()) + "?token=" + b.token

	c := b.dialWS(t)
	sse := b.openSSE(t, nil, "?token="+b.token)
	e := b.publish(t, b.newEvent("before", `{}`))
	require.Equal(t, e, readWS(t, c))
	require.Equal(t, e, sse.next(t).data)

	proxy.Cut()
	dctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, resp, err := websocket.Dial(dctx, otherURL, nil)
	require.Error(t, err)
	requireJSONError(t, resp, 503, "UNAVAILABLE")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))

	proxy.Restore()
	require.JSONEq(t, `{"type":"resync","missed":-1}`, readWS(t, c))
	require.JSONEq(t, `{"type":"resync","missed":-1}`, sse.next(t).data)
	e = b.publish(t, b.newEvent("after", `{}`))
	require.Equal(t, e, readWS(t, c))
	require.Equal(t, e, sse.next(t).data)
	require.Equal(t, 1.0, b.metric(t, "pulseboard_api_live_redis_resubscriptions_total", nil))

	// The other project can be streamed again.
	oc, resp, err := websocket.Dial(dctx, otherURL, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	t.Cleanup(func() { _ = oc.CloseNow() })
	require.JSONEq(t, fmt.Sprintf(`{"type":"connected","projectId":%q}`, other.ID), readWS(t, oc))
	oe := b.newEvent("other", `{}`)
	oe.ProjectID = other.ID
	require.Equal(t, b.publish(t, oe), readWS(t, oc))
}

// Config.Validate catches nonsense; New refuses missing dependencies.
func TestConfigAndDepsValidation(t *testing.T) {
	t.Parallel()
	require.Error(t, live.Config{AllowedOrigins: []string{"*"}}.Validate())
	require.Error(t, live.Config{QueueSize: -1, MaxFrameBytes: 10}.Validate())
	require.NoError(t, live.Config{}.Validate())
	_, err := live.New(live.Config{}, live.Deps{})
	require.Error(t, err)
}
