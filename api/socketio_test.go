package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/testenv/nodepkg"
)

// sioLine is one thing a socket of the Node client saw (testdata/socketio/client.js).
type sioLine struct {
	ID        string            `json:"id"`
	Ev        string            `json:"ev"`
	Transport string            `json:"transport"`
	Message   string            `json:"message"`
	Data      json.RawMessage   `json:"data"`
	Reason    string            `json:"reason"`
	Args      []json.RawMessage `json:"args"`
}

func (l sioLine) arg(t *testing.T) map[string]any {
	t.Helper()
	require.NotEmpty(t, l.Args, "%+v", l)
	var m map[string]any
	require.NoError(t, json.Unmarshal(l.Args[0], &m), "%s", l.Args[0])
	return m
}

// sioClients is the real socket.io-client (npm, pinned in testdata/socketio) under
// Node 20, driven over a line protocol: several sockets, each with an id.
type sioClients struct {
	t      *testing.T
	stdin  io.WriteCloser
	lines  chan sioLine
	stderr *syncBuf
	mu     sync.Mutex
	held   map[string][]sioLine // lines read while waiting for another socket
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startSIOClients(t *testing.T) *sioClients {
	t.Helper()
	dir := nodepkg.Install(t, filepath.Join("testdata", "socketio"))
	cmd := exec.Command(nodepkg.Node(t), filepath.Join(dir, "client.js"))
	cmd.Dir = dir
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	c := &sioClients{t: t, stdin: stdin, lines: make(chan sioLine, 1024), stderr: &syncBuf{}, held: map[string][]sioLine{}}
	cmd.Stderr = c.stderr
	require.NoError(t, cmd.Start())
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l sioLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				c.stderr.Write([]byte("unparsable line: " + sc.Text() + "\n"))
				continue
			}
			c.lines <- l
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close() // the script disconnects every socket and exits
		exited := make(chan error, 1)
		go func() { <-readDone; exited <- cmd.Wait() }()
		select {
		case <-exited:
		case <-time.After(waitFor):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("node stderr:\n%s", c.stderr.String())
		}
	})
	return c
}

func (c *sioClients) send(cmd map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(cmd)
	require.NoError(c.t, err)
	_, err = c.stdin.Write(append(b, '\n'))
	require.NoError(c.t, err)
}

// connect opens socket id on url with the given socket.io-client options.
func (c *sioClients) connect(id, url string, opts map[string]any) {
	cmd := map[string]any{"op": "connect", "id": id, "url": url}
	for k, v := range opts {
		cmd[k] = v
	}
	c.send(cmd)
}

func (c *sioClients) emit(id, event string, args ...any) {
	c.send(map[string]any{"op": "emit", "id": id, "event": event, "args": args})
}

func (c *sioClients) emitAck(id, event string, args ...any) {
	c.send(map[string]any{"op": "emit", "id": id, "event": event, "args": args, "ack": true})
}

// next returns socket id's next line, other sockets' lines being held for them.
func (c *sioClients) next(id string, within time.Duration) (sioLine, bool) {
	c.t.Helper()
	c.mu.Lock()
	if h := c.held[id]; len(h) > 0 {
		l := h[0]
		c.held[id] = h[1:]
		c.mu.Unlock()
		return l, true
	}
	c.mu.Unlock()
	timeout := time.After(within)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("the Node client exited; stderr:\n%s", c.stderr.String())
			}
			if l.ID == id {
				return l, true
			}
			c.mu.Lock()
			c.held[l.ID] = append(c.held[l.ID], l)
			c.mu.Unlock()
		case <-timeout:
			return sioLine{}, false
		}
	}
}

// expect returns socket id's next line other than an upgrade notice, which must be ev.
func (c *sioClients) expect(id, ev string) sioLine {
	c.t.Helper()
	for {
		l, ok := c.next(id, waitFor)
		require.True(c.t, ok, "socket %s: no %q within %s", id, ev, waitFor)
		if l.Ev == "upgrade" && ev != "upgrade" {
			continue
		}
		require.Equal(c.t, ev, l.Ev, "socket %s: %+v (args %s)", id, l, joinRaw(l.Args))
		return l
	}
}

// quiet checks that socket id sees nothing but upgrade notices for d.
func (c *sioClients) quiet(id string, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		l, ok := c.next(id, left)
		if !ok {
			return
		}
		require.Equal(c.t, "upgrade", l.Ev, "socket %s: unexpected %+v (args %s)", id, l, joinRaw(l.Args))
	}
}

func joinRaw(rs []json.RawMessage) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = string(r)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// storeAndPublish does what the consumer does for a stored event: the row, then the
// PUBLISH of its JSON on the project's channel. It returns the published JSON.
func (b *bundle) storeAndPublish(projectID, name string, i int) string {
	b.t.Helper()
	now := time.Now().UTC().Truncate(event.Precision)
	e := event.Event{
		ID: uuid.Must(uuid.NewV7()), ProjectID: uuid.MustParse(projectID), Type: event.TypeEvent, Name: name,
		Payload: []byte(fmt.Sprintf(`{"i":%d,"text":"héllo \u2028 \"q\""}`, i)), Context: []byte(`{"os":"ios"}`),
		Timestamp: now, ReceivedAt: now,
	}
	ctxJSON := string(e.Context)
	b.insertEvents(projectID, []eventRow{{id: e.ID, typ: e.Type, name: e.Name, payload: string(e.Payload), context: &ctxJSON, timestamp: e.Timestamp, receivedAt: e.ReceivedAt}})
	js := e.AppendJSON(nil)
	require.NoError(b.t, b.rdb.Publish(context.Background(), redisx.EventsChannel(e.ProjectID), js).Err())
	return string(js)
}

// Issue 17 acceptance 1: the real socket.io-client 4.8 (the reference dashboard's
// client, npm, pinned) against /socket.io/: connect with a Bearer header (polling
// handshake, then the upgrade to WebSocket), subscribe, receive the stored events in
// order as the WebSocket stream's event objects; a bad or missing token gets
// connect_error UNAUTHORIZED; auth.token works too (on a WebSocket-only connection);
// another user's project, an unknown one and a malformed id are refused with an
// "error" event while the socket stays connected; unsubscribe answers unsubscribed and
// stops the events; the per-user stream limit refuses a socket with RATE_LIMITED; and
// logout (the revocation check) and logout-all (at once) close the sockets with a
// server disconnect.
func TestSocketIOWithTheRealClient(t *testing.T) {
	t.Parallel()
	b := setup(t, withRealLive(), withEnv("LIVE_REVOCATION_CHECK_INTERVAL", "200ms", "LIVE_MAX_CONNS_PER_USER", "2"))
	alice, _ := b.newUser("Sio Alice")
	bob, _ := b.newUser("Sio Bob")
	pa := alice.createProject("alice app")["id"].(string)
	pb := bob.createProject("bob app")["id"].(string)
	bearer := func(c *client) map[string]any {
		return map[string]any{"extraHeaders": map[string]string{"Authorization": "Bearer " + c.token}}
	}
	sio := startSIOClients(t)

	// Connect as the dashboard does; the client upgrades from polling to WebSocket.
	sio.connect("a", b.base, bearer(alice))
	for seen := map[string]bool{}; !seen["connect"] || !seen["upgrade"]; {
		l, ok := sio.next("a", waitFor)
		require.True(t, ok, "socket a: connect and upgrade within %s (seen %v)", waitFor, seen)
		require.Contains(t, []string{"connect", "upgrade"}, l.Ev, "%+v", l)
		if l.Ev == "upgrade" {
			require.Equal(t, "websocket", l.Transport)
		}
		seen[l.Ev] = true
	}
	sio.emit("a", "subscribe", pa)
	require.Equal(t, map[string]any{"projectId": pa}, sio.expect("a", "subscribed").arg(t))

	var published []string
	for i := range 5 {
		published = append(published, b.storeAndPublish(pa, fmt.Sprintf("sio-%d", i), i))
	}
	for i := range 5 {
		got := sio.expect("a", "event")
		require.Len(t, got.Args, 1)
		require.JSONEq(t, published[i], string(got.Args[0]), "event %d: the WebSocket stream's object, in order", i)
	}
	require.Equal(t, 5, b.count(`SELECT count(*) FROM events WHERE project_id = $1`, pa))

	// Bad, missing and malformed credentials: connect_error with the code as message.
	sio.connect("bad", b.base, map[string]any{"extraHeaders": map[string]string{"Authorization": "Bearer not-a-jwt"}})
	bad := sio.expect("bad", "connect_error")
	require.Equal(t, "UNAUTHORIZED", bad.Message)
	require.JSONEq(t, `{"code":"UNAUTHORIZED","message":"Invalid or expired token"}`, string(bad.Data))
	sio.connect("none", b.base, nil)
	none := sio.expect("none", "connect_error")
	require.Equal(t, "UNAUTHORIZED", none.Message)
	require.JSONEq(t, `{"code":"UNAUTHORIZED","message":"Authentication required"}`, string(none.Data))
	sio.connect("basic", b.base, map[string]any{"extraHeaders": map[string]string{"Authorization": "Basic eDp5"}, "transports": []string{"websocket"}})
	require.Equal(t, "UNAUTHORIZED", sio.expect("basic", "connect_error").Message)

	// auth.token (with "Bearer ", as an app that refreshes sets socket.auth) on a
	// WebSocket-only connection, which a browser opens without headers.
	sio.connect("b", b.base, map[string]any{"auth": map[string]string{"token": "Bearer " + bob.token}, "transports": []string{"websocket"}})
	require.Equal(t, "websocket", sio.expect("b", "connect").Transport)
	sio.emit("b", "subscribe", pa) // alice's
	refused := sio.expect("b", "error").arg(t)
	require.Equal(t, map[string]any{"code": "PROJECT_NOT_FOUND", "message": "Project not found or access denied", "projectId": pa}, refused)
	sio.emit("b", "subscribe", uuid.NewString())
	require.Equal(t, "PROJECT_NOT_FOUND", sio.expect("b", "error").arg(t)["code"])
	sio.emit("b", "subscribe", "not-a-uuid")
	require.Equal(t, "PROJECT_NOT_FOUND", sio.expect("b", "error").arg(t)["code"])
	sio.emit("b", "subscribe", 42)
	require.Equal(t, "VALIDATION_FAILED", sio.expect("b", "error").arg(t)["code"])
	// Still connected: its own project, given as {projectId}, with an acknowledgement.
	sio.emitAck("b", "subscribe", map[string]string{"projectId": pb})
	require.Equal(t, map[string]any{"projectId": pb}, sio.expect("b", "subscribed").arg(t))
	require.Equal(t, map[string]any{"projectId": pb}, sio.expect("b", "ack:subscribe").arg(t))
	evB := b.storeAndPublish(pb, "bob-1", 1)
	require.JSONEq(t, evB, string(sio.expect("b", "event").Args[0]))
	sio.quiet("a", 300*time.Millisecond) // alice sees nothing of bob's project

	// Unsubscribe: answered, and the events stop; subscribing again resumes them.
	sio.emit("a", "unsubscribe", pa)
	require.Equal(t, map[string]any{"projectId": pa}, sio.expect("a", "unsubscribed").arg(t))
	b.storeAndPublish(pa, "while-unsubscribed", 98)
	sio.quiet("a", 300*time.Millisecond)
	sio.emit("a", "subscribe", pa)
	sio.expect("a", "subscribed")
	// A second socket of alice's stays on long polling (no upgrade).
	polling := bearer(alice)
	polling["transports"] = []string{"polling"}
	sio.connect("a2", b.base, polling)
	require.Equal(t, "polling", sio.expect("a2", "connect").Transport)
	sio.emit("a2", "subscribe", pa)
	sio.expect("a2", "subscribed")
	again := b.storeAndPublish(pa, "after-resubscribe", 99)
	require.JSONEq(t, again, string(sio.expect("a", "event").Args[0]))
	require.JSONEq(t, again, string(sio.expect("a2", "event").Args[0]))

	// LIVE_MAX_CONNS_PER_USER=2: a third socket of alice's is refused.
	sio.connect("a3", b.base, bearer(alice))
	tooMany := sio.expect("a3", "connect_error")
	require.Equal(t, "RATE_LIMITED", tooMany.Message)
	require.Equal(t, "RATE_LIMITED", tooMany.arg0Data(t)["code"])
	require.Equal(t, 3.0, b.labelledGauge("pulseboard_api_live_connections", map[string]string{"transport": "socketio"}),
		"alice's two sockets and bob's one")

	// Logout (this session, found by the revocation check) closes alice's sockets with
	// an error and a server disconnect: socket.io-client does not reconnect.
	require.Equal(t, http.StatusOK, alice.do("POST", "/auth/logout", nil).status)
	for _, id := range []string{"a", "a2"} {
		gone := sio.expect(id, "error").arg(t)
		require.Equal(t, "UNAUTHORIZED", gone["code"])
		require.Equal(t, "io server disconnect", sio.expect(id, "disconnect").Reason)
	}
	// Logout everywhere closes bob's at once.
	start := time.Now()
	require.Equal(t, http.StatusOK, bob.do("POST", "/auth/logout-all", nil).status)
	require.Equal(t, "UNAUTHORIZED", sio.expect("b", "error").arg(t)["code"])
	require.Equal(t, "io server disconnect", sio.expect("b", "disconnect").Reason)
	require.Less(t, time.Since(start), 2*time.Second)

	eventually(t, func() bool {
		return b.labelledGauge("pulseboard_api_live_connections", map[string]string{"transport": "socketio"}) == 0
	}, "every socket released")
	require.GreaterOrEqual(t, b.counter("pulseboard_api_live_messages_sent_total", map[string]string{"transport": "socketio"}), 7.0)
	require.GreaterOrEqual(t, b.counter("pulseboard_api_live_rejected_total", map[string]string{"transport": "socketio", "reason": "unauthorized"}), 3.0)
}

// arg0Data is the err.data of a connect_error.
func (l sioLine) arg0Data(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(l.Data, &m), "%s", l.Data)
	return m
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The endpoint's transport-level answers without a client library: the Origin check
// (403, Engine.IO code 4, like the other live streams' CSWSH defence), an allowed
// origin's CORS headers on the handshake, the protocol version, unknown sessions.
func TestSocketIOHandshakeChecks(t *testing.T) {
	t.Parallel()
	b := setup(t, withRealLive())
	c := b.client()

	r := c.do("GET", "/socket.io/?EIO=4&transport=polling", nil, "Origin", evilOrigin)
	require.Equal(t, http.StatusForbidden, r.status)
	require.JSONEq(t, `{"code":4,"message":"Forbidden"}`, string(r.body))
	require.Empty(t, r.header.Get("Access-Control-Allow-Origin"))

	r = c.do("GET", "/socket.io/?EIO=4&transport=polling", nil, "Origin", dashboardOrigin)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, dashboardOrigin, r.header.Get("Access-Control-Allow-Origin"))
	require.True(t, strings.HasPrefix(string(r.body), `0{"sid":"`), "%s", r.body)
	var open struct {
		SID          string   `json:"sid"`
		Upgrades     []string `json:"upgrades"`
		PingInterval int      `json:"pingInterval"`
		MaxPayload   int      `json:"maxPayload"`
	}
	require.NoError(t, json.Unmarshal(r.body[1:], &open))
	require.Equal(t, []string{"websocket"}, open.Upgrades)
	require.Equal(t, 30000, open.PingInterval)
	require.Equal(t, 4096, open.MaxPayload)

	// A CONNECT without credentials is refused through the session.
	r = c.do("POST", "/socket.io/?EIO=4&transport=polling&sid="+open.SID, "40", "Content-Type", "text/plain;charset=UTF-8")
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	r = c.do("GET", "/socket.io/?EIO=4&transport=polling&sid="+open.SID, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, `44{"message":"UNAUTHORIZED","data":{"code":"UNAUTHORIZED","message":"Authentication required"}}`, string(r.body))

	r = c.do("GET", "/socket.io/?EIO=3&transport=polling", nil)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.JSONEq(t, `{"code":5,"message":"Unsupported protocol version"}`, string(r.body))
	r = c.do("GET", "/socket.io/?EIO=4&transport=flash", nil)
	require.JSONEq(t, `{"code":0,"message":"Transport unknown"}`, string(r.body))
	r = c.do("GET", "/socket.io/?EIO=4&transport=polling&sid=nope", nil)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.JSONEq(t, `{"code":1,"message":"Session ID unknown"}`, string(r.body))
	r = c.do("POST", "/socket.io/?EIO=4&transport=polling", "40", "Content-Type", "text/plain")
	require.JSONEq(t, `{"code":2,"message":"Bad handshake method"}`, string(r.body))
}
