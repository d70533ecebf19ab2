package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/cmd/pulseboard/internal/embeddedpg"
	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/migrations"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/fdlimit"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	kafkaembedded "github.com/pulseboard/pulseboard/pkg/kafkax/embedded"
	"github.com/pulseboard/pulseboard/pkg/obs"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Common is the configuration every command shares (exported: caarlos0/env skips unexported embedded structs).
type Common struct {
	Env         string `env:"PULSEBOARD_ENV" envDefault:"development"`
	LogLevel    string `env:"LOG_LEVEL" envDefault:"info"`
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/pulseboard?sslmode=disable"`
	// RedisURL empty: redis://localhost:6379 if it answers, else an embedded server.
	RedisURL string `env:"REDIS_URL"`
	Kafka    config.Kafka
}

type allConfig struct {
	Common
	AdminHost string `env:"ADMIN_HOST" envDefault:"127.0.0.1"`
	AdminPort int    `env:"ADMIN_PORT" envDefault:"9100"`
	// AdminPprof also serves /debug/pprof/ on the admin port (off: 404).
	AdminPprof bool `env:"ADMIN_PPROF" envDefault:"false"`
	// CacheDir keeps what the all-in-one downloads and must not lose between runs: the
	// embedded PostgreSQL's binaries and data, in <CacheDir>/postgres. Empty: the user
	// cache directory's pulseboard/ (/var/cache/pulseboard for root).
	CacheDir string `env:"PULSEBOARD_CACHE_DIR"`
	// PostgresEmbeddedPort is where the embedded PostgreSQL listens (127.0.0.1) when
	// DATABASE_URL is unset and nothing answers at the default address; 0 = any free port.
	PostgresEmbeddedPort int `env:"POSTGRES_EMBEDDED_PORT" envDefault:"5432"`
	// DrainTimeout bounds how long shutdown waits for the consumer to store everything the
	// embedded broker acknowledged before the broker (and its memory) goes away.
	DrainTimeout time.Duration `env:"PULSEBOARD_DRAIN_TIMEOUT" envDefault:"60s"`
	// EmbeddedKafka bounds the embedded broker; Liveness probes the embedded components.
	EmbeddedKafka embeddedKafkaConfig
	Liveness      livenessConfig
	Ingestor      ingestor.Config
	Consumer      consumer.Config
	Alerter       alerter.Config
	API           api.Config
}

func loadEnv() (config.Env, error) { return config.FromOS(".env") }

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	return obs.NewLogger(w, level)
}

// prepareDatabase creates and migrates the database, with a message that says how to get
// one when none answers.
func prepareDatabase(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	if err := pgstore.EnsureDatabase(ctx, databaseURL); err != nil {
		return fmt.Errorf("%w\n\nPulseBoard needs PostgreSQL. Start one with `docker compose up -d postgres`, "+
			"or point DATABASE_URL at a server (currently %s); `pulseboard run` starts an embedded one "+
			"when DATABASE_URL is unset and nothing answers at the default address", err, config.MaskURL(databaseURL))
	}
	return migrations.Up(ctx, databaseURL, logger)
}

// allInOneDatabase picks the all-in-one's PostgreSQL, as redisembedded.OpenOrStart does for Redis:
// DATABASE_URL when set (if it does not answer, that is an error later, never a
// fallback); unset, the default address if anything answers there, else an embedded
// PostgreSQL started here, whose data persists under PULSEBOARD_CACHE_DIR. stop stops it
// (call it once nothing uses the database any more); it is a no-op otherwise.
//
// embedded reports whether it started an embedded PostgreSQL (the liveness checks watch
// that one).
func allInOneDatabase(ctx context.Context, env config.Env, cfg allConfig, logger *slog.Logger) (databaseURL string, embedded bool, stop func(), err error) {
	noop := func() {}
	if env.Get("DATABASE_URL") != "" {
		logger.Info("using PostgreSQL at DATABASE_URL", "database", config.MaskURL(cfg.DatabaseURL))
		return cfg.DatabaseURL, false, noop, nil
	}
	if cfg.PostgresEmbeddedPort < 0 || cfg.PostgresEmbeddedPort > 65535 {
		return "", false, nil, fmt.Errorf("configuration: POSTGRES_EMBEDDED_PORT must be a port number, got %d", cfg.PostgresEmbeddedPort)
	}
	pc, err := pgconn.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return "", false, nil, fmt.Errorf("parsing the default DATABASE_URL: %w", err)
	}
	addr := net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	dialCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	conn, dialErr := new(net.Dialer).DialContext(dialCtx, "tcp", addr)
	cancel()
	if dialErr == nil {
		_ = conn.Close()
		logger.Info("DATABASE_URL is not set: using the PostgreSQL that answers at the default address",
			"database", config.MaskURL(cfg.DatabaseURL))
		return cfg.DatabaseURL, false, noop, nil
	}
	dir, err := embeddedpg.DefaultDir(cfg.CacheDir)
	if err != nil {
		return "", false, nil, err
	}
	logger.Info("no PostgreSQL answers at the default address: starting an embedded PostgreSQL "+
		"(downloaded from Maven Central on first use)", "tried", addr, "dir", dir)
	began := time.Now()
	srv, err := embeddedpg.Start(embeddedpg.Options{Dir: dir, Port: cfg.PostgresEmbeddedPort, Logger: logger.With("component", "postgres")})
	if err != nil {
		return "", false, nil, fmt.Errorf("%w\n\n(set DATABASE_URL to use a PostgreSQL of your own; "+
			"POSTGRES_EMBEDDED_PORT=0 lets the embedded one take any free port)", err)
	}
	databaseURL = srv.URL(pc.Database)
	attrs := []any{"database", databaseURL, "version", string(embeddedpg.Version), "data_dir", srv.DataDir(),
		"took", time.Since(began).Round(time.Millisecond).String()}
	if as := srv.RunsAs(); as != "" {
		attrs = append(attrs, "runs_as", as) // root: PostgreSQL refuses to run as root
	}
	logger.Warn("DATABASE_URL is not set and no PostgreSQL answers at the default address: using an embedded PostgreSQL "+
		"(development only; its data persists in data_dir)", attrs...)
	return databaseURL, true, sync.OnceFunc(func() {
		if err := srv.Stop(); err != nil {
			logger.Error("stopping the embedded PostgreSQL", "err", err)
			return
		}
		logger.Info("embedded PostgreSQL stopped")
	}), nil
}

func runAll(ctx context.Context, env config.Env, stdout io.Writer) error {
	cfg, err := config.Parse[allConfig](env)
	if err != nil {
		return err
	}
	logger, err := newLogger(stdout, cfg.LogLevel)
	if err != nil {
		return err
	}
	logger = logger.With("service", "pulseboard")
	fdlimit.Init(logger, 2) // api and ingestor share the derived connection caps
	if err := cfg.Liveness.validate(); err != nil {
		return err
	}
	if err := cfg.EmbeddedKafka.validate(); err != nil {
		return err
	}
	live := newLiveness(cfg.Liveness.LivenessFailures, logger.With("component", "liveness"))
	in, err := startInfra(ctx, env, cfg, live, logger)
	if err != nil {
		return err
	}
	defer in.close() // on early returns; the end of the shutdown closes it too
	svc, err := buildServices(&cfg, in, logger)
	if err != nil {
		return err
	}
	adminLn, err := net.Listen("tcp", net.JoinHostPort(cfg.AdminHost, strconv.Itoa(cfg.AdminPort)))
	if err != nil {
		return fmt.Errorf("admin listener on %s:%d: %w", cfg.AdminHost, cfg.AdminPort, err)
	}

	// Each part gets its own context so shutdown can stop them in order: ingest first,
	// then (once everything acknowledged is stored) the consumer and the alerter, then the
	// broker, and the admin port last so readiness and metrics stay observable throughout.
	var g errgroup.Group
	failed := make(chan error, 5)
	base := context.WithoutCancel(ctx)
	admin := startPart(&g, base, "admin", nil, func(ctx context.Context) error {
		return obs.ServeAdmin(ctx, adminLn, live.wrap(obs.AdminHandler(in.reg, in.ready, obs.AdminOptions{Pprof: cfg.AdminPprof})), logger)
	})
	defer admin.stop()
	liveCtx, stopLive := context.WithCancel(base)
	defer stopLive()
	go live.run(liveCtx, cfg.Liveness.LivenessInterval)
	ingest := startPart(&g, base, "ingestor", failed, svc.ingestor.Run)
	consume := startPart(&g, base, "consumer", failed, svc.consumer.Run)
	apiPart := startPart(&g, base, "api", failed, svc.api.Run)
	alert := startPart(&g, base, "alerter", failed, svc.alerter.Run)
	for _, p := range []*part{ingest, consume, apiPart, alert} {
		defer p.stop()
	}
	logger.Info("pulseboard is running", "ingest", svc.ingestor.Addr().String(), "api", svc.api.Addr().String(),
		"admin", adminLn.Addr().String(), "kafka", in.brokers)

	var cause error
	select {
	case <-ctx.Done():
		logger.Info("shutting down: draining")
	case cause = <-failed:
		logger.Error("a component failed; shutting down", "err", cause)
	}
	in.ready.SetDraining()
	stopLive() // the components stop on purpose from here on
	ingest.stop()
	apiPart.stop() // closes live streams with a close frame; clients reconnect elsewhere
	ingest.wait()
	apiPart.wait()
	if in.embedded != nil {
		drainEmbedded(cfg, in.brokers, logger, consume.done)
	}
	consume.stop()
	alert.stop()
	consume.wait()
	alert.wait()
	if in.embedded != nil {
		in.closeBroker()
		logger.Info("embedded broker stopped")
	}
	admin.stop()
	if err := g.Wait(); cause == nil && err != nil {
		cause = err
	}
	in.close() // the pool before an embedded PostgreSQL stops
	logger.Info("pulseboard stopped")
	return cause
}

// drainEmbedded waits until the consumer group has committed everything the embedded
// broker holds, bounded by DrainTimeout: those events exist nowhere else.
func drainEmbedded(cfg allConfig, brokers []string, logger *slog.Logger, consumeDone <-chan struct{}) {
	start := time.Now()
	deadline := start.Add(cfg.DrainTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		lag, err := kafkax.GroupLag(ctx, brokers, cfg.Consumer.GroupID, cfg.Kafka.Topic)
		cancel()
		switch {
		case err == nil && lag == 0:
			logger.Info("drained: every acknowledged event is stored", "took", time.Since(start).String())
			return
		case time.Now().After(deadline):
			logger.Error("drain timed out: events still in the embedded broker are lost",
				"lag", lag, "err", err, "timeout", cfg.DrainTimeout.String())
			return
		}
		select {
		case <-consumeDone:
			logger.Error("the consumer stopped before the drain finished", "lag", lag)
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func runMigrate(ctx context.Context, env config.Env, stdout io.Writer) error {
	cfg, err := config.Parse[Common](env)
	if err != nil {
		return err
	}
	logger, err := newLogger(stdout, cfg.LogLevel)
	if err != nil {
		return err
	}
	if err := prepareDatabase(ctx, cfg.DatabaseURL, logger); err != nil {
		return err
	}
	logger.Info("database is migrated", "database", config.MaskURL(cfg.DatabaseURL))
	return nil
}

type brokerConfig struct {
	Kafka         config.Kafka
	EmbeddedKafka embeddedKafkaConfig
	// RetentionGroups are the consumer groups whose commits let `pulseboard broker` trim
	// records and bound itself (the CONSUMER_GROUP and ALERTER_GROUP of the services that
	// use it); empty: it keeps everything, as a cluster for tests that rewind offsets must.
	RetentionGroups []string `env:"KAFKA_EMBEDDED_RETENTION_GROUPS" envSeparator:","`
	DataDir         string   `env:"PULSEBOARD_BROKER_DATA_DIR"`
	LogLevel        string   `env:"LOG_LEVEL" envDefault:"info"`
}

func runBroker(ctx context.Context, env config.Env, stdout io.Writer) error {
	cfg, err := config.Parse[brokerConfig](env)
	if err != nil {
		return err
	}
	logger, err := newLogger(stdout, cfg.LogLevel)
	if err != nil {
		return err
	}
	if err := cfg.EmbeddedKafka.validate(); err != nil {
		return err
	}
	var groups []string
	for _, g := range cfg.RetentionGroups {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	e, err := kafkaembedded.Start(kafkaembedded.Options{
		Port: cfg.Kafka.EmbeddedPort, Topics: []string{cfg.Kafka.Topic, cfg.Kafka.DLQTopic},
		Partitions: cfg.Kafka.Partitions, DataDir: cfg.DataDir,
		Retention: cfg.EmbeddedKafka.retention(groups, cfg.Kafka.Topic), Logger: logger.With("component", "broker"),
	})
	if err != nil {
		return err
	}
	defer e.Close()
	persist := "memory only"
	if cfg.DataDir != "" {
		persist = cfg.DataDir
	}
	logger.Info("embedded Kafka-protocol broker listening", "addr", e.Addrs(), "storage", persist)
	<-ctx.Done()
	logger.Info("broker stopping")
	return nil
}
