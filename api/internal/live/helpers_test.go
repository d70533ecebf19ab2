package live_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/api/internal/live"
	"github.com/pulseboard/pulseboard/pkg/auth"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchClientEnv) != "" {
		os.Exit(runBenchClients()) // the benchmark's client process (bench_test.go)
	}
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

// waitFor bounds every asynchronous outcome a test waits for.
const waitFor = 15 * time.Second

const allowedOrigin = "https://dash.example"

// bundle is one Hub mounted like the api mounts it, with a user who owns a project.
type bundle struct {
	hub     *live.Hub
	srv     *httptest.Server
	pool    *pgxpool.Pool
	rdb     *redis.Client
	tokens  *auth.Tokens
	reg     *prometheus.Registry
	user    pgstore.User
	project pgstore.Project
	token   string
}

type setupOpts struct {
	cfg      live.Config
	tokenTTL time.Duration
	redis    *redis.Client // the Hub's client; default redistest.Client
}

func setup(t testing.TB, mod ...func(*setupOpts)) *bundle {
	t.Helper()
	o := setupOpts{
		cfg:      live.Config{AllowedOrigins: []string{allowedOrigin}},
		tokenTTL: 15 * time.Minute,
	}
	for _, f := range mod {
		f(&o)
	}
	_, pool := pgtest.NewDB(t)
	rdb := redistest.Client(t)
	if o.redis == nil {
		o.redis = rdb
	}
	tokens, err := auth.NewTokens(auth.RandomSecret(), o.tokenTTL)
	require.NoError(t, err)
	ctx := context.Background()
	user, err := pgstore.UpsertUser(ctx, pool, "Ada", "ada-"+uuid.NewString()+"@example.com", "x")
	require.NoError(t, err)
	project, err := pgstore.CreateProject(ctx, pool, user.ID, "app")
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	hub, err := live.New(o.cfg, live.Deps{Tokens: tokens, Pool: pool, Redis: o.redis, Registerer: reg})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /realtime/{projectId}", hub.ServeWS)
	mux.HandleFunc("GET /realtime/{projectId}/sse", hub.ServeSSE)
	mux.HandleFunc("/socket.io/", hub.ServeSocketIO)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		hub.Close(ctx) // before the server: it does not track hijacked connections
		srv.Close()
	})
	b := &bundle{hub: hub, srv: srv, pool: pool, rdb: rdb, tokens: tokens, reg: reg, user: user, project: project}
	b.token = b.issue(t, user.ID, time.Now())
	return b
}

func (b *bundle) issue(t testing.TB, userID uuid.UUID, at time.Time) string {
	t.Helper()
	tok, _, err := b.tokens.Issue(userID, "ada@example.com", at)
	require.NoError(t, err)
	return tok
}

func (b *bundle) wsURL(projectID string) string {
	return "ws" + strings.TrimPrefix(b.srv.URL, "http") + "/realtime/" + projectID
}

func (b *bundle) sseURL(projectID string) string {
	return b.srv.URL + "/realtime/" + projectID + "/sse"
}

// dialWS connects with ?token= and reads the "connected" frame.
func (b *bundle) dialWS(t testing.TB) *websocket.Conn {
	t.Helper()
	return b.dialWSWith(t, b.wsURL(b.project.ID.String())+"?token="+b.token, nil)
}

func (b *bundle) dialWSWith(t testing.TB, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	msg := readWS(t, c)
	require.JSONEq(t, fmt.Sprintf(`{"type":"connected","projectId":%q}`, b.project.ID), msg)
	return c
}

// readWS reads one text message within waitFor.
func readWS(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	typ, data, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageText, typ)
	return string(data)
}

// readWSClose reads until the server closes and returns the close status.
func readWSClose(t testing.TB, c *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			require.NoError(t, ctx.Err(), "the server did not close the connection in time")
			return websocket.CloseStatus(err)
		}
	}
}

// sseClient reads an SSE stream with its own parser (the format is small).
type sseClient struct {
	resp   *http.Response
	events chan sseEvent
	done   chan struct{} // closed when the stream ended
}

type sseEvent struct {
	id, data string
	hasID    bool
	retry    string
}

func (b *bundle) openSSE(t testing.TB, header http.Header, query string) *sseClient {
	t.Helper()
	s, status := b.trySSE(t, b.sseURL(b.project.ID.String())+query, header)
	require.Equal(t, http.StatusOK, status)
	ev := s.next(t)
	require.Equal(t, "3000", ev.retry)
	require.JSONEq(t, fmt.Sprintf(`{"type":"connected","projectId":%q}`, b.project.ID), ev.data)
	require.False(t, ev.hasID)
	return s
}

// trySSE starts a stream; with a non-200 answer it returns the status only.
func (b *bundle) trySSE(t testing.TB, url string, header http.Header) (*sseClient, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	if resp.StatusCode != http.StatusOK {
		cancel()
		_ = resp.Body.Close()
		return nil, resp.StatusCode
	}
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
	require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
	s := &sseClient{resp: resp, events: make(chan sseEvent, 4096), done: make(chan struct{})}
	go s.read()
	t.Cleanup(func() {
		cancel()
		_ = resp.Body.Close()
		<-s.done
	})
	return s, resp.StatusCode
}

func (s *sseClient) read() {
	defer close(s.done)
	br := bufio.NewReader(s.resp.Body)
	var ev sseEvent
	var data []string
	hasData := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if hasData {
				ev.data = strings.Join(data, "\n")
				s.events <- ev
			}
			ev, data, hasData = sseEvent{}, nil, false
		case strings.HasPrefix(line, ":"):
			// comment (": ping")
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				ev.id, ev.hasID = value, true
			case "data":
				data, hasData = append(data, value), true
			case "retry":
				ev.retry = value
			case "event":
				panic("the stream must not use event: fields")
			}
		}
	}
}

func (s *sseClient) next(t testing.TB) sseEvent {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-s.done:
		select {
		case ev := <-s.events:
			return ev
		default:
		}
		t.Fatal("the SSE stream ended")
	case <-time.After(waitFor):
		t.Fatal("no SSE event in time")
	}
	return sseEvent{}
}

// ended waits for the server to end the stream.
func (s *sseClient) ended(t testing.TB) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(waitFor):
		t.Fatal("the SSE stream did not end")
	}
}

// newEvent makes a canonical event of the bundle's project, received now.
func (b *bundle) newEvent(name string, payload string) event.Event {
	now := time.Now().UTC().Truncate(event.Precision)
	return event.Event{
		ID:         uuid.Must(uuid.NewV7()),
		ProjectID:  b.project.ID,
		Type:       event.TypeEvent,
		Name:       name,
		Payload:    []byte(payload),
		Timestamp:  now,
		ReceivedAt: now,
	}
}

// publish does what the consumer does after its commit and returns the published JSON.
func (b *bundle) publish(t testing.TB, e event.Event) string {
	t.Helper()
	js := e.AppendJSON(nil)
	require.NoError(t, b.rdb.Publish(context.Background(), redisx.EventsChannel(e.ProjectID), js).Err())
	return string(js)
}

// store inserts e into the events table (what the consumer commits).
func (b *bundle) store(t testing.TB, e event.Event) {
	t.Helper()
	_, err := b.pool.Exec(context.Background(), `
		INSERT INTO events (id, project_id, type, name, payload, context, "timestamp", received_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		e.ID, e.ProjectID, e.Type, e.Name, string(e.Payload), nullJSON(e.Context), e.Timestamp, e.ReceivedAt)
	require.NoError(t, err)
}

func nullJSON(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// metric returns the value of a counter or gauge with the given labels (0 if absent).
func (b *bundle) metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

// sumMetric adds a metric over all its label values.
func (b *bundle) sumMetric(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	require.NoError(t, err)
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.Counter != nil {
				total += m.Counter.GetValue()
			} else {
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// typeOf returns a stream message's "type" ("" for an event object).
func typeOf(t testing.TB, msg string) (string, map[string]any) {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(msg), &m))
	if _, isEvent := m["receivedAt"]; isEvent {
		return "", m
	}
	typ, _ := m["type"].(string)
	return typ, m
}
