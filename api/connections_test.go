package api_test

// Connection caps, idle shedding and the readable 413 (issue 16): real connections from
// several loopback addresses against a real api.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv/nodefetch"
	"github.com/pulseboard/pulseboard/pkg/testenv/rawhttp"
)

// dialFrom opens a connection to the api from the loopback address localIP.
func (b *bundle) dialFrom(localIP string) net.Conn {
	b.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", strings.TrimPrefix(b.base, "http://"))
	require.NoError(b.t, err)
	b.t.Cleanup(func() { _ = c.Close() })
	return c
}

// gauge reads a gauge.
func (b *bundle) gauge(name string) float64 {
	b.t.Helper()
	mfs, err := b.reg.Gather()
	require.NoError(b.t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	b.t.Fatalf("no gauge %s", name)
	return 0
}

func (b *bundle) waitOpen(n int) {
	b.t.Helper()
	require.Eventually(b.t, func() bool { return b.gauge("pulseboard_api_open_connections") == float64(n) }, waitFor, 5*time.Millisecond,
		"open connections should reach %d", n)
}

// requireRefused reads the refusal of a connection over a cap (nothing was written on
// it): status, Retry-After, the JSON error code, then the server's close, within 10 s.
func requireRefused(t *testing.T, c net.Conn, status int, code string) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err, "a refused connection gets an answer")
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "body: %s", body)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	var env struct{ Code string }
	require.NoError(t, json.Unmarshal(body, &env), "body: %s", body)
	require.Equal(t, code, env.Code)
	_, err = br.ReadByte()
	require.ErrorIs(t, err, io.EOF, "the server closed the refused connection at once")
}

// A connection over the per-address cap gets 429, one over the total cap 503; both are
// closed at once and counted, the connections already open keep working, and once the
// crowd leaves a fresh client is served.
func TestConnectionCapsPerAddressAndTotal(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_CONNS", "6", "API_MAX_CONNS_PER_IP", "2",
		// the held connections send nothing
		"API_READ_HEADER_TIMEOUT", "1m", "API_READ_TIMEOUT", "1m"))
	require.Equal(t, 6.0, b.gauge("pulseboard_api_max_connections"))

	var held []net.Conn
	for range 2 {
		held = append(held, b.dialFrom("127.0.0.2"))
	}
	b.waitOpen(2)
	requireRefused(t, b.dialFrom("127.0.0.2"), http.StatusTooManyRequests, "RATE_LIMITED")
	require.Equal(t, 1.0, b.counter("pulseboard_api_connections_refused_total", map[string]string{"reason": "per_ip"}))

	for _, ip := range []string{"127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"} {
		held = append(held, b.dialFrom(ip))
	}
	b.waitOpen(6)
	requireRefused(t, b.dialFrom("127.0.0.5"), http.StatusServiceUnavailable, "UNAVAILABLE")
	require.Equal(t, 1.0, b.counter("pulseboard_api_connections_refused_total", map[string]string{"reason": "total"}))

	// The held connections were not touched: one of them is served.
	_, err := io.WriteString(held[0], "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(held[0]), nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	for _, c := range held {
		_ = c.Close()
	}
	b.waitOpen(0)
	require.Equal(t, http.StatusOK, b.client().do("GET", "/openapi.json", nil).status)
}

// Past 90 % of the cap, the oldest idle keep-alive connections are closed so that a new
// client is served instead of refused.
func TestIdleKeepAliveConnectionsAreShedForNewClients(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_CONNS", "4", "API_MAX_CONNS_PER_IP", "0"))
	var idle []*bufio.Reader
	var conns []net.Conn
	for i := range 4 { // each served once and left idle: the cap is full
		c := b.dialFrom("127.0.0." + strconv.Itoa(10+i))
		_, err := io.WriteString(c, "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err, "connection %d", i)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.Equal(t, http.StatusOK, resp.StatusCode, "connection %d", i)
		require.False(t, resp.Close)
		idle, conns = append(idle, br), append(conns, c)
	}

	r := b.client().do("GET", "/openapi.json", nil)
	require.Equal(t, http.StatusOK, r.status, "a new client is served: %s", r.body)
	require.GreaterOrEqual(t, b.counter("pulseboard_api_connections_shed_total", nil), 1.0)
	require.Zero(t, b.counter("pulseboard_api_connections_refused_total", nil))

	requireIdleShed(t, conns, idle)
}

// requireIdleShed checks that the server closed at least one of the idle connections
// (oldest first, but which ones were idle when the new client came depends on when the
// server marked them idle, which a loaded machine delays).
func requireIdleShed(t *testing.T, conns []net.Conn, idle []*bufio.Reader) {
	t.Helper()
	// Shedding happens before the new connection is served, so a shed connection reads
	// EOF at once; the others would block, so each gets a short deadline.
	closed := 0
	for i, c := range conns {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
		if _, err := idle[i].ReadByte(); errors.Is(err, io.EOF) {
			closed++
		}
	}
	require.Positive(t, closed, "an idle connection was closed by the server")
}

// A client that writes its whole body before reading the answer (Node's fetch does)
// reads the 413, not a connection reset (issue 16 item 9).
func TestOversizedBodyGets413ThatAClientWritingEverythingFirstCanRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := append(append([]byte(`{"email":"a@example.com","password":"`), bytes.Repeat([]byte("a"), 2<<20)...), `"}`...)

	t.Run("raw client", func(t *testing.T) {
		for i := range 3 {
			c := b.dialFrom("127.0.0.1")
			require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
			// The head and a first part, then a pause in which the server has answered
			// and would have closed, then the rest: a client on a slow link.
			resp, rb, err := rawhttp.SlowPost(c, "/auth/login", body, 128<<10)
			require.NoError(t, err, "attempt %d: the whole body is written (the server reads it), the answer read", i)
			require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "body: %s", rb)
			require.Contains(t, string(rb), `"code":"PAYLOAD_TOO_LARGE"`)
			require.True(t, resp.Close)
			_ = c.Close()
		}
	})

	for _, slow := range []bool{false, true} {
		t.Run("node fetch slow="+strconv.FormatBool(slow), func(t *testing.T) {
			for i, a := range nodefetch.Post(t, b.base+"/auth/login", len(body), map[bool]int{false: 10, true: 3}[slow], slow) {
				require.Equal(t, http.StatusRequestEntityTooLarge, a.Status, "attempt %d: node saw: %s", i, a.Text)
				require.Contains(t, a.Text, `"code":"PAYLOAD_TOO_LARGE"`)
			}
		})
	}

	// A body declaring more than the drain bound is not read: the answer comes and the
	// connection closes without waiting for it.
	t.Run("beyond the drain bound", func(t *testing.T) {
		c := b.dialFrom("127.0.0.1")
		require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
		_, err := io.WriteString(c, "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
		require.NoError(t, err)
		_, _ = c.Write(body[:128<<10])
		start := time.Now()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
		require.Less(t, time.Since(start), 10*time.Second)
	})

	// Afterwards the api serves as usual.
	require.Equal(t, http.StatusOK, b.client().do("GET", "/openapi.json", nil).status)
}
