package ingestor_test

// The test bundle and helpers shared by every test of the ingestor: a whole service
// started in-process against a fresh Postgres database, the shared Redis and an embedded
// Kafka-protocol broker per test, driven over real HTTP; what reached Kafka is read back
// from the topic.

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/obs"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

const testPartitions = 12

// testBundle is one running ingestor and everything a test needs around it.
type testBundle struct {
	cfg     ingestor.Config
	url     string // http://127.0.0.1:port
	pool    *pgxpool.Pool
	rdb     *redis.Client // what the test uses (the service may have been given another)
	kafka   *kafkatest.Cluster
	reg     *prometheus.Registry
	ready   *obs.Readiness
	user    pgstore.User
	project pgstore.Project // the default project; more with newProject
	client  *http.Client
	kclient *kafka.Client
	// keyQueries counts the API key lookups the service sent to Postgres.
	keyQueries *atomic.Int64

	cancel  context.CancelFunc // stops the service (graceful shutdown)
	runDone chan error         // Run's result
}

type setupConfig struct {
	configure    func(*ingestor.Config)
	serviceRedis *redis.Client // overrides the Redis the service uses
	cluster      *kafkatest.Cluster
}

type setupOption func(*setupConfig)

func withConfig(f func(*ingestor.Config)) setupOption {
	return func(c *setupConfig) { c.configure = f }
}

// withServiceRedis gives the service its own Redis client (e.g. one that cannot connect).
func withServiceRedis(r *redis.Client) setupOption {
	return func(c *setupConfig) { c.serviceRedis = r }
}

func withCluster(k *kafkatest.Cluster) setupOption {
	return func(c *setupConfig) { c.cluster = k }
}

// setup starts an ingestor with default configuration (overridable) and one project.
func setup(tb testing.TB, opts ...setupOption) *testBundle {
	tb.Helper()
	var sc setupConfig
	for _, o := range opts {
		o(&sc)
	}
	dbURL, pool := pgtest.NewDB(tb)
	rdb := redistest.Client(tb)
	kc := sc.cluster
	if kc == nil {
		kc = kafkatest.New(tb, testPartitions)
	}
	cfg, err := config.Parse[ingestor.Config](config.Env{})
	require.NoError(tb, err)
	cfg.Kafka.Topic, cfg.Kafka.DLQTopic, cfg.Kafka.Brokers = kc.Topic, kc.DLQTopic, kc.Brokers
	if sc.configure != nil {
		sc.configure(&cfg)
	}
	serviceRedis := rdb
	if sc.serviceRedis != nil {
		serviceRedis = sc.serviceRedis
	}

	ctx := context.Background()
	user, err := pgstore.UpsertUser(ctx, pool, "Test User", "test@example.com", "x")
	require.NoError(tb, err)
	project, err := pgstore.CreateProject(ctx, pool, user.ID, "default")
	require.NoError(tb, err)

	// The service gets its own pool whose tracer counts API key lookups: the number of
	// queries Postgres really received, whatever the metrics say.
	keyQueries := &atomic.Int64{}
	pcfg, err := pgxpool.ParseConfig(dbURL)
	require.NoError(tb, err)
	pcfg.ConnConfig.Tracer = keyQueryCounter{keyQueries}
	servicePool, err := pgxpool.NewWithConfig(ctx, pcfg)
	require.NoError(tb, err)
	tb.Cleanup(servicePool.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	b := &testBundle{keyQueries: keyQueries,
		cfg: cfg, url: "http://" + ln.Addr().String(), pool: pool, rdb: rdb, kafka: kc,
		reg: prometheus.NewRegistry(), ready: obs.NewReadiness(), user: user, project: project,
	}
	svc, err := ingestor.New(cfg, ingestor.Deps{
		Pool: servicePool, Redis: serviceRedis, Brokers: kc.Brokers, Logger: testLogger(tb),
		Registerer: b.reg, Ready: b.ready, Listener: ln,
	})
	require.NoError(tb, err)

	transport := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	b.client = &http.Client{Transport: transport, Timeout: 60 * time.Second}
	ktransport := &kafka.Transport{DialTimeout: 3 * time.Second, MetadataTTL: time.Second}
	b.kclient = &kafka.Client{Addr: kafka.TCP(kc.Brokers...), Transport: ktransport, Timeout: 10 * time.Second}

	runCtx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.runDone = make(chan error, 1)
	go func() { b.runDone <- svc.Run(runCtx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-b.runDone:
			if err != nil {
				tb.Errorf("ingestor.Run: %v", err)
			}
			b.runDone <- err // for tests that wait themselves after the cleanup started
		case <-time.After(60 * time.Second):
			tb.Errorf("ingestor.Run did not return within 60 s of cancellation")
		}
		transport.CloseIdleConnections()
		ktransport.CloseIdleConnections()
		// Issue 16 acceptance 3: no input any test sends (the attack suite's included)
		// is answered with a 500; failures of a dependency are 503s.
		families, err := b.reg.Gather()
		require.NoError(tb, err)
		for _, f := range families {
			if f.GetName() == "pulseboard_ingest_requests_total" {
				if n := metricValue(tb, b.reg, f.GetName(), "code", "500"); n != 0 {
					tb.Errorf("%v requests were answered 500 (a bug: bad input is a 4xx, an outage a 503)", n)
				}
			}
		}
	})
	return b
}

// keyQueryCounter is a pgx tracer counting queries against projects.api_key_hash.
type keyQueryCounter struct{ n *atomic.Int64 }

func (k keyQueryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, "api_key_hash") {
		k.n.Add(1)
	}
	return ctx
}

func (keyQueryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// testLogger writes errors to the test's output, and nothing once the test
// is over (background goroutines may outlive it by a moment).
func testLogger(tb testing.TB) *slog.Logger {
	w := &guardedWriter{w: tb.Output()}
	tb.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelError}))
}

type guardedWriter struct {
	mu   sync.Mutex
	w    io.Writer
	done atomic.Bool
}

func (g *guardedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done.Load() {
		return len(p), nil
	}
	return g.w.Write(p)
}

// newProject creates another project of the test user.
func (b *testBundle) newProject(tb testing.TB, name string) pgstore.Project {
	tb.Helper()
	p, err := pgstore.CreateProject(context.Background(), b.pool, b.user.ID, name)
	require.NoError(tb, err)
	return p
}

// response is an HTTP answer with its JSON envelope decoded (when it is JSON).
type response struct {
	status int
	header http.Header
	body   []byte
	env    envelope
	took   time.Duration
}

type envelope struct {
	Success bool            `json:"success"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

// hdr are request headers; a value of "" removes the header (e.g. Content-Type).
type hdr map[string]string

// do sends a request; Content-Type defaults to application/json.
func (b *testBundle) do(tb testing.TB, method, path string, body []byte, h hdr) response {
	tb.Helper()
	r, err := b.try(method, path, body, h)
	require.NoError(tb, err, "%s %s", method, path)
	return r
}

// try is do for callers that expect transport errors (or run outside the test goroutine).
func (b *testBundle) try(method, path string, body []byte, h hdr) (response, error) {
	req, err := http.NewRequest(method, b.url+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range h {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	start := time.Now()
	res, err := b.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		return response{}, err
	}
	r := response{status: res.StatusCode, header: res.Header, body: out, took: time.Since(start)}
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(out, &r.env); err != nil {
			return r, fmt.Errorf("decoding %q: %w", out, err)
		}
	}
	return r, nil
}

func (b *testBundle) post(tb testing.TB, path string, body []byte, h hdr) response {
	tb.Helper()
	return b.do(tb, http.MethodPost, path, body, h)
}

// ingest posts one compat event.
func (b *testBundle) ingest(tb testing.TB, ev map[string]any) response {
	tb.Helper()
	return b.post(tb, "/ingest", mustJSON(tb, ev), nil)
}

// validEvent is a minimal accepted compat event for key.
func validEvent(key string) map[string]any {
	return map[string]any{"apiKey": key, "type": "event", "name": "page_view", "payload": map[string]any{"path": "/home"}}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	require.NoError(tb, err)
	return b
}

// requireJSONError checks an error answer: status, code and the docs/api.md conventions.
func requireJSONError(tb testing.TB, r response, status int, code string) {
	tb.Helper()
	require.Equal(tb, status, r.status, "body: %s", r.body)
	require.Equal(tb, "application/json; charset=utf-8", r.header.Get("Content-Type"), "body: %s", r.body)
	require.Equal(tb, "nosniff", r.header.Get("X-Content-Type-Options"))
	require.False(tb, r.env.Success, "body: %s", r.body)
	if code != "" {
		require.Equal(tb, code, r.env.Code, "body: %s", r.body)
	}
	require.NotEmpty(tb, r.env.Message)
}

// wireEvent is the event object of docs/api.md as returned and produced.
type wireEvent struct {
	ID         uuid.UUID       `json:"id"`
	ProjectID  uuid.UUID       `json:"projectId"`
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Payload    json.RawMessage `json:"payload"`
	Timestamp  string          `json:"timestamp"`
	ReceivedAt string          `json:"receivedAt"`
	Context    json.RawMessage `json:"context"`
}

type batchResult struct {
	Index   int       `json:"index"`
	ID      uuid.UUID `json:"id"`
	Status  string    `json:"status"`
	Code    string    `json:"code"`
	Message string    `json:"message"`
}

type batchData struct {
	Accepted int           `json:"accepted"`
	Rejected int           `json:"rejected"`
	Results  []batchResult `json:"results"`
}

func decodeBatch(tb testing.TB, r response) batchData {
	tb.Helper()
	var d batchData
	require.NoError(tb, json.Unmarshal(r.env.Data, &d), "body: %s", r.body)
	require.Len(tb, d.Results, d.Accepted+d.Rejected)
	for i, res := range d.Results {
		require.Equal(tb, i, res.Index)
	}
	return d
}

// --- Kafka ---------------------------------------------------------------------------

// endOffsets returns the end offset of every partition of the events topic.
func (b *testBundle) endOffsets(tb testing.TB) map[int]int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	reqs := make([]kafka.OffsetRequest, testPartitions)
	for p := range reqs {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	res, err := b.kclient.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{b.kafka.Topic: reqs}})
	require.NoError(tb, err)
	ends := map[int]int64{}
	for _, po := range res.Topics[b.kafka.Topic] {
		require.NoError(tb, po.Error)
		ends[po.Partition] = po.LastOffset
	}
	require.Len(tb, ends, testPartitions)
	return ends
}

// produced is the number of messages on the events topic (each test has its own broker).
func (b *testBundle) produced(tb testing.TB) int64 {
	tb.Helper()
	var n int64
	for _, end := range b.endOffsets(tb) {
		n += end
	}
	return n
}

// readTopic reads every message on the events topic, one partition reader each.
func (b *testBundle) readTopic(tb testing.TB) []kafka.Message {
	tb.Helper()
	var all []kafka.Message
	for p, end := range b.endOffsets(tb) {
		if end == 0 {
			continue
		}
		func() {
			r := kafka.NewReader(kafka.ReaderConfig{
				Brokers: b.kafka.Brokers, Topic: b.kafka.Topic, Partition: p,
				MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 50 * time.Millisecond,
			})
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for {
				m, err := r.ReadMessage(ctx)
				require.NoError(tb, err, "reading partition %d up to offset %d", p, end)
				all = append(all, m)
				if m.Offset >= end-1 {
					return
				}
			}
		}()
	}
	return all
}

// requireMurmur2Partition checks that m is on the partition the Java client's murmur2
// partitioner picks for its key.
func requireMurmur2Partition(tb testing.TB, m kafka.Message) {
	tb.Helper()
	parts := make([]int, testPartitions)
	for i := range parts {
		parts[i] = i
	}
	want := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: m.Key}, parts...)
	require.Equal(tb, want, m.Partition, "partition of key %s", m.Key)
}

const allowDuplicates = true

// messagesByID decodes produced values and indexes them by event id. Unless
// allowDuplicates is passed, an id produced twice fails the test.
func messagesByID(tb testing.TB, msgs []kafka.Message, allowDuplicates ...bool) map[uuid.UUID]kafka.Message {
	tb.Helper()
	out := make(map[uuid.UUID]kafka.Message, len(msgs))
	for _, m := range msgs {
		var ev wireEvent
		require.NoError(tb, json.Unmarshal(m.Value, &ev), "value %s", m.Value)
		_, dup := out[ev.ID]
		require.False(tb, dup && len(allowDuplicates) == 0, "event %s produced twice", ev.ID)
		out[ev.ID] = m
	}
	return out
}

// --- metrics -------------------------------------------------------------------------

// metricValue sums the series of a counter or gauge whose labels include the given pairs.
func metricValue(tb testing.TB, reg *prometheus.Registry, name string, labelPairs ...string) float64 {
	tb.Helper()
	families, err := reg.Gather()
	require.NoError(tb, err)
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labelPairs); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labelPairs[i] && l.GetValue() == labelPairs[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				sum += m.GetUntyped().GetValue()
			}
		}
		return sum
	}
	tb.Fatalf("metric %s is not registered", name)
	return 0
}

// --- bodies --------------------------------------------------------------------------

func gzipBytes(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	require.NoError(tb, err)
	_, err = zw.Write(b)
	require.NoError(tb, err)
	require.NoError(tb, zw.Close())
	return buf.Bytes()
}

func zstdBytes(tb testing.TB, b []byte) []byte {
	tb.Helper()
	zw, err := zstd.NewWriter(nil)
	require.NoError(tb, err)
	defer zw.Close()
	return zw.EncodeAll(b, nil)
}

// batchEvents returns n valid events (without apiKey) with client event ids.
func batchEvents(n int) ([]map[string]any, []uuid.UUID) {
	evs := make([]map[string]any, n)
	ids := make([]uuid.UUID, n)
	types := []string{"error", "event", "metric"}
	for i := range evs {
		ids[i] = uuid.New()
		evs[i] = map[string]any{
			"eventId": ids[i].String(), "type": types[i%3], "name": "event-" + strconv.Itoa(i),
			"payload": map[string]any{"i": i, "tags": []string{"a", "b"}}, "timestamp": "2026-03-01T12:00:00.000Z",
		}
	}
	return evs, ids
}

func ndjson(tb testing.TB, evs []map[string]any) []byte {
	tb.Helper()
	var buf bytes.Buffer
	for _, ev := range evs {
		buf.Write(mustJSON(tb, ev))
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// nested returns a JSON object nested depth levels deep ({"a":{"a":…{}}}), depth ≥ 1.
func nested(depth int) json.RawMessage {
	return json.RawMessage(strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1))
}
