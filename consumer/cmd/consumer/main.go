// Command consumer runs one PulseBoard consumer group member on its own: Kafka →
// PostgreSQL (exactly once) → Redis live feed, with /healthz, /readyz, /metrics (and
// /debug/pprof with ADMIN_PPROF=true) on ADMIN_PORT (default 9102, on 127.0.0.1 unless
// ADMIN_HOST says otherwise). Configuration comes from the environment (and .env); see
// consumer.Config and docs/architecture.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/service"
)

func main() { service.Main("consumer", run) }

// processConfig is what the standalone binary needs beyond consumer.Config.
type processConfig struct {
	// DatabaseURL [postgres://postgres@localhost:5432/pulseboard?sslmode=disable].
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/pulseboard?sslmode=disable"`
	// RedisURL [redis://localhost:6379]. There is no embedded fallback here: a
	// consumer publishing to a private in-process Redis would feed no live stream.
	RedisURL string `env:"REDIS_URL" envDefault:"redis://localhost:6379"`
	// AdminHost and AdminPort serve /healthz, /readyz, /metrics [127.0.0.1, 9102]; port
	// 0 = any. Only local by default (containers set ADMIN_HOST=0.0.0.0 for Prometheus
	// and the probes).
	AdminHost string `env:"ADMIN_HOST" envDefault:"127.0.0.1"`
	AdminPort int    `env:"ADMIN_PORT" envDefault:"9102"`
	// AdminPprof also serves /debug/pprof/ on the admin port [false: 404].
	AdminPprof bool `env:"ADMIN_PPROF" envDefault:"false"`
	// LogLevel: debug, info, warn, error [info].
	LogLevel string `env:"LOG_LEVEL" envDefault:"info"`
	// DBMaxConns bounds the pool; the consumer uses one connection at a time, the rest
	// serve readiness and partition maintenance [4].
	DBMaxConns int32 `env:"CONSUMER_DB_MAX_CONNS" envDefault:"4"`
	// StatementTimeout is set on the consumer's sessions (docs/reliability.md starting
	// configuration) [30s].
	StatementTimeout time.Duration `env:"CONSUMER_STATEMENT_TIMEOUT" envDefault:"30s"`
}

func (c processConfig) validate() error {
	var errs []error
	if c.AdminPort < 0 || c.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("ADMIN_PORT must be a port number, got %d", c.AdminPort))
	}
	if c.DBMaxConns < 1 {
		errs = append(errs, fmt.Errorf("CONSUMER_DB_MAX_CONNS must be at least 1, got %d", c.DBMaxConns))
	}
	if c.StatementTimeout < 0 {
		errs = append(errs, fmt.Errorf("CONSUMER_STATEMENT_TIMEOUT must not be negative, got %s", c.StatementTimeout))
	}
	return errors.Join(errs...)
}

// run starts the consumer and its admin server and returns when ctx is cancelled (after
// the graceful stop) or either fails.
func run(ctx context.Context, env config.Env, stdout io.Writer) error {
	pcfg, err := config.Parse[processConfig](env)
	if err != nil {
		return err
	}
	cfg, err := config.Parse[consumer.Config](env)
	if err != nil {
		return err
	}
	errs := []error{pcfg.validate(), cfg.Validate()}
	if len(cfg.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("KAFKA_BROKERS is required for the standalone consumer (the embedded broker lives in the all-in-one `pulseboard run`)"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	proc, err := service.Start(stdout, service.Options{Name: "consumer", LogLevel: pcfg.LogLevel,
		AdminHost: pcfg.AdminHost, AdminPort: pcfg.AdminPort, AdminPprof: pcfg.AdminPprof})
	if err != nil {
		return err
	}
	logger := proc.Logger

	pool, err := pgstore.Open(ctx, pcfg.DatabaseURL, pgstore.PoolOptions{
		MaxConns:         pcfg.DBMaxConns,
		StatementTimeout: pcfg.StatementTimeout,
		ApplicationName:  "pulseboard-consumer",
	})
	if err != nil {
		return fmt.Errorf("%w (start one with `docker compose up -d postgres`, or set DATABASE_URL)", err)
	}
	defer pool.Close()

	// A Redis that does not answer at start is logged, not fatal: live streams are
	// best-effort, and refusing to start would stop the events from being stored too.
	rdb, err := redisx.Connect(ctx, pcfg.RedisURL, logger, "events are still stored, the live feed resumes when it does")
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()

	topicCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = kafkax.EnsureTopics(topicCtx, cfg.Kafka.Brokers,
		kafkax.Topic{Name: cfg.Kafka.Topic, Partitions: cfg.Kafka.Partitions},
		kafkax.Topic{Name: cfg.Kafka.DLQTopic, Partitions: 1})
	cancel()
	if err != nil {
		return err
	}

	proc.Ready.Add("postgres", func(ctx context.Context) error { return pool.Ping(ctx) })
	svc, err := consumer.New(cfg, consumer.Deps{
		Pool: pool, Redis: rdb, Brokers: cfg.Kafka.Brokers,
		Logger: logger, Registerer: proc.Registry, Ready: proc.Ready,
	})
	if err != nil {
		return err
	}

	// Readiness fails as soon as the stop is requested; the admin port outlives the drain,
	// so /metrics and /readyz stay observable while the last batch finishes.
	return proc.Run(ctx, svc.Run)
}
