package api_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// B70 and the conventions: JSON 404/405, the headers on every answer, request ids,
// body limits, strict JSON, unknown fields ignored.
func TestHTTPConventions(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_BODY_BYTES", "2048"))
	c := b.client()

	r := c.do("GET", "/nope", nil)
	r.requireError(t, 404, "NOT_FOUND", "Route GET:/nope not found")
	r = c.do("GET", "/auth/login", nil)
	r.requireError(t, 405, "METHOD_NOT_ALLOWED", "Method GET is not allowed on /auth/login")
	require.Equal(t, "POST", r.header.Get("Allow"))
	r = c.do("POST", "/projects/"+uuid.NewString(), nil)
	r.requireCode(t, 405, "METHOD_NOT_ALLOWED")
	require.Equal(t, "GET, HEAD, PUT, PATCH, DELETE", r.header.Get("Allow"))
	c.do("GET", "/realtime/"+uuid.NewString(), nil).requireCode(t, 404, "NOT_FOUND") // no live streams wired

	for _, r := range []response{
		c.do("GET", "/nope", nil),
		c.do("POST", "/auth/login", map[string]string{"email": "a@b.co", "password": "x"}),
		c.do("GET", "/projects", nil),
		c.do("POST", "/auth/logout", nil),
	} {
		require.Equal(t, "application/json; charset=utf-8", r.header.Get("Content-Type"), "body: %s", r.body)
		require.Equal(t, "nosniff", r.header.Get("X-Content-Type-Options"))
		require.Equal(t, "no-store", r.header.Get("Cache-Control"))
		require.Regexp(t, `^[0-9a-f]{24}$`, r.header.Get("X-Request-Id"))
	}
	r = c.do("GET", "/projects", nil, "Cookie", "big="+strings.Repeat("c", 16<<10))
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, r.status, "B35")
	require.Equal(t, "abc-123.X", c.do("GET", "/nope", nil, "X-Request-Id", "abc-123.X").header.Get("X-Request-Id"), "a sane incoming id is kept")
	require.NotContains(t, c.do("GET", "/nope", nil, "X-Request-Id", "bad id\"{}").header.Get("X-Request-Id"), "bad")

	reg := func(body string, headers ...string) response { return c.do("POST", "/auth/register", body, headers...) }
	reg(`{"name":"Trailing","email":"t@example.com","password":"password"} {"x":1}`).requireError(t, 400, "INVALID_JSON", "body is not valid JSON")
	reg(`{"name":"Broken",`).requireError(t, 400, "INVALID_JSON", "body is not valid JSON")
	reg(`{"name":"`+strings.Repeat("x", 3000)+`"}`).requireError(t, 413, "PAYLOAD_TOO_LARGE", "body is larger than 2048 bytes")
	reg(`{"name":"Plain","email":"p@example.com","password":"password"}`, "Content-Type", "", "Content-Type", "text/plain").
		requireError(t, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
	reg(``).requireError(t, 400, "VALIDATION_FAILED", "body must be object")
	reg(`null`).requireError(t, 400, "VALIDATION_FAILED", "body must be object")
	// Unknown fields are ignored; stored text comes back verbatim (B31).
	r = reg(`{"name":"<script>alert(1)</script>\r\nlevel=error","email":"x@example.com","password":"password","context":{"sdk":"rn"},"role":"admin"}`,
		"Content-Type", "", "Content-Type", "application/json; charset=utf-8")
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Contains(t, string(r.body), `"name":"<script>alert(1)</script>\r\nlevel=error"`)
	require.Contains(t, b.logs.String(), `"path":"/auth/register"`)
	for _, line := range strings.Split(strings.TrimSpace(b.logs.String()), "\n") {
		require.True(t, strings.HasPrefix(line, "{") && strings.HasSuffix(line, "}"), "one JSON record per line: %q", line)
	}
}

// B68: the CORS allow-list: allowed origins are echoed with credentials, others (and
// "null") get no CORS headers, "*" is never sent.
func TestCORS(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	preflight := func(origin string) response {
		return c.do("OPTIONS", "/projects", nil, "Origin", origin, "Access-Control-Request-Method", "POST",
			"Access-Control-Request-Headers", "authorization, content-type, x-custom")
	}
	for _, origin := range []string{dashboardOrigin, otherOrigin} {
		r := preflight(origin)
		require.Equal(t, http.StatusNoContent, r.status)
		require.Equal(t, origin, r.header.Get("Access-Control-Allow-Origin"))
		require.Equal(t, "true", r.header.Get("Access-Control-Allow-Credentials"))
		require.Equal(t, "GET, POST, PUT, PATCH, DELETE, OPTIONS", r.header.Get("Access-Control-Allow-Methods"))
		require.Equal(t, "authorization, content-type, x-custom", r.header.Get("Access-Control-Allow-Headers"))
		require.Contains(t, r.header.Values("Vary"), "Origin")
		r = c.do("GET", "/projects", nil, "Origin", origin)
		require.Equal(t, origin, r.header.Get("Access-Control-Allow-Origin"), "also on actual (here 401) answers")
	}
	for _, origin := range []string{evilOrigin, "null", dashboardOrigin + ".evil.example", "http://localhost:3002", "HTTP://LOCALHOST:3001"} {
		for _, r := range []response{preflight(origin), c.do("GET", "/projects", nil, "Origin", origin), c.do("POST", "/auth/login", "{}", "Origin", origin)} {
			require.Empty(t, r.header.Get("Access-Control-Allow-Origin"), "origin %q", origin)
			require.Empty(t, r.header.Get("Access-Control-Allow-Credentials"), "origin %q", origin)
			require.Empty(t, r.header.Get("Access-Control-Allow-Methods"), "origin %q", origin)
		}
	}
}

// B69: a forced internal failure gives a generic body with the request id, never SQL,
// and the log has the detail under the same id. A database that is gone is a 503.
func TestInternalErrorsAreGeneric(t *testing.T) {
	t.Parallel()
	b := setup(t, allowingInternalErrors())
	c, _ := b.newUser("Broken")
	p := c.createProject("P")
	_, err := b.pool.Exec(context.Background(), `ALTER TABLE alerts RENAME TO alerts_gone`)
	require.NoError(t, err)

	r := c.do("GET", "/projects/"+p["id"].(string)+"/alerts", nil)
	r.requireCode(t, http.StatusInternalServerError, "INTERNAL")
	id := r.header.Get("X-Request-Id")
	require.Equal(t, `{"success":false,"code":"INTERNAL","message":"Internal server error (request id `+id+`)"}`, string(r.body))
	logs := b.logs.String()
	require.Contains(t, logs, `"request_id":"`+id+`"`)
	require.Contains(t, logs, `relation \"alerts\" does not exist`, "the detail is logged")

	b.pool.Close()
	r = c.do("GET", "/projects", nil)
	r.requireCode(t, http.StatusServiceUnavailable, "UNAVAILABLE")
	id = r.header.Get("X-Request-Id")
	require.Equal(t, `{"success":false,"code":"UNAVAILABLE","message":"Service temporarily unavailable; retry shortly (request id `+id+`)"}`, string(r.body))
	require.Equal(t, "1", r.header.Get("Retry-After"))
	r = c.do("POST", "/auth/login", map[string]string{"email": "broken@example.com", "password": "whatever"})
	r.requireCode(t, http.StatusServiceUnavailable, "UNAVAILABLE") // not 401: nothing was checked
}

// Logs never carry passwords, tokens, cookies or API keys (B05, STYLE).
func TestLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	a := c.register("Secretive", "secretive@example.com", "hunter2-password")
	login := c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password})
	rt := requireSession(t, login, http.StatusOK, a.name, a.email)
	p := c.createProject("Keyed")
	key := p["apiKey"].(string)
	c.do("GET", "/events?apiKey="+key, nil)
	c.do("POST", "/auth/refresh", nil)
	b.clock.Advance(time.Minute)
	refreshWith(c, rt) // reuse: the security log line
	logs := b.logs.String()
	require.Contains(t, logs, "refresh token reuse detected")
	for name, secret := range map[string]string{"password": a.password, "access token": c.token, "refresh token": rt, "API key": key, "JWT secret": testSecret} {
		require.NotContains(t, logs, secret, name)
	}
}

// Metrics: route labels are ServeMux patterns, never raw paths.
func TestMetricsUseRoutePatterns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Metered")
	id := uuid.NewString()
	c.do("GET", "/projects/"+id, nil)
	c.do("GET", "/no/such/"+id, nil)
	c.do("OPTIONS", "/projects", nil, "Origin", dashboardOrigin, "Access-Control-Request-Method", "GET")
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "GET /projects/{id}", "code": "404"}))
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "POST /auth/register", "code": "201"}))
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "unmatched", "code": "404"}))
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "preflight", "code": "204"}))
	mfs, err := b.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				require.NotContains(t, l.GetValue(), id, "%s has a raw id in a label", mf.GetName())
			}
		}
	}
}

// fakeLive stands in for api/internal/live: it checks that streaming works through the
// api's middleware (Hijack, Flush, ResponseController) and that Run closes it.
type fakeLive struct {
	closed   chan struct{}
	once     sync.Once
	closes   atomic.Int32
	sseError atomic.Value
}

func newFakeLive() *fakeLive { return &fakeLive{closed: make(chan struct{})} }

func (f *fakeLive) ServeWS(w http.ResponseWriter, r *http.Request) {
	conn, brw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	defer conn.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	_, _ = brw.WriteString("hello " + r.PathValue("projectId") + "\n")
	_ = brw.Flush()
	<-f.closed
}

func (f *fakeLive) ServeSSE(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	// A stream outlives the server's write timeout only if it can clear it.
	if err := rc.SetWriteDeadline(time.Time{}); err != nil {
		f.sseError.Store(err)
	}
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		f.sseError.Store(err)
	}
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "data: {\"type\":\"connected\",\"projectId\":\""+r.PathValue("projectId")+"\"}\n\n")
	w.(http.Flusher).Flush()
	select {
	case <-f.closed:
	case <-r.Context().Done():
	}
}

func (f *fakeLive) Close(context.Context) {
	f.closes.Add(1)
	f.once.Do(func() { close(f.closed) })
}

// The live-stream routes are mounted behind the middleware without breaking WebSocket
// upgrades or SSE flushing, and Run closes the streams at shutdown (Shutdown alone
// would wait for the SSE stream until its timeout).
func TestLiveStreamsThroughMiddleware(t *testing.T) {
	t.Parallel()
	live := newFakeLive()
	b := setup(t, withLive(live), withEnv("API_WRITE_TIMEOUT", "1s", "API_SHUTDOWN_TIMEOUT", "10s"))
	pid := uuid.NewString()

	conn, err := net.Dial("tcp", b.svc.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET /realtime/"+pid+" HTTP/1.1\r\nHost: x\r\nOrigin: "+dashboardOrigin+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1 101 Switching Protocols\r\n", status)
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if line == "\r\n" {
			break
		}
	}
	hello, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "hello "+pid+"\n", hello)

	req, err := http.NewRequest("GET", b.base+"/realtime/"+pid+"/sse", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", dashboardOrigin)
	tr := &http.Transport{ResponseHeaderTimeout: waitFor} // headers come only if flushed
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.Equal(t, dashboardOrigin, resp.Header.Get("Access-Control-Allow-Origin"))
	// Lines arrive while the handler is still running only if Flush works.
	lines := make(chan string)
	streamErr := make(chan error, 1)
	go func() {
		sse := bufio.NewReader(resp.Body)
		for {
			line, err := sse.ReadString('\n')
			if err != nil {
				streamErr <- err
				return
			}
			lines <- line
		}
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case err := <-streamErr:
			t.Fatalf("the SSE stream ended: %v", err)
		case <-time.After(waitFor):
			t.Fatal("no SSE data: not flushed")
		}
		return ""
	}
	require.Equal(t, `data: {"type":"connected","projectId":"`+pid+`"}`+"\n", next())
	require.Equal(t, "\n", next())
	require.Nil(t, live.sseError.Load(), "SetWriteDeadline/SetReadDeadline through the middleware")

	// Past the 1 s write timeout the stream is still open (the handler cleared it).
	select {
	case err := <-streamErr:
		t.Fatalf("the SSE stream ended early: %v", err)
	case l := <-lines:
		t.Fatalf("unexpected %q", l)
	case <-time.After(1500 * time.Millisecond):
	}

	start := time.Now()
	require.NoError(t, b.stop())
	require.Less(t, time.Since(start), 5*time.Second, "shutdown did not wait for the streams' timeout")
	require.Equal(t, int32(1), live.closes.Load())
	select {
	case err := <-streamErr:
		require.True(t, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF), "%v", err)
	case <-time.After(waitFor):
		t.Fatal("the SSE stream was not closed at shutdown")
	}
	// The hijacked handler returns after Close (Shutdown does not wait for it), and is
	// then counted with its 101.
	require.Eventually(t, func() bool {
		return b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "GET /realtime/{projectId}", "code": "101"}) == 1
	}, waitFor, 10*time.Millisecond)
}
