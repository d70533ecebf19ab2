package main_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/client"
	"github.com/pulseboard/pulseboard/pkg/testenv/nginx"
)

// Issue 17 item 2 and acceptance 2: an SDK pointed at the api's origin loses nothing. The
// all-in-one's api port serves the ingest routes (forwarded to its own ingest listener),
// and the compose stack's nginx configuration routes them to the ingestor. Every event
// is stored exactly once, and the ingestor's unknown-key guard keys on the real client,
// never on the api or the proxy in between.

// fromAddr is an HTTP client whose connections come from the loopback address localIP
// (Linux routes all of 127.0.0.0/8 to lo), so that tests can be several clients.
func fromAddr(t *testing.T, localIP string) *http.Client {
	t.Helper()
	tr := &http.Transport{DisableCompression: true,
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}, Timeout: 5 * time.Second}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// send posts body to url with headers (name, value pairs) and returns the status and body.
func send(t *testing.T, c *http.Client, method, url string, body []byte, headers ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, raw
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// sdkShapes sends the SDKs' request shapes to origin, each event with a name starting
// with prefix: single events as the React Native SDK and the old backend's clients post
// them (apiKey in the body, client eventId and timestamp, context), a gzipped batch with
// the key in X-API-Key as the Go SDK posts, a crash to /analytics/crash, and the Go SDK
// itself. It returns how many events must be stored.
func sdkShapes(t *testing.T, c *http.Client, origin, key, prefix string) int {
	t.Helper()
	n := 0
	for i := range 3 {
		body := fmt.Sprintf(`{"apiKey":%q,"eventId":%q,"type":"error","name":"%s-single-%d","payload":{"message":"boom","stack":"at x"},`+
			`"context":{"device":{"os":"ios"}},"timestamp":"2026-03-01T12:00:00.000Z"}`, key, uuid.NewString(), prefix, i)
		status, h, raw := send(t, c, http.MethodPost, origin+"/ingest", []byte(body), "Content-Type", "application/json")
		require.Equal(t, http.StatusAccepted, status, "%s/ingest: %s", origin, raw)
		require.Equal(t, "*", h.Get("Access-Control-Allow-Origin"), "the ingestor's answer")
		n++
	}
	var events []string
	for i := range 50 {
		events = append(events, fmt.Sprintf(`{"eventId":%q,"type":"metric","name":"%s-batch-%d","payload":{"value":%d}}`, uuid.NewString(), prefix, i, i))
	}
	batch := gzipBytes(t, []byte(`{"events":[`+strings.Join(events, ",")+`]}`))
	status, _, raw := send(t, c, http.MethodPost, origin+"/ingest/batch", batch,
		"Content-Type", "application/json", "Content-Encoding", "gzip", "X-API-Key", key)
	require.Equal(t, http.StatusAccepted, status, "%s/ingest/batch: %s", origin, raw)
	n += len(events)

	crash := fmt.Sprintf(`{"apiKey":%q,"errorName":"%s-crash","errorMessage":"undefined is not a function",`+
		`"stackTrace":"TypeError: undefined is not a function\n    at onPress (Cart.tsx:7:3)","isFatal":false,"sessionId":%q,`+
		`"context":{"device":{"platform":"ios"}}}`, key, prefix, uuid.NewString())
	status, _, raw = send(t, c, http.MethodPost, origin+"/analytics/crash", []byte(crash), "Content-Type", "application/json")
	require.Equal(t, http.StatusCreated, status, "%s/analytics/crash: %s", origin, raw)
	n++

	sdk, err := client.New(client.Options{Endpoint: origin, APIKey: key, MaxBatchEvents: 20, Gzip: true, FlushInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	for i := range 100 {
		require.NoError(t, sdk.Enqueue(client.Event{Type: client.TypeEvent, Name: fmt.Sprintf("%s-gosdk-%d", prefix, i)}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, sdk.Close(ctx))
	st := sdk.Stats()
	require.EqualValues(t, 100, st.Sent, "Go SDK stats: %+v", st)
	require.Zero(t, st.Failed+st.Rejected+st.Dropped, "Go SDK stats: %+v", st)
	return n + 100
}

// requireStoredOnce waits until exactly n events named prefix-… are stored, each once,
// and checks that no more arrive.
func requireStoredOnce(t *testing.T, in *instance, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	count := func() (stored, distinct int) {
		err := in.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM events WHERE name LIKE $1`, prefix+"-%").Scan(&stored, &distinct)
		require.NoError(t, err)
		return stored, distinct
	}
	require.Eventually(t, func() bool { s, _ := count(); return s >= n }, 30*time.Second, 50*time.Millisecond, "events of %s stored", prefix)
	time.Sleep(300 * time.Millisecond)
	stored, distinct := count()
	require.Equal(t, n, stored, "%s: every event stored exactly once", prefix)
	require.Equal(t, n, distinct)
}

// guardKeysOnTheClient checks the unknown-key guard (burst 3) through origin: a client at
// attackerIP sending bad keys, each with another spoofed X-Forwarded-For and Forwarded,
// gets 401 three times and then 429; a client at otherIP behind the same api (or proxy)
// still gets 401 for a bad key and 202 for a good one. A guard keyed on the api's or the
// proxy's address would refuse the second client; one keyed on the spoofed headers
// would never refuse the first.
func guardKeysOnTheClient(t *testing.T, origin, attackerIP, otherIP, goodKey string) {
	t.Helper()
	attacker, other := fromAddr(t, attackerIP), fromAddr(t, otherIP)
	badKey := func() string { return "pb_live_" + strings.ReplaceAll(uuid.NewString(), "-", "") }
	for i := range 6 {
		body := fmt.Sprintf(`{"apiKey":%q,"type":"event","name":"guess","payload":{}}`, badKey())
		status, h, raw := send(t, attacker, http.MethodPost, origin+"/ingest", []byte(body), "Content-Type", "application/json",
			"X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i+1), "Forwarded", fmt.Sprintf("for=203.0.113.%d", i+1))
		if i < 3 {
			require.Equal(t, http.StatusUnauthorized, status, "guess %d: %s", i, raw)
			continue
		}
		require.Equal(t, http.StatusTooManyRequests, status, "guess %d must be refused by the guard: %s", i, raw)
		require.NotEmpty(t, h.Get("Retry-After"))
	}
	status, _, raw := send(t, other, http.MethodPost, origin+"/ingest",
		[]byte(fmt.Sprintf(`{"apiKey":%q,"type":"event","name":"guess","payload":{}}`, badKey())), "Content-Type", "application/json")
	require.Equal(t, http.StatusUnauthorized, status, "another client is not charged for the attacker's guesses: %s", raw)
	status, _, raw = send(t, other, http.MethodPost, origin+"/ingest",
		[]byte(fmt.Sprintf(`{"apiKey":%q,"type":"event","name":"guard-good","payload":{}}`, goodKey)), "Content-Type", "application/json")
	require.Equal(t, http.StatusAccepted, status, "%s", raw)
}

// The all-in-one: the api port takes everything the ingest port takes, with no
// configuration, and the ingestor's answers come back as they are.
func TestAllInOneServesIngestOnTheAPIOrigin(t *testing.T) {
	t.Parallel()
	in := start(t, "INGEST_UNKNOWN_KEY_BURST=3", "INGEST_UNKNOWN_KEY_RATE=0.01")
	c := fromAddr(t, "127.0.0.1")

	n := sdkShapes(t, c, in.api, in.apiKey, "via-api")
	requireStoredOnce(t, in, "via-api", n)
	// The ingest origin is unchanged.
	n = sdkShapes(t, c, in.ingest, in.apiKey, "via-ingest")
	requireStoredOnce(t, in, "via-ingest", n)

	// A browser's preflight from any origin gets the ingestor's open ingest CORS, not the
	// api's credentialed allow-list.
	status, h, _ := send(t, c, http.MethodOptions, in.api+"/ingest/batch", nil, "Origin", "https://shop.example",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, content-encoding, x-api-key")
	require.Equal(t, http.StatusNoContent, status)
	require.Equal(t, "*", h.Get("Access-Control-Allow-Origin"))
	require.Contains(t, h.Get("Access-Control-Allow-Headers"), "X-API-Key")
	require.Empty(t, h.Get("Access-Control-Allow-Credentials"))

	// The ingestor's refusals pass through unchanged: a bad key, a body over the
	// ingestor's 1 MiB limit (drained by the ingestor), and one past its drain bound.
	status, _, raw := send(t, c, http.MethodPost, in.api+"/ingest", []byte(`{"apiKey":"nope","type":"event","name":"x"}`), "Content-Type", "application/json")
	require.Equal(t, http.StatusUnauthorized, status)
	require.JSONEq(t, `{"success":false,"code":"INVALID_API_KEY","message":"Invalid API key"}`, string(raw))
	for _, size := range []int{2 << 20, 9 << 20} {
		status, _, raw = send(t, c, http.MethodPost, in.api+"/ingest/batch", bytes.Repeat([]byte(" "), size), "Content-Type", "application/json", "X-API-Key", in.apiKey)
		require.Equal(t, http.StatusRequestEntityTooLarge, status, "%d bytes: %s", size, raw)
		var e struct{ Code string }
		require.NoError(t, json.Unmarshal(raw, &e), "%s", raw)
		require.Equal(t, "PAYLOAD_TOO_LARGE", e.Code)
	}

	// The guard keys on the client the api saw (127.0.0.2, 127.0.0.3), not on the api's
	// own loopback address and not on what the client claims.
	guardKeysOnTheClient(t, in.api, "127.0.0.2", "127.0.0.3", in.apiKey)

	m := scrape(t, in.admin)
	for _, route := range []string{"/ingest", "/ingest/batch", "/analytics/{kind}"} {
		v, ok := m.value("pulseboard_api_http_requests_total", "route", route)
		require.True(t, ok && v > 0, "api requests on %s", route)
	}
	v, ok := m.value("pulseboard_api_ingest_forward_errors_total")
	require.True(t, ok, "the forward error counter is exported")
	require.Zero(t, v)
}

// The compose stack's nginx, with the very configuration docker-compose.yml mounts
// (deploy/nginx/pulseboard.conf; only its listen port and upstream addresses replaced),
// in front of a real ingestor and api: the ingest routes reach the ingestor, everything
// else the api, and the ingestor's guard keys on the client nginx reports. (The
// all-in-one's ingestor trusts 127.0.0.1, nginx's address here, as the compose ingestor
// trusts nginx's fixed address.)
func TestComposeNginxRoutesOneOrigin(t *testing.T) {
	t.Parallel()
	in := start(t, "INGEST_UNKNOWN_KEY_BURST=3", "INGEST_UNKNOWN_KEY_RATE=0.01")
	conf := readNginxConf(t)
	proxy := nginx.Start(t, nginx.Options{Server: conf.forTest(t,
		strings.TrimPrefix(in.ingest, "http://"), strings.TrimPrefix(in.api, "http://"))})
	c := fromAddr(t, "127.0.0.1")

	n := sdkShapes(t, c, proxy.URL, in.apiKey, "via-nginx")
	requireStoredOnce(t, in, "via-nginx", n)

	// The api's routes: its OpenAPI document, a login refused in its JSON shape, its
	// CORS for the dashboard's origin.
	status, _, raw := send(t, c, http.MethodGet, proxy.URL+"/openapi.json", nil)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(raw), `"openapi"`)
	status, h, raw := send(t, c, http.MethodPost, proxy.URL+"/auth/login", []byte(`{"email":"nobody@example.com","password":"wrong-password"}`),
		"Content-Type", "application/json", "Origin", "http://localhost:3001")
	require.Equal(t, http.StatusUnauthorized, status, "%s", raw)
	require.Contains(t, string(raw), `"code":"INVALID_CREDENTIALS"`)
	require.Equal(t, "http://localhost:3001", h.Get("Access-Control-Allow-Origin"))
	// Only the ingest paths go to the ingestor.
	status, _, raw = send(t, c, http.MethodPost, proxy.URL+"/ingestx", []byte(`{}`), "Content-Type", "application/json")
	require.Equal(t, http.StatusNotFound, status)
	require.Contains(t, string(raw), `"code":"NOT_FOUND"`)

	guardKeysOnTheClient(t, proxy.URL, "127.0.0.4", "127.0.0.5", in.apiKey)
	require.Empty(t, proxy.ErrorLog(), "nginx reported errors")
}
