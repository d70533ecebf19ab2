package ingestor_test

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

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// TestIngestBadInput is docs/reliability.md's "Ingest payloads" and "HTTP layer" tables: every
// request that can never succeed gets its 4xx and code, and nothing reaches Kafka.
func TestIngestBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.project.APIKey
	unknownKey, err := apikey.Generate()
	require.NoError(t, err)

	// with returns a valid single event with fields replaced (nil deletes).
	with := func(fields map[string]any) []byte {
		ev := validEvent(key)
		for k, v := range fields {
			if v == nil {
				delete(ev, k)
				continue
			}
			ev[k] = v
		}
		return mustJSON(t, ev)
	}
	raw := func(s string) []byte { return []byte(s) }
	zeros := make([]byte, 20<<20)
	gzipBomb := gzipBytes(t, zeros)
	zstdBomb := zstdBytes(t, zeros)
	require.Less(t, len(gzipBomb), 64<<10)
	big := func(n int) []byte { // a syntactically valid event of about n bytes
		return with(map[string]any{"payload": map[string]any{"pad": strings.Repeat("x", n)}})
	}
	oneBatch, _ := batchEvents(1)
	batch1001, _ := batchEvents(1001)
	keyHdr := hdr{"X-API-Key": key}
	gz := func(h hdr) hdr {
		out := hdr{"Content-Encoding": "gzip"}
		for k, v := range h {
			out[k] = v
		}
		return out
	}

	type tc struct {
		name   string
		path   string
		body   []byte
		hdr    hdr
		status int
		code   string // "" accepts any code
		fast   bool   // bombs: answered, not hung (a liveness bound, generous for a loaded machine)
		// raw sends over a plain connection that keeps reading while it writes: the server
		// answers an oversized body before reading it and closes, and net/http reports
		// the failed write rather than the 413 (fasthttp #1348).
		raw bool
	}
	cases := []tc{
		// Validation (single).
		{name: "missing type", body: with(map[string]any{"type": nil}), status: 400, code: "VALIDATION_FAILED"},
		{name: "missing name", body: with(map[string]any{"name": nil}), status: 400, code: "VALIDATION_FAILED"},
		{name: "missing payload", body: with(map[string]any{"payload": nil}), status: 400, code: "VALIDATION_FAILED"},
		{name: "type not a string", body: with(map[string]any{"type": 1}), status: 400, code: "VALIDATION_FAILED"},
		{name: "name not a string", body: with(map[string]any{"name": []string{"x"}}), status: 400, code: "VALIDATION_FAILED"},
		{name: "bad enum", body: with(map[string]any{"type": "warning"}), status: 400, code: "VALIDATION_FAILED"},
		{name: "type in capitals", body: with(map[string]any{"type": "ERROR"}), status: 400, code: "VALIDATION_FAILED"},
		{name: "empty name", body: with(map[string]any{"name": ""}), status: 400, code: "VALIDATION_FAILED"},
		{name: "name of 201 chars", body: with(map[string]any{"name": strings.Repeat("n", 201)}), status: 400, code: "VALIDATION_FAILED"},
		{name: "payload array", body: with(map[string]any{"payload": []int{1}}), status: 400, code: "VALIDATION_FAILED"},
		{name: "payload string", body: with(map[string]any{"payload": "x"}), status: 400, code: "VALIDATION_FAILED"},
		{name: "payload null", body: raw(`{"apiKey":"` + key + `","type":"event","name":"x","payload":null}`), status: 400, code: "VALIDATION_FAILED"},
		{name: "context not an object", body: with(map[string]any{"context": "ios"}), status: 400, code: "VALIDATION_FAILED"},
		{name: "eventId not a UUID", body: with(map[string]any{"eventId": "123"}), status: 400, code: "VALIDATION_FAILED"},
		{name: "payload nested 33 deep", body: with(map[string]any{"payload": nested(33)}), status: 400, code: "VALIDATION_FAILED"},
		{name: "context nested 33 deep", body: with(map[string]any{"context": nested(33)}), status: 400, code: "VALIDATION_FAILED"},
		{name: "payload nested 100000 deep", body: raw(`{"apiKey":"` + key + `","type":"event","name":"x","payload":{"a":` +
			strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}}`), status: 400},
		{name: "number outside numeric", body: raw(`{"apiKey":"` + key + `","type":"event","name":"x","payload":{"n":1e999999}}`), status: 400, code: "VALIDATION_FAILED"},
		{name: "number beyond a double", body: raw(`{"apiKey":"` + key + `","type":"event","name":"x","payload":{"n":1e1000}}`), status: 400, code: "VALIDATION_FAILED"},
		{name: "duplicate key", body: raw(`{"apiKey":"` + key + `","type":"event","name":"x","payload":{"n":1,"n":2}}`), status: 400, code: "INVALID_JSON"},
		// Timestamps: the old backend answered 500 (B29).
		{name: "timestamp yesterday", body: with(map[string]any{"timestamp": "yesterday"}), status: 400, code: "INVALID_TIMESTAMP"},
		{name: "timestamp 2026-13-45", body: with(map[string]any{"timestamp": "2026-13-45"}), status: 400, code: "INVALID_TIMESTAMP"},
		{name: "timestamp offset +25:00", body: with(map[string]any{"timestamp": "2026-01-01T00:00:00+25:00"}), status: 400, code: "INVALID_TIMESTAMP"},
		{name: "timestamp year 10000", body: with(map[string]any{"timestamp": "10000-01-01T00:00:00Z"}), status: 400, code: "INVALID_TIMESTAMP"},
		{name: "timestamp year 0", body: with(map[string]any{"timestamp": "0000-01-01T00:00:00Z"}), status: 400, code: "INVALID_TIMESTAMP"},
		{name: "timestamp bool", body: with(map[string]any{"timestamp": true}), status: 400, code: "VALIDATION_FAILED"},
		{name: "timestamp fractional epoch milliseconds", body: with(map[string]any{"timestamp": 1.5}), status: 400, code: "INVALID_TIMESTAMP"},
		// JSON syntax and shape (B07, B08, B09).
		{name: "malformed JSON", body: raw(`{"name":`), status: 400, code: "INVALID_JSON"},
		{name: "trailing garbage", body: append(with(nil), " x"...), status: 400, code: "INVALID_JSON"},
		{name: "NaN", body: raw(`{"apiKey":"` + key + `","type":"event","name":"x","payload":{"n":NaN}}`), status: 400, code: "INVALID_JSON"},
		{name: "top-level string", body: raw(`"event"`), status: 400},
		{name: "top-level number", body: raw(`42`), status: 400},
		{name: "top-level null", body: raw(`null`), status: 400},
		{name: "top-level array", body: raw(`[]`), status: 400},
		{name: "empty body", body: nil, status: 400},
		{name: "whitespace body", body: raw(" \n"), status: 400, code: "INVALID_JSON"},
		// Sizes (B13, B15, B26).
		{name: "body of 1 MiB + 1 byte", body: big(1 << 20)[:1<<20+1], status: 413, code: "PAYLOAD_TOO_LARGE", raw: true},
		{name: "body of 2 MiB", body: big(2 << 20)[:2<<20], status: 413, code: "PAYLOAD_TOO_LARGE", raw: true},
		// Over 64 KiB in short strings, which cannot be shortened to fit (one long string
		// would be: ingestor_test.go:TestIngestShortensOversizedStrings).
		{name: "event over 64 KiB", body: with(map[string]any{"payload": map[string]any{"pad": strings.Split(strings.Repeat(strings.Repeat("x", 60)+",", 1100), ",")}}), status: 413, code: "PAYLOAD_TOO_LARGE"},
		{name: "gzip bomb", body: gzipBomb, hdr: hdr{"Content-Encoding": "gzip"}, status: 413, code: "PAYLOAD_TOO_LARGE", fast: true},
		// Encodings (B16–B18).
		{name: "gzip garbage", body: raw("definitely not gzip"), hdr: hdr{"Content-Encoding": "gzip"}, status: 400},
		{name: "gzip of non-JSON", body: gzipBytes(t, []byte("<xml/>")), hdr: hdr{"Content-Encoding": "gzip"}, status: 400, code: "INVALID_JSON"},
		{name: "gzip truncated", body: gzipBytes(t, with(nil))[:20], hdr: hdr{"Content-Encoding": "gzip"}, status: 400},
		{name: "br", body: with(nil), hdr: hdr{"Content-Encoding": "br"}, status: 415, code: "UNSUPPORTED_ENCODING"},
		{name: "deflate", body: with(nil), hdr: hdr{"Content-Encoding": "deflate"}, status: 415, code: "UNSUPPORTED_ENCODING"},
		{name: "compress", body: with(nil), hdr: hdr{"Content-Encoding": "compress"}, status: 415, code: "UNSUPPORTED_ENCODING"},
		{name: "gzip, gzip", body: gzipBytes(t, gzipBytes(t, with(nil))), hdr: hdr{"Content-Encoding": "gzip, gzip"}, status: 415, code: "UNSUPPORTED_ENCODING"},
		// Media types (B11, B12).
		{name: "application/xml", body: with(nil), hdr: hdr{"Content-Type": "application/xml"}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "multipart/form-data", body: raw("--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--x--\r\n"),
			hdr: hdr{"Content-Type": "multipart/form-data; boundary=x"}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "missing Content-Type", body: with(nil), hdr: hdr{"Content-Type": ""}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "text/plain", body: with(nil), hdr: hdr{"Content-Type": "text/plain"}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "ndjson on /ingest", body: with(nil), hdr: hdr{"Content-Type": "application/x-ndjson"}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		// Keys (B02, B03).
		{name: "unknown key", body: with(map[string]any{"apiKey": unknownKey}), status: 401, code: "INVALID_API_KEY"},
		{name: "implausible key", body: with(map[string]any{"apiKey": "x"}), status: 401, code: "INVALID_API_KEY"},
		{name: "no key", body: with(map[string]any{"apiKey": nil}), status: 401, code: "INVALID_API_KEY"},
		{name: "key not a string", body: with(map[string]any{"apiKey": 12345678}), status: 401, code: "INVALID_API_KEY"},

		// The batch endpoint.
		{name: "batch []", path: "/ingest/batch", body: raw(`[]`), hdr: keyHdr, status: 400},
		{name: "batch {events:[]}", path: "/ingest/batch", body: raw(`{"events":[]}`), hdr: keyHdr, status: 400},
		{name: "batch {batch:[]}", path: "/ingest/batch", body: raw(`{"batch":[]}`), hdr: keyHdr, status: 400},
		{name: "batch events not an array", path: "/ingest/batch", body: raw(`{"events":{"type":"event"}}`), hdr: keyHdr, status: 400},
		{name: "batch empty body", path: "/ingest/batch", body: nil, hdr: keyHdr, status: 400},
		{name: "batch empty ndjson", path: "/ingest/batch", body: raw("\n\n"), hdr: hdr{"X-API-Key": key, "Content-Type": "application/x-ndjson"}, status: 400},
		{name: "batch top-level string", path: "/ingest/batch", body: raw(`"x"`), hdr: keyHdr, status: 400},
		{name: "batch top-level number", path: "/ingest/batch", body: raw(`1`), hdr: keyHdr, status: 400},
		{name: "batch top-level null", path: "/ingest/batch", body: raw(`null`), hdr: keyHdr, status: 400},
		{name: "batch malformed", path: "/ingest/batch", body: raw(`[{"name":`), hdr: keyHdr, status: 400, code: "INVALID_JSON"},
		{name: "batch of 1001 events", path: "/ingest/batch", body: mustJSON(t, batch1001), hdr: keyHdr, status: 413, code: "PAYLOAD_TOO_LARGE"},
		{name: "batch of 1001 ndjson lines", path: "/ingest/batch", body: ndjson(t, batch1001), hdr: hdr{"X-API-Key": key, "Content-Type": "application/x-ndjson"}, status: 413, code: "PAYLOAD_TOO_LARGE"},
		{name: "batch body of 2 MiB", path: "/ingest/batch", body: bytes.Repeat([]byte(" "), 2<<20), hdr: keyHdr, status: 413, code: "PAYLOAD_TOO_LARGE", raw: true},
		{name: "batch gzip bomb", path: "/ingest/batch", body: gzipBomb, hdr: gz(keyHdr), status: 413, code: "PAYLOAD_TOO_LARGE", fast: true},
		{name: "batch zstd bomb", path: "/ingest/batch", body: zstdBomb, hdr: hdr{"X-API-Key": key, "Content-Encoding": "zstd"}, status: 413, code: "PAYLOAD_TOO_LARGE", fast: true},
		{name: "batch gzip garbage", path: "/ingest/batch", body: raw("garbage"), hdr: gz(keyHdr), status: 400},
		{name: "batch zstd garbage", path: "/ingest/batch", body: raw("garbage"), hdr: hdr{"X-API-Key": key, "Content-Encoding": "zstd"}, status: 400},
		{name: "batch br", path: "/ingest/batch", body: mustJSON(t, oneBatch), hdr: hdr{"X-API-Key": key, "Content-Encoding": "br"}, status: 415, code: "UNSUPPORTED_ENCODING"},
		{name: "batch gzip, gzip", path: "/ingest/batch", body: gzipBytes(t, gzipBytes(t, mustJSON(t, oneBatch))), hdr: hdr{"X-API-Key": key, "Content-Encoding": "gzip, gzip"}, status: 415, code: "UNSUPPORTED_ENCODING"},
		{name: "batch application/xml", path: "/ingest/batch", body: mustJSON(t, oneBatch), hdr: hdr{"X-API-Key": key, "Content-Type": "application/xml"}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "batch multipart", path: "/ingest/batch", body: raw("--x--\r\n"), hdr: hdr{"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=x"}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "batch missing Content-Type", path: "/ingest/batch", body: mustJSON(t, oneBatch), hdr: hdr{"X-API-Key": key, "Content-Type": ""}, status: 415, code: "UNSUPPORTED_MEDIA_TYPE"},
		{name: "batch unknown header key", path: "/ingest/batch", body: mustJSON(t, oneBatch), hdr: hdr{"X-API-Key": unknownKey}, status: 401, code: "INVALID_API_KEY"},
		{name: "batch unknown bearer key", path: "/ingest/batch", body: mustJSON(t, oneBatch), hdr: hdr{"Authorization": "Bearer " + unknownKey}, status: 401, code: "INVALID_API_KEY"},
		{name: "batch no key", path: "/ingest/batch", body: mustJSON(t, oneBatch), status: 401, code: "INVALID_API_KEY"},
		{name: "batch Basic auth is no key", path: "/ingest/batch", body: mustJSON(t, oneBatch), hdr: hdr{"Authorization": "Basic " + key}, status: 401, code: "INVALID_API_KEY"},
		{name: "batch key in the query string (B05)", path: "/ingest/batch?api_key=" + key, body: mustJSON(t, oneBatch), status: 401, code: "INVALID_API_KEY"},
		{name: "batch apiKey in the query string", path: "/ingest/batch?apiKey=" + key, body: mustJSON(t, oneBatch), status: 401, code: "INVALID_API_KEY"},
		{name: "batch of unknown per-event keys", path: "/ingest/batch", body: raw(`[{"apiKey":"` + unknownKey + `","type":"event","name":"x","payload":{}}]`), status: 401, code: "INVALID_API_KEY"},
	}

	for _, c := range cases {
		path := c.path
		if path == "" {
			path = "/ingest"
		}
		var res response
		if c.raw {
			res = rawPost(t, b, path, c.body, c.hdr)
		} else {
			res = b.post(t, path, c.body, c.hdr)
		}
		requireJSONError(t, res, c.status, c.code)
		require.NotContains(t, strings.ToLower(string(res.body)), "goroutine", c.name)
		if c.fast {
			require.Less(t, res.took, 10*time.Second, "%s answered in %s", c.name, res.took)
		}
		require.Zero(t, b.produced(t), "%s produced to Kafka", c.name)
	}

	// A sentinel proves the service is healthy and the topic readable: it is the only
	// message after everything above.
	res := b.ingest(t, validEvent(key))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	msgs := b.readTopic(t)
	require.Len(t, msgs, 1)
	require.Equal(t, string(res.env.Data), string(msgs[0].Value))
}

// TestIngestHTTPLimits: the HTTP-layer answers fasthttp produces before the handler runs
// (ErrorHandler), with a raw connection where net/http would hide them.
func TestIngestHTTPLimits(t *testing.T) {
	t.Parallel()
	b := setup(t)

	// B35: headers over the 8 KiB read buffer → 431.
	for range 3 {
		status, body := rawExchange(t, b, "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Padding: "+strings.Repeat("p", 16<<10)+"\r\nContent-Length: 2\r\n\r\n{}")
		require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, status, "body: %s", body)
		require.Contains(t, body, `"code":"HEADERS_TOO_LARGE"`)
	}

	// B13 with a declared length beyond the cap: 413 before the body is read.
	status, body := rawExchange(t, b, "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n{")
	require.Equal(t, http.StatusRequestEntityTooLarge, status, "body: %s", body)
	require.Contains(t, body, `"code":"PAYLOAD_TOO_LARGE"`)

	// B14: a chunked body over the cap → 413 (or a close); nothing produced.
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for range 40 { // 2.5 MiB
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		_ = pw.Close()
	}()
	req, err := http.NewRequest(http.MethodPost, b.url+"/ingest/batch", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", b.project.APIKey)
	if resp, err := b.client.Do(req); err == nil {
		_ = resp.Body.Close()
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	}
	_ = pr.Close()

	// B42: a request without Host is malformed.
	status, _ = rawExchange(t, b, "POST /ingest HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	require.Equal(t, http.StatusBadRequest, status)

	require.Zero(t, b.produced(t))
}

// rawExchange writes a raw HTTP request and returns the status and body of the answer.
func rawExchange(t *testing.T, b *testBundle, request string) (int, string) {
	t.Helper()
	res := rawSend(t, b, []byte(request))
	return res.status, string(res.body)
}

// rawPost posts body over a plain connection (see the raw field above).
func rawPost(t *testing.T, b *testBundle, path string, body []byte, h hdr) response {
	t.Helper()
	head := "POST " + path + " HTTP/1.1\r\nHost: " + strings.TrimPrefix(b.url, "http://") + "\r\n"
	if _, ok := h["Content-Type"]; !ok {
		head += "Content-Type: application/json\r\n"
	}
	for k, v := range h {
		if v != "" {
			head += k + ": " + v + "\r\n"
		}
	}
	head += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	return rawSend(t, b, append([]byte(head), body...))
}

// rawSend writes request from a goroutine (a write failing because the server closed
// first is fine) while reading the answer.
func rawSend(t *testing.T, b *testBundle, request []byte) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(b.url, "http://"), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	start := time.Now()
	go func() { _, _ = conn.Write(request) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := response{status: resp.StatusCode, header: resp.Header, body: body, took: time.Since(start)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(body, &r.env), "body: %s", body)
	}
	return r
}

// TestIngestConnections is the rest of the HTTP-layer table: slow bodies, idle
// keep-alives, connections per IP and pipelining (B37–B41).
func TestIngestConnections(t *testing.T) {
	t.Parallel()
	dial := func(t *testing.T, b *testBundle) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(b.url, "http://"), 5*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		require.NoError(t, c.SetDeadline(time.Now().Add(15*time.Second)))
		return c
	}
	// closedWithin reads until the server closes c (a 408 before the close is fine).
	closedWithin := func(t *testing.T, c net.Conn) time.Duration {
		t.Helper()
		start := time.Now()
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server never closed the connection")
		return time.Since(start)
	}

	t.Run("slow body is cut at ReadTimeout (B37)", func(t *testing.T) {
		t.Parallel()
		b := setup(t, withConfig(func(c *ingestor.Config) { c.ReadTimeout = 500 * time.Millisecond }))
		c := dial(t, b)
		_, err := io.WriteString(c, "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		require.NoError(t, err)
		require.Less(t, closedWithin(t, c), 3*time.Second)
		require.Zero(t, b.produced(t))
	})

	t.Run("idle keep-alive is closed at IdleTimeout (B38)", func(t *testing.T) {
		t.Parallel()
		b := setup(t, withConfig(func(c *ingestor.Config) { c.IdleTimeout = 300 * time.Millisecond }))
		c := dial(t, b)
		body := mustJSON(t, validEvent(b.project.APIKey))
		_, err := io.WriteString(c, "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+string(body))
		require.NoError(t, err)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		require.False(t, resp.Close, "keep-alive")
		start := time.Now()
		_, err = br.ReadByte()
		require.ErrorIs(t, err, io.EOF)
		require.Less(t, time.Since(start), 3*time.Second)
	})

	t.Run("connections per IP are capped (B39)", func(t *testing.T) {
		t.Parallel()
		b := setup(t, withConfig(func(c *ingestor.Config) { c.MaxConnsPerIP = 4 }))
		body := mustJSON(t, validEvent(b.project.APIKey))
		request := "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body)
		var conns []*bufio.Reader
		var raw []net.Conn
		for range 4 { // each proven accepted and served
			c := dial(t, b)
			_, err := io.WriteString(c, request)
			require.NoError(t, err)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			require.Equal(t, http.StatusAccepted, resp.StatusCode)
			conns, raw = append(conns, br), append(raw, c)
		}
		extra := dial(t, b)
		_, _ = io.WriteString(extra, request)
		resp, err := http.ReadResponse(bufio.NewReader(extra), nil)
		if err == nil { // fasthttp answers 429 before closing; a bare close is fine too
			_ = resp.Body.Close()
			require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
		}
		// The accepted connections keep working.
		_, err = io.WriteString(raw[0], request)
		require.NoError(t, err)
		resp, err = http.ReadResponse(conns[0], nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		require.EqualValues(t, 5, b.produced(t))
	})

	t.Run("pipelined requests are answered in order (B41)", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		c := dial(t, b)
		const n = 100
		var all strings.Builder
		evs, ids := batchEvents(n)
		for _, ev := range evs {
			ev["apiKey"] = b.project.APIKey
			body := mustJSON(t, ev)
			all.WriteString("POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
			all.Write(body)
		}
		go func() { _, _ = io.WriteString(c, all.String()) }()
		br := bufio.NewReader(c)
		for i := range n {
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err, "response %d", i)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, http.StatusAccepted, resp.StatusCode, "response %d: %s", i, body)
			var env struct{ Data wireEvent }
			require.NoError(t, json.Unmarshal(body, &env))
			require.Equal(t, ids[i], env.Data.ID, "response %d is for request %d", i, i)
		}
		require.Len(t, messagesByID(t, b.readTopic(t)), n)
	})
}
