package consumer_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/obs"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/faultproxy"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

// waitFor is how long any asynchronous outcome may take before a test fails.
const waitFor = 30 * time.Second

const pollEvery = 20 * time.Millisecond

type bundle struct {
	dbURL    string
	pool     *pgxpool.Pool
	rdb      *redis.Client
	kc       *kafkatest.Cluster
	projects []pgstore.Project
	writer   *kafka.Writer
}

// setup gives a test its own database with `projects` projects, a Kafka cluster with
// `partitions` partitions, the shared Redis and a producer.
func setup(t *testing.T, partitions, projects int) *bundle {
	t.Helper()
	dbURL, pool := pgtest.NewDB(t)
	b := &bundle{dbURL: dbURL, pool: pool, rdb: redistest.Client(t), kc: kafkatest.New(t, partitions)}
	ctx := context.Background()
	u, err := pgstore.UpsertUser(ctx, pool, "Consumer Test", "consumer@example.com", "x")
	require.NoError(t, err)
	for i := range projects {
		p, err := pgstore.CreateProject(ctx, pool, u.ID, "project "+strconv.Itoa(i))
		require.NoError(t, err)
		b.projects = append(b.projects, p)
	}
	b.writer, err = kafkax.NewWriter(b.kc.Brokers, b.kc.Topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	t.Cleanup(func() { closeWriter(b.writer) })
	return b
}

func closeWriter(w *kafka.Writer) {
	_ = w.Close()
	if tr, ok := w.Transport.(*kafka.Transport); ok {
		tr.CloseIdleConnections()
	}
}

// config is the default configuration for this bundle's topics, with short waits.
func (b *bundle) config(t *testing.T, group string) consumer.Config {
	t.Helper()
	cfg, err := config.Parse[consumer.Config](config.Env{
		"KAFKA_TOPIC":     b.kc.Topic,
		"KAFKA_DLQ_TOPIC": b.kc.DLQTopic,
		"CONSUMER_GROUP":  group,
	})
	require.NoError(t, err)
	cfg.BatchWait = 20 * time.Millisecond
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.BackoffMax = 300 * time.Millisecond
	cfg.ShutdownTimeout = 10 * time.Second
	require.NoError(t, cfg.Validate())
	return cfg
}

// proxiedPool returns a pool to this bundle's database through a fault proxy.
func (b *bundle) proxiedPool(t *testing.T) (*pgxpool.Pool, *faultproxy.Proxy) {
	t.Helper()
	u, err := url.Parse(b.dbURL)
	require.NoError(t, err)
	proxy := faultproxy.New(t, u.Host)
	u.Host = proxy.Addr()
	pool, err := pgstore.Open(context.Background(), u.String(), pgstore.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool, proxy
}

// running is a Service running in a goroutine.
type running struct {
	svc    *consumer.Service
	reg    *prometheus.Registry
	ready  *obs.Readiness
	cancel context.CancelFunc
	done   chan error
}

// start runs a consumer on ctx (cancelled when the test ends) with a fresh registry and
// readiness; mutate may change the dependencies (pool, hooks).
func (b *bundle) start(t *testing.T, ctx context.Context, cfg consumer.Config, mutate func(*consumer.Deps)) *running {
	t.Helper()
	return b.startPrepared(t, ctx, cfg, mutate, nil)
}

// startPrepared is start with prepare called on the service before it runs.
func (b *bundle) startPrepared(t *testing.T, ctx context.Context, cfg consumer.Config, mutate func(*consumer.Deps), prepare func(*consumer.Service)) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry(), ready: obs.NewReadiness(), done: make(chan error, 1)}
	deps := consumer.Deps{
		Pool: b.pool, Redis: b.rdb, Brokers: b.kc.Brokers,
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registerer: r.reg, Ready: r.ready,
	}
	if mutate != nil {
		mutate(&deps)
	}
	svc, err := consumer.New(cfg, deps)
	require.NoError(t, err)
	r.svc = svc
	if prepare != nil {
		prepare(svc)
	}
	ctx, r.cancel = context.WithCancel(ctx)
	go func() { r.done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(waitFor):
			t.Errorf("consumer did not stop within %s", waitFor)
		}
	})
	return r
}

// wait returns Run's result, failing the test if it does not return in time.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(waitFor):
		t.Fatalf("Run did not return within %s", waitFor)
		return nil
	}
}

// stop cancels Run and returns its result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// makeEvents returns n events of project received now, each with a unique id.
func makeEvents(t *testing.T, project uuid.UUID, n int) []event.Event {
	t.Helper()
	now := time.Now().UTC().Truncate(event.Precision)
	evs := make([]event.Event, n)
	types := []string{event.TypeEvent, event.TypeError, event.TypeMetric}
	for i := range evs {
		id, err := uuid.NewV7()
		require.NoError(t, err)
		evs[i] = event.Event{
			ID: id, ProjectID: project, Type: types[i%3], Name: "screen.view",
			Payload:   []byte(`{"screen":"home","n":` + strconv.Itoa(i) + `,"tags":["a","b"]}`),
			Timestamp: now.Add(-time.Second), ReceivedAt: now,
		}
		if i%2 == 1 {
			evs[i].Context = []byte(`{"os":"ios","appVersion":"1.2.3"}`)
		}
	}
	return evs
}

// message is what the ingestor produces for ev: key = project id, value = canonical JSON.
func message(ev event.Event) kafka.Message {
	return kafka.Message{Key: []byte(ev.ProjectID.String()), Value: ev.AppendJSON(nil)}
}

func (b *bundle) produce(t *testing.T, evs ...event.Event) {
	t.Helper()
	msgs := make([]kafka.Message, len(evs))
	for i, ev := range evs {
		msgs[i] = message(ev)
	}
	b.produceRaw(t, msgs...)
}

func (b *bundle) produceRaw(t *testing.T, msgs ...kafka.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, b.writer.WriteMessages(ctx, msgs...))
}

func (b *bundle) lag(t *testing.T, group string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lag, err := kafkax.GroupLag(ctx, b.kc.Brokers, group, b.kc.Topic)
	require.NoError(t, err)
	return lag
}

// waitLag waits until the group's lag is want.
func (b *bundle) waitLag(t *testing.T, group string, want int64) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		got := b.lag(t, group)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag of group %s stayed at %d, want %d", group, got, want)
		}
		<-tick.C
	}
}

func (b *bundle) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// requireStoredOnce checks that events holds exactly the given events, once each, with
// matching event_ids and rollups.
func (b *bundle) requireStoredOnce(t *testing.T, evs []event.Event) {
	t.Helper()
	ids := make([]uuid.UUID, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	require.Equal(t, len(evs), b.count(t, `SELECT count(*) FROM events`), "rows in events")
	require.Equal(t, len(evs), b.count(t, `SELECT count(DISTINCT id) FROM events WHERE id = ANY($1)`, ids), "distinct expected ids in events")
	require.Equal(t, len(evs), b.count(t, `SELECT count(*) FROM event_ids WHERE id = ANY($1)`, ids), "rows in event_ids")
	require.Equal(t, len(evs), b.count(t, `SELECT coalesce(sum(count), 0)::int FROM event_rollups`), "rollup total")
}

// metric returns the value of a counter or gauge series (0 when absent).
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	m := find(t, reg, name, labels...)
	switch {
	case m == nil:
		return 0
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s is not a counter or gauge", name)
	return 0
}

// histogram returns a histogram's sample count and sum.
func histogram(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	m := find(t, reg, name)
	if m == nil || m.Histogram == nil {
		return 0, 0
	}
	return m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum()
}

func find(t *testing.T, reg *prometheus.Registry, name string, labels ...string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

// readDLQ reads n messages from the dead-letter topic.
func (b *bundle) readDLQ(t *testing.T, n int) []kafka.Message {
	t.Helper()
	r := kafkax.NewReader(b.kc.Brokers, b.kc.DLQTopic, kafkax.ReaderOptions{
		GroupID: "dlq-reader-" + uuid.NewString(), MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond,
	})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out []kafka.Message
	for len(out) < n {
		m, err := r.FetchMessage(ctx)
		require.NoError(t, err, "read %d of %d dead letters", len(out), n)
		out = append(out, m)
	}
	return out
}

// readAt reads the message at partition/offset of the events topic.
func (b *bundle) readAt(t *testing.T, partition int, offset int64) kafka.Message {
	t.Helper()
	// A short MaxWait: Close waits for the fetch in flight (kafka-go's default is 10 s).
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: b.kc.Brokers, Topic: b.kc.Topic, Partition: partition,
		MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	require.NoError(t, r.SetOffset(offset))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	m, err := r.FetchMessage(ctx)
	require.NoError(t, err)
	return m
}

func header(m kafka.Message, key string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// subscribe subscribes to channels and waits until Redis confirmed every subscription.
func subscribe(t *testing.T, rdb *redis.Client, channels ...string) <-chan *redis.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ps := rdb.Subscribe(ctx, channels...)
	t.Cleanup(func() { _ = ps.Close() })
	for range channels {
		msg, err := ps.Receive(ctx)
		require.NoError(t, err)
		_, ok := msg.(*redis.Subscription)
		require.True(t, ok, "expected a subscription confirmation, got %T", msg)
	}
	return ps.Channel(redis.WithChannelSize(100_000))
}

var errFailpoint = errors.New("failpoint: simulated kill")

// failOnce returns a hook that fails its first call.
func failOnce() func(context.Context) error {
	fired := make(chan struct{}, 1)
	return func(context.Context) error {
		select {
		case fired <- struct{}{}:
			return errFailpoint
		default:
			return nil
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
