package main_test

// The attack half of the bad-input suite (docs/reliability.md "Bad input and attacks", issue
// 7) across the whole system, as a real all-in-one process: secrets never reach the
// logs, a logout ends the session's live streams, streams refuse foreign origins, and
// client timestamps at the edges of time are stored without odd partitions.

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// webUser is a dashboard user: a browser-like client with a cookie jar.
type webUser struct {
	t      *testing.T
	in     *instance
	client *http.Client
	token  string // the access JWT
	rt     string // the refresh token from the last Set-Cookie
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func newWebUser(t *testing.T, in *instance) *webUser {
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &webUser{t: t, in: in, client: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// call sends a request; headers are name, value pairs.
func (u *webUser) call(method, url, body string, headers ...string) answer {
	u.t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(u.t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if u.token != "" {
		req.Header.Set("Authorization", "Bearer "+u.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := u.client.Do(req)
	require.NoError(u.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(u.t, err)
	for _, c := range resp.Cookies() {
		if c.Name == "refreshToken" && c.Value != "" {
			u.rt = c.Value
		}
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: raw}
}

// session registers (or logs in) and keeps the access token.
func (u *webUser) session(path, body string, want int) {
	u.t.Helper()
	a := u.call("POST", u.in.api+path, body)
	require.Equal(u.t, want, a.status, "%s", a.body)
	var r struct {
		Data struct {
			AccessToken string `json:"accessToken"`
		} `json:"data"`
	}
	require.NoError(u.t, json.Unmarshal(a.body, &r))
	u.token = r.Data.AccessToken
	require.NotEmpty(u.t, u.token)
}

// project creates a project and returns its id and API key.
func (u *webUser) project(name string) (id, key string) {
	u.t.Helper()
	a := u.call("POST", u.in.api+"/projects", `{"name":`+strconv.Quote(name)+`}`)
	require.Equal(u.t, http.StatusCreated, a.status, "%s", a.body)
	var r struct {
		Data struct{ ID, APIKey string } `json:"data"`
	}
	require.NoError(u.t, json.Unmarshal(a.body, &r))
	return r.Data.ID, r.Data.APIKey
}

// openSSE opens an SSE stream, returns its first data line and closes it.
func (in *instance) openSSE(t *testing.T, ctx context.Context, project, query string, header http.Header) string {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, in.api+"/realtime/"+project+"/sse"+query, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			return data
		}
	}
}

func (in *instance) wsURL(project, query string) string {
	return strings.Replace(in.api, "http://", "ws://", 1) + "/realtime/" + project + query
}

// TestAllInOneLogsCarryNoSecrets (B05, B73, ASVS 16.2.5): a session that uses every
// kind of secret (password, access JWT in a header, a query string and a subprotocol,
// refresh tokens including a reused one, API keys in bodies, headers and URLs, unknown
// keys, the JWT and SMTP secrets from the environment), with debug logging on: none of
// them appears anywhere in the logs of any component.
func TestAllInOneLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	const jwtSecret = "jwt-secret-for-the-log-test-0123456789abcdef"
	const smtpPass = "smtp-pass-for-the-log-test"
	in := start(t, "LOG_LEVEL=debug", "JWT_ACCESS_SECRET="+jwtSecret, "API_REFRESH_REUSE_GRACE=0s",
		"INGEST_UNKNOWN_KEY_BURST=3", "API_BCRYPT_COST=4",
		// Mail goes to an SMTP server that is not there: a failed delivery logs its error.
		"SMTP_HOST=127.0.0.1", "SMTP_PORT="+strconv.Itoa(freePort(t)), "SMTP_USER=alerts", "SMTP_PASS="+smtpPass, "SMTP_TLS=none")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const password, wrongPassword = "correct-horse-password-1", "wrong-horse-password-2"
	u := newWebUser(t, in)
	u.session("/auth/register", `{"name":"Secret Keeper","email":"keeper@example.com","password":"`+password+`"}`, http.StatusCreated)
	secrets := map[string]string{"password": password, "wrong password": wrongPassword, "JWT secret": jwtSecret, "SMTP password": smtpPass}
	require.Equal(t, http.StatusUnauthorized, u.call("POST", in.api+"/auth/login", `{"email":"keeper@example.com","password":"`+wrongPassword+`"}`).status)
	u.session("/auth/login", `{"email":"keeper@example.com","password":"`+password+`"}`, http.StatusOK)
	secrets["access token"], secrets["first refresh token"] = u.token, u.rt
	require.Equal(t, http.StatusOK, u.call("GET", in.api+"/me", "").status)
	pid, key := u.project("secrets")
	secrets["API key"] = key

	// Ingest with the key in every accepted place, and in the refused ones.
	ev := `{"type":"event","name":"e","payload":{}}`
	for _, c := range []struct {
		path, body string
		headers    []string
		status     int
	}{
		{"/ingest", `{"apiKey":"` + key + `","type":"event","name":"e","payload":{}}`, nil, 202},
		{"/ingest/batch", "[" + ev + "]", []string{"X-API-Key", key}, 202},
		{"/ingest/batch", "[" + ev + "]", []string{"Authorization", "Bearer " + key}, 202},
		{"/ingest/batch?api_key=" + key, "[" + ev + "]", nil, 401},
		{"/ingest?apiKey=" + key, ev, nil, 401},
		{"/ingest/nope?apiKey=" + key, ev, nil, 404},
	} {
		a := u.call("POST", in.ingest+c.path, c.body, c.headers...)
		require.Equal(t, c.status, a.status, "%s: %s", c.path, a.body)
	}
	// Ten errors cross the alert threshold: the alerter tries the SMTP server (with its
	// password) and logs the failure.
	errs := strings.Repeat(`{"type":"error","name":"boom","payload":{}},`, 10)
	a := u.call("POST", in.ingest+"/ingest/batch", "["+strings.TrimSuffix(errs, ",")+"]", "X-API-Key", key)
	require.Equal(t, http.StatusAccepted, a.status, "%s", a.body)
	require.Eventually(t, func() bool { return strings.Contains(in.logs.String(), "email delivery failed") }, 30*time.Second, 50*time.Millisecond,
		"the alert was never attempted")
	for i := range 6 { // past the unknown-key burst: the enumeration warning is logged
		unknown := "pb_live_" + strings.ReplaceAll(uuid.NewString(), "-", "")
		secrets["unknown key "+strconv.Itoa(i)] = unknown
		u.call("POST", in.ingest+"/ingest/batch", "["+ev+"]", "X-API-Key", unknown)
	}
	require.Equal(t, http.StatusOK, u.call("GET", in.api+"/events?apiKey="+key, "").status)
	require.Equal(t, http.StatusUnauthorized, u.call("GET", in.api+"/events?apiKey="+secrets["unknown key 0"], "").status)

	// Live streams: the token in the query string (compat), a subprotocol and a header.
	for _, opts := range []*websocket.DialOptions{nil, {Subprotocols: []string{"bearer", u.token}}} {
		query := ""
		if opts == nil {
			query = "?token=" + u.token
		}
		c, _, err := websocket.Dial(ctx, in.wsURL(pid, query), opts)
		require.NoError(t, err)
		_, _, err = c.Read(ctx)
		require.NoError(t, err)
		require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	}
	require.Contains(t, in.openSSE(t, ctx, pid, "?token="+u.token+"&lastEventId=x", nil), `"type":"connected"`)
	forged := strings.TrimSuffix(u.token, u.token[len(u.token)-4:]) + "AAAA"
	secrets["forged token"] = forged
	c, resp, err := websocket.Dial(ctx, in.wsURL(pid, "?token="+forged), nil)
	require.Error(t, err)
	require.Nil(t, c)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// Refresh twice with the first token: the second is a reuse, logged as a security
	// event (which must name the user and family, not the token).
	first := u.rt
	require.Equal(t, http.StatusOK, u.call("POST", in.api+"/auth/refresh", "").status)
	secrets["second refresh token"] = u.rt
	u.client.Jar, _ = cookiejar.New(nil)
	require.Equal(t, http.StatusUnauthorized, u.call("POST", in.api+"/auth/refresh", "", "Cookie", "refreshToken="+first).status)
	require.Equal(t, http.StatusOK, u.call("POST", in.api+"/auth/logout", "", "Cookie", "refreshToken="+secrets["second refresh token"]).status)

	require.NoError(t, in.stop(60*time.Second))
	logs := in.logs.String()
	require.Contains(t, logs, "refresh token reuse detected", "the security event is logged")
	require.Contains(t, logs, "possible key enumeration", "the enumeration warning is logged")
	require.Contains(t, logs, `"path":"/events"`, "requests are logged (by path only)")
	for name, secret := range secrets {
		require.NotContains(t, logs, secret, "%s in the logs", name)
	}
	// The signature and the random part of a key are what matter; look for them alone.
	require.NotContains(t, logs, u.token[strings.LastIndexByte(u.token, '.')+1:], "an access token's signature")
	require.NotContains(t, logs, strings.TrimPrefix(key, "pb_live_"), "the random part of the API key")
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) > 0 && line[0] == '{' {
			require.True(t, json.Valid(line), "one JSON record per line: %s", line)
		}
	}
}

// TestAllInOneLogoutEndsTheSessionsStreams (B55, B81, W3): logging out ends that
// session everywhere within LIVE_REVOCATION_CHECK_INTERVAL: its open WebSocket (4001)
// and SSE streams close, and its access token opens no new stream and calls no route.
// Another session of the same user is untouched. Streams from a foreign origin are
// refused before the upgrade.
func TestAllInOneLogoutEndsTheSessionsStreams(t *testing.T) {
	t.Parallel()
	in := start(t, "LIVE_REVOCATION_CHECK_INTERVAL=500ms", "API_BCRYPT_COST=4")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const creds = `{"email":"two-tabs@example.com","password":"password-1234"}`
	laptop, phone := newWebUser(t, in), newWebUser(t, in)
	laptop.session("/auth/register", `{"name":"Two Sessions","email":"two-tabs@example.com","password":"password-1234"}`, http.StatusCreated)
	laptop.session("/auth/login", creds, http.StatusOK)
	phone.session("/auth/login", creds, http.StatusOK)
	pid, key := laptop.project("live")

	for _, origin := range []string{"https://evil.example", "null", "http://localhost:3001.evil.example"} {
		c, resp, err := websocket.Dial(ctx, in.wsURL(pid, "?token="+laptop.token), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		require.Error(t, err, origin)
		require.Nil(t, c)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, origin)
	}
	dial := func(u *webUser) *websocket.Conn {
		c, _, err := websocket.Dial(ctx, in.wsURL(pid, "?token="+u.token), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://localhost:3001"}}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.CloseNow() })
		_, msg, err := c.Read(ctx)
		require.NoError(t, err)
		require.Contains(t, string(msg), `"type":"connected"`)
		return c
	}
	laptopWS, phoneWS := dial(laptop), dial(phone)
	sseCtx, sseCancel := context.WithCancel(ctx)
	defer sseCancel()
	req, err := http.NewRequestWithContext(sseCtx, http.MethodGet, in.api+"/realtime/"+pid+"/sse", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+laptop.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	sseEnded := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, resp.Body); close(sseEnded) }()

	a := laptop.call("POST", in.api+"/auth/logout", "", "Origin", "http://localhost:3001")
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	loggedOut := time.Now()

	_, _, err = laptopWS.Read(ctx)
	require.Equal(t, websocket.StatusCode(4001), websocket.CloseStatus(err), "the logged-out session's WebSocket: %v", err)
	select {
	case <-sseEnded:
	case <-ctx.Done():
		t.Fatal("the logged-out session's SSE stream stayed open")
	}
	require.Less(t, time.Since(loggedOut), 15*time.Second)

	c, resp2, err := websocket.Dial(ctx, in.wsURL(pid, "?token="+laptop.token), nil)
	require.Error(t, err)
	require.Nil(t, c)
	require.Equal(t, http.StatusUnauthorized, resp2.StatusCode, "a new stream with the logged-out token")
	require.Equal(t, http.StatusUnauthorized, laptop.call("GET", in.api+"/me", "").status, "a route with the logged-out token")
	require.Equal(t, http.StatusUnauthorized, laptop.call("POST", in.api+"/auth/refresh", "", "Cookie", "refreshToken="+laptop.rt).status)

	// The other session keeps its stream and its token.
	require.Equal(t, http.StatusOK, phone.call("GET", in.api+"/me", "").status)
	a = phone.call("POST", in.ingest+"/ingest/batch", `[{"type":"event","name":"after-logout","payload":{}}]`, "X-API-Key", key)
	require.Equal(t, http.StatusAccepted, a.status, "%s", a.body)
	_, msg, err := phoneWS.Read(ctx)
	require.NoError(t, err)
	require.Contains(t, string(msg), `"name":"after-logout"`)
}

// TestAllInOneClientTimestampsAtTheEdges (B29, promise 4): client timestamps from 1970
// to 9999, in any offset, are stored as sent (normalised to UTC) while partitioning
// follows the server's receive time: no partition is created for a client's clock, and
// nothing is dead-lettered.
func TestAllInOneClientTimestampsAtTheEdges(t *testing.T) {
	t.Parallel()
	in := start(t)
	ctx := context.Background()
	stamps := map[string]string{ // sent → stored
		"1970-01-01T00:00:00.000Z":      "1970-01-01T00:00:00.000Z",
		"0001-01-01T00:00:00Z":          "0001-01-01T00:00:00.000Z",
		"9999-12-31T23:59:59.999Z":      "9999-12-31T23:59:59.999Z",
		"9999-12-31T23:59:59.999-12:00": "", // past year 9999 in UTC: refused, not stored
		"2026-01-01T00:00:00+14:00":     "2025-12-31T10:00:00.000Z",
		"2026-01-01T00:00:00-12:00":     "2026-01-01T12:00:00.000Z",
		"2026-05-06":                    "2026-05-06T00:00:00.000Z",
		// The forms the reference backend's clients send (issue 17 item 5): an HTTP date,
		// and epoch milliseconds as a JSON number ("ms:" marks a number here).
		"Tue, 01 Dec 2026 10:00:00 GMT": "2026-12-01T10:00:00.000Z",
		"ms:1796119200123":              "2026-12-01T10:00:00.123Z",
		"ms:-1":                         "1969-12-31T23:59:59.999Z",
		"Tue, 01 Dec 2026 10:00:00 PST": "", // a zone name Go would read as +00:00: refused
	}
	var events []string
	var names []string
	for sent := range stamps {
		names = append(names, sent)
		ts := strconv.Quote(sent)
		if ms, ok := strings.CutPrefix(sent, "ms:"); ok {
			ts = ms
		}
		events = append(events, `{"type":"event","name":`+strconv.Quote(sent)+`,"payload":{},"timestamp":`+ts+`}`)
	}
	u := newWebUser(t, in)
	a := u.call("POST", in.ingest+"/ingest/batch", "["+strings.Join(events, ",")+"]", "X-API-Key", in.apiKey)
	require.Contains(t, []int{http.StatusOK, http.StatusAccepted}, a.status, "%s", a.body)
	var res struct {
		Data struct {
			Results []struct{ Status, Code string } `json:"results"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(a.body, &res))
	want := 0
	for i, sent := range names {
		if stamps[sent] == "" {
			require.Equal(t, "INVALID_TIMESTAMP", res.Data.Results[i].Code, sent)
			continue
		}
		require.Equal(t, "accepted", res.Data.Results[i].Status, "%s: %s", sent, a.body)
		want++
	}

	stored := map[string]string{}
	require.Eventually(t, func() bool {
		rows, err := in.pool.Query(ctx, `SELECT name, to_char("timestamp" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') FROM events`)
		require.NoError(t, err)
		defer rows.Close()
		for rows.Next() {
			var name, ts string
			require.NoError(t, rows.Scan(&name, &ts))
			stored[name] = ts
		}
		return len(stored) == want
	}, 30*time.Second, 50*time.Millisecond, "stored: %v", stored)
	for sent, ts := range stamps {
		if ts != "" {
			require.Equal(t, ts, stored[sent], sent)
		}
	}

	today := time.Now().UTC().Truncate(24 * time.Hour)
	rows, err := in.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var part string
		require.NoError(t, rows.Scan(&part))
		day, err := time.Parse("events_20060102", part)
		require.NoError(t, err, part)
		require.True(t, !day.Before(today.AddDate(0, 0, -2)) && !day.After(today.AddDate(0, 0, 14)), "partition %s follows a client's clock", part)
	}
	require.NoError(t, rows.Err())
	dlq, _ := scrape(t, in.admin).value("pulseboard_consumer_dlq_messages_total")
	require.Zero(t, dlq, "nothing accepted may be dead-lettered")
}
