package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

// waitFor bounds every wait for something asynchronous.
const waitFor = 15 * time.Second

// testSecret signs access tokens in tests, so tests can forge tokens with it.
const testSecret = "test-access-secret-0123456789abcdef-0123456789"

const (
	dashboardOrigin = "http://localhost:3001"
	otherOrigin     = "https://app.example.com"
	evilOrigin      = "https://evil.example"
)

// fakeClock is the api's injectable clock (login throttling, refresh-token times).
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logBuffer collects the service's JSON logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type bundle struct {
	t     *testing.T
	pool  *pgxpool.Pool
	rdb   *redis.Client
	svc   *api.Service
	base  string
	reg   *prometheus.Registry
	clock *fakeClock
	logs  *logBuffer
	live  api.LiveStreams
	stop  func() error
}

// testEnv is the configuration every test starts from: cheap bcrypt, a known secret,
// two dashboard origins.
func testEnv() config.Env {
	return config.Env{
		"JWT_ACCESS_SECRET": testSecret,
		"API_BCRYPT_COST":   "4",
		"CORS_ORIGIN":       dashboardOrigin + "," + otherOrigin,
		// Redis is shared by every test (and run): each api gets its own throttle keys.
		"API_LOGIN_THROTTLE_PREFIX": "pbtest:" + uuid.NewString() + ":login:",
		// Tests register many accounts from 127.0.0.1; TestRegisterThrottled* lower these.
		"API_REGISTER_IP_LIMIT":     "100000",
		"API_REGISTER_GLOBAL_LIMIT": "100000",
	}
}

type setupOpts struct {
	env  config.Env
	live api.LiveStreams
	// allow500: the test forces an internal error on purpose.
	allow500 bool
	// realLive: the api's own live streams (api.NewLive: the Hub on this test's
	// database and Redis), instead of live.
	realLive bool
}

type option func(*setupOpts)

func withEnv(kv ...string) option {
	return func(o *setupOpts) {
		for i := 0; i+1 < len(kv); i += 2 {
			o.env[kv[i]] = kv[i+1]
		}
	}
}

func withLive(l api.LiveStreams) option { return func(o *setupOpts) { o.live = l } }

// withRealLive mounts the real live streams (WebSocket, SSE, Socket.IO), as the hosts do.
func withRealLive() option { return func(o *setupOpts) { o.realLive = true } }

// allowingInternalErrors is for the one test that breaks the database to see a 500.
func allowingInternalErrors() option { return func(o *setupOpts) { o.allow500 = true } }

// setup starts a whole api in-process on 127.0.0.1:0 with its own database and the
// shared Redis, and stops it at the end of the test (Run must return nil).
func setup(t *testing.T, opts ...option) *bundle {
	t.Helper()
	o := setupOpts{env: testEnv()}
	for _, f := range opts {
		f(&o)
	}
	_, pool := pgtest.NewDB(t)
	b := &bundle{t: t, pool: pool, rdb: redistest.Client(t), reg: prometheus.NewRegistry(),
		clock: &fakeClock{now: time.Now()}, logs: &logBuffer{}, live: o.live}
	cfg, err := config.Parse[api.Config](o.env)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deps := api.Deps{
		Pool: pool, Redis: b.rdb, Listener: ln, Live: o.live,
		Logger:     slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: b.reg, Now: b.clock.Now,
	}
	if o.realLive {
		deps.Tokens, err = api.NewAccessTokens(cfg, nil)
		require.NoError(t, err)
		deps.Live, err = api.NewLive(cfg, deps, deps.Tokens)
		require.NoError(t, err)
		b.live = deps.Live
	}
	b.svc, err = api.New(cfg, deps)
	if err != nil {
		_ = ln.Close()
	}
	require.NoError(t, err)
	b.base = "http://" + b.svc.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.svc.Run(ctx) }()
	var once sync.Once
	var runErr error
	b.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(waitFor):
				runErr = context.DeadlineExceeded
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		require.NoError(t, b.stop())
		// Issue 16 acceptance 3: no input any test sends (the attack suite's included) is
		// answered with a 500; a dependency that fails is a 503.
		if n := b.counter("pulseboard_api_http_requests_total", map[string]string{"code": "500"}); n != 0 && !o.allow500 {
			t.Errorf("%v requests were answered 500 (a bug: bad input is a 4xx, an outage a 503); see the logs", n)
		}
	})
	return b
}

// client is a browser-like client: a cookie jar, and an access token once signed in.
type client struct {
	t     *testing.T
	b     *bundle
	http  *http.Client
	token string
	base  string // when set, requests go here instead of the api (a proxy in front)
}

// via is a client whose requests go to base (a reverse proxy in front of the api) over
// connections from the loopback address localIP.
func (b *bundle) via(base, localIP string) *client {
	c := b.client()
	c.base = base
	c.http.Transport = &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}).DialContext}
	b.t.Cleanup(c.http.Transport.(*http.Transport).CloseIdleConnections)
	return c
}

func (b *bundle) client() *client {
	jar, err := cookiejar.New(nil)
	require.NoError(b.t, err)
	tr := &http.Transport{}
	b.t.Cleanup(tr.CloseIdleConnections)
	return &client{t: b.t, b: b, http: &http.Client{Jar: jar, Transport: tr, Timeout: waitFor}}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body: %s", r.body)
	return m
}

func (r response) data(t *testing.T) map[string]any {
	t.Helper()
	m := r.json(t)
	require.Equal(t, true, m["success"], "body: %s", r.body)
	d, ok := m["data"].(map[string]any)
	require.True(t, ok, "body: %s", r.body)
	return d
}

// requireError checks the JSON error body exactly.
func (r response) requireError(t *testing.T, status int, code, message string) {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	want, err := json.Marshal(map[string]any{"success": false, "code": code, "message": message})
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(r.body))
}

func (r response) requireCode(t *testing.T, status int, code string) {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	m := r.json(t)
	require.Equal(t, false, m["success"], "body: %s", r.body)
	require.Equal(t, code, m["code"], "body: %s", r.body)
}

// do sends a request. body: nil, a string (sent as is) or anything JSON-encodable;
// headers are name, value pairs.
func (c *client) do(method, path string, body any, headers ...string) response {
	c.t.Helper()
	var rd io.Reader
	ct := ""
	switch v := body.(type) {
	case nil:
	case string:
		rd, ct = strings.NewReader(v), "application/json"
	case []byte:
		rd, ct = bytes.NewReader(v), "application/json"
	default:
		b, err := json.Marshal(v)
		require.NoError(c.t, err)
		rd, ct = bytes.NewReader(b), "application/json"
	}
	base := c.b.base
	if c.base != "" {
		base = c.base
	}
	req, err := http.NewRequest(method, base+path, rd)
	require.NoError(c.t, err)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
			continue
		}
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.http.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

type account struct {
	id, name, email, password string
}

// register creates an account and keeps its access token.
func (c *client) register(name, email, password string) account {
	c.t.Helper()
	r := c.do("POST", "/auth/register", map[string]string{"name": name, "email": email, "password": password})
	require.Equal(c.t, http.StatusCreated, r.status, "body: %s", r.body)
	d := r.data(c.t)
	c.token = d["accessToken"].(string)
	u := d["user"].(map[string]any)
	return account{id: u["id"].(string), name: name, email: u["email"].(string), password: password}
}

// newUser registers a fresh account on a new client.
func (b *bundle) newUser(name string) (*client, account) {
	c := b.client()
	a := c.register(name, strings.ToLower(strings.ReplaceAll(name, " ", "."))+"."+uuid.NewString()[:8]+"@example.com", "password-"+name)
	return c, a
}

// createProject creates a project and returns its JSON object.
func (c *client) createProject(name string) map[string]any {
	c.t.Helper()
	r := c.do("POST", "/projects", map[string]string{"name": name})
	require.Equal(c.t, http.StatusCreated, r.status, "body: %s", r.body)
	return r.data(c.t)
}

// counter reads a counter (summing the series that match labels).
func (b *bundle) counter(name string, labels map[string]string) float64 {
	return b.metricSum(name, labels, false)
}

// labelledGauge reads a gauge (summing the series that match labels).
func (b *bundle) labelledGauge(name string, labels map[string]string) float64 {
	return b.metricSum(name, labels, true)
}

// metricSum sums the series of metric name (a gauge, or a counter) that carry every
// label of labels.
func (b *bundle) metricSum(name string, labels map[string]string, gauge bool) float64 {
	b.t.Helper()
	mfs, err := b.reg.Gather()
	require.NoError(b.t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			if gauge {
				sum += m.GetGauge().GetValue()
			} else {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// eventRow is an event inserted straight into the events table.
type eventRow struct {
	id         uuid.UUID
	typ, name  string
	payload    string
	context    *string
	timestamp  time.Time
	receivedAt time.Time
}

func (b *bundle) insertEvents(projectID string, rows []eventRow) {
	b.t.Helper()
	ctx := context.Background()
	for _, r := range rows {
		_, err := b.pool.Exec(ctx, `INSERT INTO events (id, project_id, type, name, payload, context, "timestamp", received_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, r.id, projectID, r.typ, r.name, r.payload, r.context, r.timestamp, r.receivedAt)
		require.NoError(b.t, err)
		_, err = b.pool.Exec(ctx, `INSERT INTO event_ids (project_id, id, received_at) VALUES ($1, $2, $3)`, projectID, r.id, r.receivedAt)
		require.NoError(b.t, err)
	}
}

func (b *bundle) insertRollup(projectID string, minute time.Time, typ string, n int) {
	b.t.Helper()
	_, err := b.pool.Exec(context.Background(), `INSERT INTO event_rollups (project_id, minute, type, count) VALUES ($1, $2, $3, $4)
		ON CONFLICT (project_id, minute, type) DO UPDATE SET count = event_rollups.count + EXCLUDED.count`,
		projectID, minute.UTC().Truncate(time.Minute), typ, n)
	require.NoError(b.t, err)
}

func (b *bundle) count(query string, args ...any) int {
	b.t.Helper()
	var n int
	require.NoError(b.t, b.pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}
