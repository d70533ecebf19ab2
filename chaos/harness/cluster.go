package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

// ConsumerGroup is the consumer group of the standalone consumers (CONSUMER_GROUP's
// default).
const ConsumerGroup = "pulseboard-consumer"

// Options configure a Cluster.
type Options struct {
	// Partitions of the events topic [6].
	Partitions int
	// Projects to create, each with its own API key [3].
	Projects int
	// Env is added to every service's environment (after the cluster's own variables, so
	// it wins).
	Env []string
	// DB, when set, returns the migrated database to use (URL and pool) instead of a
	// fresh one on the shared test server: F11 runs a PostgreSQL of its own
	// (Postgres.DB).
	DB func(testing.TB) (string, *pgxpool.Pool)
	// Kafka, when set, is the version of a real Apache Kafka cluster of KafkaNodes
	// combined controller+broker nodes [3] that replaces the embedded broker
	// (pkg/testenv/realkafka): topics with replication factor 3 and
	// min.insync.replicas=2 when it has three nodes, unclean leader election off.
	Kafka      string
	KafkaNodes int
}

// Project is a project the load can send events to.
type Project struct {
	ID     uuid.UUID
	APIKey string
}

// Cluster is one PulseBoard deployment as separate processes on this machine: a fresh
// PostgreSQL database on the shared test server (pgtest), a redis-server of its own, a
// standalone Kafka-protocol broker (`pulseboard broker`, persisted in a data directory
// so that it can be killed and restarted without losing acknowledged events), and the
// services the test starts. Everything is stopped when the test ends.
type Cluster struct {
	t testing.TB

	DatabaseURL string
	Pool        *pgxpool.Pool
	Redis       *Redis
	// Broker is the embedded broker's process (nil on a real Kafka cluster); Brokers the
	// bootstrap list (host:port,…, fixed across restarts) and BrokerList its entries.
	Broker     *Proc
	Brokers    string
	BrokerList []string
	// Kafka is the real cluster (nil with the embedded broker); KafkaProcs its nodes'
	// processes, node id i at index i-1.
	Kafka      *realkafka.Cluster
	KafkaProcs []*Proc
	Topic      string
	DLQTopic   string
	Projects   []Project

	env []string

	mu    sync.Mutex
	procs []*Proc
	names map[string]int
}

// NewCluster starts the database, Redis and the broker and creates the projects.
func NewCluster(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Partitions <= 0 {
		o.Partitions = 6
	}
	if o.Projects <= 0 {
		o.Projects = 3
	}
	c := &Cluster{t: t, Topic: "pulseboard.events", DLQTopic: "pulseboard.events.dlq", names: map[string]int{}}
	if o.DB != nil {
		c.DatabaseURL, c.Pool = o.DB(t)
	} else {
		c.DatabaseURL, c.Pool = pgtest.NewDB(t)
	}
	c.Redis = StartRedis(t)
	c.addProc(c.Redis.Proc)

	brokerPort := 0
	if o.Kafka != "" {
		c.prepareRealKafka(o)
	} else {
		brokerPort = Port(t)
		c.Brokers = Addr(brokerPort)
		c.BrokerList = []string{c.Brokers}
	}
	c.env = append(os.Environ(),
		"DATABASE_URL="+c.DatabaseURL,
		"REDIS_URL="+c.Redis.URL,
		"KAFKA_BROKERS="+c.Brokers,
		"KAFKA_TOPIC="+c.Topic,
		"KAFKA_DLQ_TOPIC="+c.DLQTopic,
		"KAFKA_PARTITIONS="+strconv.Itoa(o.Partitions),
		"ADMIN_HOST=127.0.0.1",
		"LOG_LEVEL=info",
		"INGEST_RATE_LIMIT=0",
		"PULSEBOARD_FAILPOINTS=",
	)
	c.env = append(c.env, o.Env...)
	if o.Kafka != "" {
		c.startRealKafka(o)
	} else {
		c.startEmbeddedBroker(brokerPort)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user, err := pgstore.UpsertUser(ctx, c.Pool, "Chaos", "chaos-"+randomHex(6)+"@pulseboard.test", "x")
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	// Alert and digest mail go only to verified addresses (ALERT_REQUIRE_VERIFIED).
	if err := VerifyUser(ctx, c.Pool, user.ID); err != nil {
		t.Fatalf("harness: %v", err)
	}
	for i := range o.Projects {
		p, err := pgstore.CreateProject(ctx, c.Pool, user.ID, fmt.Sprintf("chaos-%d", i))
		if err != nil {
			t.Fatalf("harness: %v", err)
		}
		c.Projects = append(c.Projects, Project{ID: p.ID, APIKey: p.APIKey})
	}
	return c
}

// startEmbeddedBroker starts `pulseboard broker`, persisted in a data directory, on port.
func (c *Cluster) startEmbeddedBroker(brokerPort int) {
	t := c.t
	c.Broker = StartProc(t, ProcSpec{
		Name: "broker",
		Bin:  Bin(t, "pulseboard"),
		Args: []string{"broker"},
		Env: append(append([]string{}, c.env...),
			"KAFKA_EMBEDDED_PORT="+strconv.Itoa(brokerPort),
			"PULSEBOARD_BROKER_DATA_DIR="+t.TempDir()),
		Ready: func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return kafkax.Ping(ctx, c.BrokerList) == nil
		},
	})
	c.addProc(c.Broker)
	c.Broker.WaitReady(60 * time.Second)
}

// Env returns the environment every service of the cluster gets, plus extra.
func (c *Cluster) Env(extra ...string) []string {
	return append(append([]string{}, c.env...), extra...)
}

// Procs returns every process of the cluster (broker, Redis and services).
func (c *Cluster) Procs() []*Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Proc{}, c.procs...)
}

func (c *Cluster) addProc(p *Proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
}

// uniqueName returns kind the first time, then kind-2, kind-3… so report rows stay apart.
func (c *Cluster) uniqueName(kind string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.names[kind]++
	if n := c.names[kind]; n > 1 {
		return kind + "-" + strconv.Itoa(n)
	}
	return kind
}

// ServiceSpec describes a service process to start.
type ServiceSpec struct {
	// Bin is the binary's name for Bin: ingestor, consumer, alerter or api.
	Bin string
	// Name defaults to Bin, then Bin-2, Bin-3… for further processes of that binary.
	Name string
	// Env is added to the cluster's environment.
	Env []string
	// PortVar, when set, is the variable of the service's public port (INGEST_PORT,
	// PORT); the harness gives it a fixed port (Service.URL), kept across restarts.
	PortVar string
	// Metrics are gauges whose maximum the sampler records (besides go_goroutines).
	Metrics []string
	// NoWait skips waiting for readiness.
	NoWait bool
}

// Service is a started service process.
type Service struct {
	*Proc
	// URL is http://127.0.0.1:port of the public listener ("" without PortVar).
	URL string
}

// StartService starts a service with a fixed admin port (ADMIN_PORT) and, with PortVar,
// a fixed public port, and waits until its /readyz answers 200. A start that loses its
// ports to another process is retried on new ones.
func (c *Cluster) StartService(s ServiceSpec) *Service {
	c.t.Helper()
	if s.Name == "" {
		s.Name = c.uniqueName(s.Bin)
	}
	bin := Bin(c.t, s.Bin)
	for attempt := 1; ; attempt++ {
		admin := Port(c.t)
		env := c.Env("ADMIN_PORT=" + strconv.Itoa(admin))
		svc := &Service{}
		if s.PortVar != "" {
			port := Port(c.t)
			env = append(env, s.PortVar+"="+strconv.Itoa(port))
			svc.URL = "http://" + Addr(port)
		}
		env = append(env, s.Env...)
		svc.Proc = StartProc(c.t, ProcSpec{
			Name: s.Name, Bin: bin, Env: env,
			AdminURL: "http://" + Addr(admin),
			Metrics:  s.Metrics,
		})
		if s.NoWait {
			c.addProc(svc.Proc)
			return svc
		}
		if attempt < 4 && c.lostPortRace(svc.Proc) {
			c.t.Logf("harness: %s lost a port race, retrying on other ports", s.Name)
			continue
		}
		svc.WaitReady(90 * time.Second)
		c.addProc(svc.Proc)
		return svc
	}
}

// lostPortRace waits for readiness and reports whether the process instead exited
// because one of its ports was taken.
func (c *Cluster) lostPortRace(p *Proc) bool {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if httpStatus(p.AdminURL()+"/readyz") == 200 {
			return false
		}
		select {
		case <-p.Done():
			return strings.Contains(p.Logs(), "address already in use")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}

// StartIngestor starts a standalone ingestor; env is added to its environment.
func (c *Cluster) StartIngestor(env ...string) *Service {
	c.t.Helper()
	return c.StartService(ServiceSpec{
		Bin: "ingestor", PortVar: "INGEST_PORT",
		Env:     append([]string{"INGEST_HOST=127.0.0.1"}, env...),
		Metrics: []string{"pulseboard_ingest_inflight_bytes"},
	})
}

// StartConsumer starts a standalone consumer; env is added to its environment (for
// example a PULSEBOARD_FAILPOINTS value).
func (c *Cluster) StartConsumer(env ...string) *Service {
	c.t.Helper()
	return c.StartService(ServiceSpec{Bin: "consumer", Env: env})
}

// StartAlerter starts a standalone alerter.
func (c *Cluster) StartAlerter(env ...string) *Service {
	c.t.Helper()
	return c.StartService(ServiceSpec{Bin: "alerter", Env: env})
}

// StartAPI starts a standalone api with a random JWT secret.
func (c *Cluster) StartAPI(env ...string) *Service {
	c.t.Helper()
	return c.StartService(ServiceSpec{
		Bin: "api", PortVar: "PORT",
		Env: append([]string{"HOST=127.0.0.1", "JWT_ACCESS_SECRET=" + randomHex(32)}, env...),
	})
}

// KillBroker kills the embedded broker with SIGKILL. Its data directory stays: StartBroker brings
// it back with every acknowledged message.
func (c *Cluster) KillBroker() { c.Broker.Kill() }

// StartBroker starts the broker again on its port and waits until it answers.
func (c *Cluster) StartBroker() {
	c.t.Helper()
	c.Broker.Start()
	c.Broker.WaitReady(60 * time.Second)
}

// Lag is the consumer group's lag on the events topic (kafkax.GroupLag).
func (c *Cluster) Lag() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return kafkax.GroupLag(ctx, c.BrokerList, ConsumerGroup, c.Topic)
}

// WaitLag0 waits until the consumer group's lag is 0 and returns how long that took;
// it fails the test after timeout.
func (c *Cluster) WaitLag0(timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var lag int64
	var err error
	for time.Since(start) < timeout {
		lag, err = c.Lag()
		if err == nil && lag == 0 {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("consumer lag did not reach 0 within %s (last: %d, %v)", timeout, lag, err)
	return 0
}

// Produce writes messages straight to the events topic with acks=all, bypassing the
// ingestor (poison messages, F19).
func (c *Cluster) Produce(ctx context.Context, msgs ...kafka.Message) error {
	w, err := kafkax.NewWriter(c.BrokerList, c.Topic, kafkax.DefaultWriterOptions())
	if err != nil {
		return err
	}
	defer w.Close()
	return w.WriteMessages(ctx, msgs...)
}

// ReadDLQ reads the dead-letter topic (every partition) from its start until n
// messages arrived or the timeout passed.
func (c *Cluster) ReadDLQ(n int, timeout time.Duration) ([]kafka.Message, error) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.BrokerList, Topic: c.DLQTopic, GroupID: "chaos-dlq-reader-" + randomHex(4),
		StartOffset: kafka.FirstOffset, MaxBytes: 16 << 20, MaxWait: 200 * time.Millisecond,
	})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []kafka.Message
	for len(out) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Counts are the rows of the three tables one consumer transaction writes together.
type Counts struct {
	Events, EventIDs, Rollups int64
}

// Consistent checks, in one snapshot, that every stored event has its dedup-gate row and
// is counted once in the rollups: a transaction killed half-way (mid-COPY, before its
// commit) must leave nothing of itself visible.
func (c *Cluster) Consistent(ctx context.Context) (Counts, error) {
	var n Counts
	err := c.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_ids),
		(SELECT coalesce(sum(count), 0) FROM event_rollups)`).Scan(&n.Events, &n.EventIDs, &n.Rollups)
	if err != nil {
		return n, err
	}
	if n.Events != n.EventIDs || n.Events != n.Rollups {
		return n, fmt.Errorf("partial writes visible: %d events, %d event_ids rows, rollups count %d", n.Events, n.EventIDs, n.Rollups)
	}
	return n, nil
}

// Redis is a redis-server process of the test's own, on a fixed port, without
// persistence: a restart empties it.
type Redis struct {
	*Proc
	Port int
	URL  string
}

// StartRedis starts redis-server on a free fixed port and waits until it answers.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	port := Port(t)
	r := &Redis{Port: port, URL: "redis://" + Addr(port)}
	r.Proc = StartProc(t, ProcSpec{
		Name: "redis", Bin: "redis-server",
		Args: []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--protected-mode", "no", "--loglevel", "warning"},
		Env:   os.Environ(),
		Ready: func() bool { return r.Ping() == nil },
	})
	r.WaitReady(30 * time.Second)
	return r
}

// Ping checks that Redis answers.
func (r *Redis) Ping() error {
	c := redis.NewClient(&redis.Options{Addr: Addr(r.Port), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

// Client returns a go-redis client for this server; the caller closes it.
func (r *Redis) Client() *redis.Client { return redis.NewClient(&redis.Options{Addr: Addr(r.Port)}) }

// Restart kills Redis (SIGKILL) and starts it again, empty, on the same port.
func (r *Redis) Restart() { r.Proc.Restart() }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// StoredIDs returns the ids of every event stored for the cluster's projects.
func (c *Cluster) StoredIDs(ctx context.Context) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, 0, len(c.Projects))
	projects := make([]uuid.UUID, 0, len(c.Projects))
	for _, p := range c.Projects {
		projects = append(projects, p.ID)
	}
	rows, err := c.Pool.Query(ctx, `SELECT id FROM events WHERE project_id = ANY($1)`, projects)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
