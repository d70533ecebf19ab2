package api_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/testenv/nodefetch"
	"github.com/pulseboard/pulseboard/pkg/testenv/rawhttp"
)

// Issue 17 item 2: with API_INGEST_URL the api forwards the ingest routes to the
// ingestor. These tests put a real HTTP server (the receiver) where the ingestor would
// be and look at what arrives there and what the client gets back; the real ingestor
// behind the all-in-one's api port is cmd/pulseboard/oneorigin_test.go's.

// received is one request as the receiver saw it.
type received struct {
	method, path, query string
	header              http.Header
	contentLength       int64
	body                []byte
}

// receiver records every request and answers with answer.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []received
	answer func(w http.ResponseWriter, r *http.Request, body []byte)
}

func newReceiver(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, body []byte)) *receiver {
	t.Helper()
	rc := &receiver{answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		rc.got = append(rc.got, received{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery,
			header: r.Header.Clone(), contentLength: r.ContentLength, body: body})
		rc.mu.Unlock()
		rc.answer(w, r, body)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) last(t *testing.T) received {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	require.NotEmpty(t, rc.got, "the receiver got nothing")
	return rc.got[len(rc.got)-1]
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.got)
}

// ingestorLike answers 202 the way the ingestor does, with headers of its own.
func ingestorLike(w http.ResponseWriter, r *http.Request, body []byte) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("RateLimit-Remaining", "41")
	h.Set("Content-Type", "application/json; charset=utf-8")
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, `{"success":true,"message":"queued","data":{"bytes":`+strconv.Itoa(len(body))+`}}`)
}

// post sends body to url with headers (name, value pairs) from the loopback address
// localIP and returns the response with its body read.
func post(t *testing.T, method, url, localIP string, body []byte, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	tr := &http.Transport{DisableCompression: true,
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}).DialContext}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: waitFor}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := io.WriteString(zw, s)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// The SDK's request shapes reach the ingestor byte for byte with their headers, whatever
// the client claims about its address; the ingestor's answer comes back unchanged, and
// the api's own CORS (credentials for the dashboard's origin) is not mixed into it.
func TestForwardIngestRoutesByteExact(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, ingestorLike)
	b := setup(t, withEnv("API_INGEST_URL", rc.srv.URL))

	batch := `{"events":[{"type":"event","name":"a","payload":{"i":1}},{"type":"metric","name":"b","payload":{"v":2.5}}]}`
	cases := []struct {
		name, path, query, contentType, encoding string
		body                                     []byte
	}{
		{"single", "/ingest", "", "application/json", "", []byte(`{"apiKey":"pb_live_k","type":"error","name":"TypeError","payload":{"message":"boom \u00e9"}}`)},
		{"batch gzip", "/ingest/batch", "", "application/json", "gzip", gzipped(t, batch)},
		{"analytics crash", "/analytics/crash", "sdk=rn", "application/json; charset=utf-8", "", []byte(`{"apiKey":"pb_live_k","error":{"message":"x","stack":"at y"},"context":{"os":"ios"}}`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := b.base + tc.path
			if tc.query != "" {
				url += "?" + tc.query
			}
			headers := []string{"Content-Type", tc.contentType, "X-API-Key", "pb_live_k",
				"Origin", dashboardOrigin, "Cookie", "refreshToken=secret",
				"X-Forwarded-For", "203.0.113.9", "Forwarded", "for=198.51.100.1"}
			if tc.encoding != "" {
				headers = append(headers, "Content-Encoding", tc.encoding)
			}
			r := post(t, http.MethodPost, url, "127.0.0.1", tc.body, headers...)

			got := rc.last(t)
			require.Equal(t, http.MethodPost, got.method)
			require.Equal(t, tc.path, got.path)
			require.Equal(t, tc.query, got.query)
			require.Equal(t, tc.body, got.body, "the body arrives byte for byte (compressed as sent)")
			require.Equal(t, int64(len(tc.body)), got.contentLength)
			require.Equal(t, tc.contentType, got.header.Get("Content-Type"))
			require.Equal(t, tc.encoding, got.header.Get("Content-Encoding"))
			require.Equal(t, "pb_live_k", got.header.Get("X-API-Key"))
			require.Equal(t, dashboardOrigin, got.header.Get("Origin"))
			require.Empty(t, got.header.Values("Cookie"), "the api's cookies stay with the api")
			// The client's own claims are replaced by the address the api saw.
			require.Equal(t, []string{"127.0.0.1"}, got.header.Values("X-Forwarded-For"))
			require.Equal(t, []string{"for=127.0.0.1;proto=http"}, got.header.Values("Forwarded"))
			require.Empty(t, got.header.Get("Accept-Encoding"), "nothing asks the ingestor to compress")

			require.Equal(t, http.StatusAccepted, r.status, "body: %s", r.body)
			require.Equal(t, `{"success":true,"message":"queued","data":{"bytes":`+strconv.Itoa(len(tc.body))+`}}`, string(r.body))
			require.Equal(t, "41", r.header.Get("RateLimit-Remaining"))
			require.Equal(t, []string{"*"}, r.header.Values("Access-Control-Allow-Origin"), "the ingestor's CORS, not the api's")
			require.Empty(t, r.header.Values("Access-Control-Allow-Credentials"))
			require.Equal(t, []string{"nosniff"}, r.header.Values("X-Content-Type-Options"))
			require.NotEmpty(t, r.header.Get("X-Request-Id"))
		})
	}

	// A browser's preflight from any origin is the ingestor's to answer.
	r := post(t, http.MethodOptions, b.base+"/ingest", "127.0.0.1", nil,
		"Origin", "https://any-site.example", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "content-type, x-api-key")
	require.Equal(t, http.StatusNoContent, r.status)
	require.Equal(t, []string{"*"}, r.header.Values("Access-Control-Allow-Origin"))
	require.Equal(t, "POST, OPTIONS", r.header.Get("Access-Control-Allow-Methods"))
	require.Equal(t, http.MethodOptions, rc.last(t).method)

	// Metrics: bounded route labels, no forward error.
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "/ingest", "code": "202"}))
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "/ingest/batch", "code": "202"}))
	require.Equal(t, 1.0, b.counter("pulseboard_api_http_requests_total", map[string]string{"route": "/analytics/{kind}", "code": "202"}))
	require.Equal(t, 0.0, b.counter("pulseboard_api_ingest_forward_errors_total", nil))

	// Only the ingest paths are forwarded, and only in canonical form.
	for _, p := range []string{"/ingestx", "/analytics", "/ingest/../auth/login", "//ingest"} {
		n := rc.count()
		post(t, http.MethodPost, b.base+p, "127.0.0.1", []byte(`{}`), "Content-Type", "application/json")
		require.Equal(t, n, rc.count(), "%s must not be forwarded", p)
	}
}

// The address the ingestor is told is the one the api believes: the TCP peer, or behind
// a proxy the api trusts (API_TRUSTED_PROXIES) the client that proxy reports.
func TestForwardIngestReportsTheClientAddress(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, ingestorLike)
	direct := setup(t, withEnv("API_INGEST_URL", rc.srv.URL))
	post(t, http.MethodPost, direct.base+"/ingest", "127.0.0.2", []byte(`{}`), "X-Forwarded-For", "203.0.113.9")
	require.Equal(t, []string{"127.0.0.2"}, rc.last(t).header.Values("X-Forwarded-For"))

	behind := setup(t, withEnv("API_INGEST_URL", rc.srv.URL, "API_TRUSTED_PROXIES", "127.0.0.3"))
	post(t, http.MethodPost, behind.base+"/ingest", "127.0.0.3", []byte(`{}`), "X-Forwarded-For", "198.51.100.20, 203.0.113.9")
	require.Equal(t, []string{"203.0.113.9"}, rc.last(t).header.Values("X-Forwarded-For"))
	require.Equal(t, []string{"for=203.0.113.9;proto=http"}, rc.last(t).header.Values("Forwarded"))
	// From a peer it does not trust, the header is the client's own claim: ignored.
	post(t, http.MethodPost, behind.base+"/ingest", "127.0.0.4", []byte(`{}`), "X-Forwarded-For", "203.0.113.9")
	require.Equal(t, []string{"127.0.0.4"}, rc.last(t).header.Values("X-Forwarded-For"))
}

// The ingestor's errors reach the client unchanged (status, headers, body); they are not
// forwarding errors.
func TestForwardIngestPassesErrorsThrough(t *testing.T) {
	t.Parallel()
	answers := map[string]func(w http.ResponseWriter){
		"/ingest": func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "7")
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"success":false,"code":"RATE_LIMITED","message":"slow down"}`)
		},
		"/ingest/batch": func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"success":false,"code":"UNAVAILABLE","message":"kafka"}`)
		},
		"/analytics/unknown": func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"success":false,"code":"NOT_FOUND","message":"Route POST:/analytics/unknown not found"}`)
		},
	}
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ []byte) { answers[r.URL.Path](w) })
	b := setup(t, withEnv("API_INGEST_URL", rc.srv.URL))
	r := post(t, http.MethodPost, b.base+"/ingest", "127.0.0.1", []byte(`{}`))
	require.Equal(t, http.StatusTooManyRequests, r.status)
	require.Equal(t, "7", r.header.Get("Retry-After"))
	require.Equal(t, `{"success":false,"code":"RATE_LIMITED","message":"slow down"}`, string(r.body))
	r = post(t, http.MethodPost, b.base+"/ingest/batch", "127.0.0.1", []byte(`{}`))
	require.Equal(t, http.StatusServiceUnavailable, r.status)
	require.Equal(t, `{"success":false,"code":"UNAVAILABLE","message":"kafka"}`, string(r.body))
	r = post(t, http.MethodPost, b.base+"/analytics/unknown", "127.0.0.1", []byte(`{}`))
	require.Equal(t, http.StatusNotFound, r.status)
	require.Equal(t, `{"success":false,"code":"NOT_FOUND","message":"Route POST:/analytics/unknown not found"}`, string(r.body))
	require.Equal(t, 0.0, b.counter("pulseboard_api_ingest_forward_errors_total", nil))
}

// An ingestor that cannot be reached, or that drops the connection without answering,
// is the api's 503 UNAVAILABLE with Retry-After, in the API's error shape, counted by
// reason.
func TestForwardIngestUnavailable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there any more
	b := setup(t, withEnv("API_INGEST_URL", closed))
	for _, p := range []string{"/ingest", "/ingest/batch", "/analytics/crash"} {
		r := post(t, http.MethodPost, b.base+p, "127.0.0.1", []byte(`{"apiKey":"pb_live_k"}`), "Content-Type", "application/json")
		r.requireCode(t, http.StatusServiceUnavailable, "UNAVAILABLE")
		require.Contains(t, r.json(t)["message"], "the ingestor is unavailable")
		require.Equal(t, "1", r.header.Get("Retry-After"))
		require.Equal(t, "application/json; charset=utf-8", r.header.Get("Content-Type"))
		require.Equal(t, []string{"nosniff"}, r.header.Values("X-Content-Type-Options"))
	}
	require.Equal(t, 3.0, b.counter("pulseboard_api_ingest_forward_errors_total", map[string]string{"reason": "unreachable"}))
	require.Contains(t, b.logs.String(), "forwarding to the ingestor failed")

	// A peer that accepts and hangs up without an answer.
	hangup, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = hangup.Close() })
	go func() {
		for {
			c, err := hangup.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1024)
			_, _ = c.Read(buf)
			_ = c.Close()
		}
	}()
	b2 := setup(t, withEnv("API_INGEST_URL", "http://"+hangup.Addr().String()))
	post(t, http.MethodPost, b2.base+"/ingest", "127.0.0.1", []byte(`{}`)).requireCode(t, http.StatusServiceUnavailable, "UNAVAILABLE")
	require.Equal(t, 1.0, b2.counter("pulseboard_api_ingest_forward_errors_total", map[string]string{"reason": "broken"}))
}

// Without API_INGEST_URL the ingest paths are the api's 404, with a message that says
// why, under the api's own CORS.
func TestIngestNotForwardedWithoutIngestURL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, p := range []string{"/ingest", "/ingest/batch", "/analytics/crash"} {
		r := b.client().do("POST", p, `{"apiKey":"pb_live_k"}`, "Origin", dashboardOrigin)
		r.requireError(t, http.StatusNotFound, "NOT_FOUND", "Route POST:"+p+
			" not found: this api does not forward ingest (API_INGEST_URL is unset); send events to the ingestor's address")
		require.Equal(t, dashboardOrigin, r.header.Get("Access-Control-Allow-Origin"))
	}
	require.Equal(t, 0.0, b.counter("pulseboard_api_ingest_forward_errors_total", nil))
}

// API_INGEST_URL must be a plain http(s) base URL.
func TestIngestURLIsValidated(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"ingestor:3002", "ftp://ingestor", "http://", "http://ingestor:3002/?x=1", "http://u:p@ingestor:3002", "http://ingestor:3002/#f"} {
		env := testEnv()
		env["API_INGEST_URL"] = bad
		cfg, err := config.Parse[api.Config](env)
		if err == nil {
			err = cfg.Validate()
		}
		require.ErrorContains(t, err, "API_INGEST_URL", bad)
	}
	env := testEnv()
	env["API_INGEST_URL"] = "http://ingestor:3002"
	cfg, err := config.Parse[api.Config](env)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
}

// Bodies are streamed, not buffered in the api: the receiver sees the first megabyte
// while the client is still holding back the rest (an api that read the whole body
// first would deadlock here), and all 9 MiB arrive intact.
func TestForwardIngestStreamsTheBody(t *testing.T) {
	t.Parallel()
	const first, total = 1 << 20, 9 << 20
	sawFirst := make(chan struct{})
	var (
		mu      sync.Mutex
		gotSum  [32]byte
		gotSize int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		if _, err := io.CopyN(h, r.Body, first); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		close(sawFirst)
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		copy(gotSum[:], h.Sum(nil))
		gotSize = first + int(n)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	b := setup(t, withEnv("API_INGEST_URL", srv.URL))

	payload := bytes.Repeat([]byte("0123456789abcdef"), total/16)
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(payload[:first])
		select {
		case <-sawFirst:
			_, _ = pw.Write(payload[first:])
			_ = pw.Close()
		case <-time.After(10 * time.Second):
			_ = pw.CloseWithError(io.ErrUnexpectedEOF)
		}
	}()
	req, err := http.NewRequest(http.MethodPost, b.base+"/ingest/batch", pr)
	require.NoError(t, err)
	req.ContentLength = total
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: waitFor}).Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	select {
	case <-sawFirst:
	default:
		t.Fatal("the receiver never saw the first megabyte while the client held the rest: the api buffers bodies")
	}
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, total, gotSize)
	require.Equal(t, sha256.Sum256(payload), gotSum)
}

// An ingestor that refuses a large body early (its 413, before reading it) is answered
// through: Go's client and Node's fetch (which writes its whole body before reading)
// both see the 413 and its body, not a reset; the api drains what the ingestor left
// unread, as it does for its own 413s.
func TestForwardIngestEarlyRefusalIsReadable(t *testing.T) {
	t.Parallel()
	const tooLarge = `{"success":false,"code":"PAYLOAD_TOO_LARGE","message":"body is larger than the limit"}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.CopyN(io.Discard, r.Body, 64<<10) // then refuse without reading the rest
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		_, _ = io.WriteString(w, tooLarge)
	}))
	t.Cleanup(srv.Close)
	b := setup(t, withEnv("API_INGEST_URL", srv.URL))

	body := bytes.Repeat([]byte("a"), 4<<20)
	r := post(t, http.MethodPost, b.base+"/ingest/batch", "127.0.0.1", body, "Content-Type", "application/json")
	require.Equal(t, http.StatusRequestEntityTooLarge, r.status)
	require.Equal(t, tooLarge, string(r.body))
	for _, slow := range []bool{false, true} {
		for i, a := range nodefetch.Post(t, b.base+"/ingest/batch", len(body), map[bool]int{false: 5, true: 2}[slow], slow) {
			require.Equal(t, http.StatusRequestEntityTooLarge, a.Status, "slow=%v attempt %d: node saw: %s", slow, i, a.Text)
			require.Equal(t, tooLarge, a.Text)
		}
	}
	// A client on a slow link that writes everything before reading: the rest of its
	// body comes in parts 150 ms apart, longer than net/http's 500 ms wait before a
	// close resets the connection. Without the drain its writes fail.
	for i := range 2 {
		c := b.dialFrom("127.0.0.1")
		require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
		resp, rb, err := rawhttp.SlowPost(c, "/ingest/batch", body[:2<<20], 128<<10)
		require.NoError(t, err, "attempt %d: the whole body is written (the api drains it), the answer read", i)
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "body: %s", rb)
		require.Equal(t, tooLarge, string(rb))
		require.True(t, resp.Close, "the connection closes after an early refusal")
		_ = c.Close()
	}
	require.Equal(t, 0.0, b.counter("pulseboard_api_ingest_forward_errors_total", nil))
	// Afterwards the api serves as usual.
	require.Equal(t, http.StatusOK, b.client().do("GET", "/openapi.json", nil).status)
	require.True(t, strings.Contains(b.logs.String(), `"route":"/ingest/batch"`))

	// The ingestor past its drain bound: it answers 413 on reading the headers and closes
	// with the body unread, so the kernel resets the connection while the api is still
	// writing. The answer must still win over the failed write (not a 503 UNAVAILABLE,
	// which clients would retry forever).
	rst, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = rst.Close() })
	go func() {
		for {
			c, err := rst.Accept()
			if err != nil {
				return
			}
			go func() {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err == nil {
					_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json; charset=utf-8\r\n"+
						"Content-Length: "+strconv.Itoa(len(tooLarge))+"\r\nConnection: close\r\n\r\n"+tooLarge)
				}
				_ = c.Close() // unread data: a reset
			}()
		}
	}()
	b2 := setup(t, withEnv("API_INGEST_URL", "http://"+rst.Addr().String()))
	big := bytes.Repeat([]byte("a"), 9<<20)
	for i := range 5 {
		r := post(t, http.MethodPost, b2.base+"/ingest/batch", "127.0.0.1", big, "Content-Type", "application/json")
		require.Equal(t, http.StatusRequestEntityTooLarge, r.status, "attempt %d: %s", i, r.body)
		require.Equal(t, tooLarge, string(r.body))
	}
	require.Equal(t, 0.0, b2.counter("pulseboard_api_ingest_forward_errors_total", nil))
}
