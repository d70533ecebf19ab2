// Command ingestor runs PulseBoard's ingest service against a real Kafka cluster,
// PostgreSQL and Redis. Configuration comes from the environment (and .env).
package main

import (
	"context"
	"errors"
	"io"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/service"
)

func main() { service.Main("ingestor", run) }

type mainConfig struct {
	Ingestor    ingestor.Config
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/pulseboard?sslmode=disable"`
	RedisURL    string `env:"REDIS_URL" envDefault:"redis://localhost:6379"`
	// AdminHost and AdminPort serve /healthz, /readyz, /metrics [127.0.0.1, 9101]: only
	// local by default (containers set ADMIN_HOST=0.0.0.0 for Prometheus and the probes).
	AdminHost string `env:"ADMIN_HOST" envDefault:"127.0.0.1"`
	AdminPort int    `env:"ADMIN_PORT" envDefault:"9101"`
	// AdminPprof also serves /debug/pprof/ on the admin port [false: 404].
	AdminPprof bool   `env:"ADMIN_PPROF" envDefault:"false"`
	LogLevel   string `env:"LOG_LEVEL" envDefault:"info"`
}

func run(ctx context.Context, env config.Env, stdout io.Writer) error {
	cfg, err := config.Parse[mainConfig](env)
	if err != nil {
		return err
	}
	if len(cfg.Ingestor.Kafka.Brokers) == 0 {
		return errors.New("KAFKA_BROKERS is required (the embedded broker is only for `pulseboard run`)")
	}
	proc, err := service.Start(stdout, service.Options{Name: "ingestor", LogLevel: cfg.LogLevel,
		AdminHost: cfg.AdminHost, AdminPort: cfg.AdminPort, AdminPprof: cfg.AdminPprof, PublicListeners: 1})
	if err != nil {
		return err
	}
	logger := proc.Logger
	pool, err := pgstore.Open(ctx, cfg.DatabaseURL, pgstore.PoolOptions{ApplicationName: "pulseboard-ingestor", MaxConns: 8})
	if err != nil {
		return err
	}
	defer pool.Close()
	// A Redis that does not answer at start is logged, not fatal: API keys are then
	// resolved from PostgreSQL (never a 401 for a Redis outage, docs/reliability.md promise 7).
	rdb, err := redisx.Connect(ctx, cfg.RedisURL, logger, "API keys are resolved from PostgreSQL until it does")
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()

	// Not PostgreSQL: cached API keys keep ingesting through a PostgreSQL outage (F11), so
	// it must not take every ingestor out of the load balancer. Kafka and shedding are
	// the service's own readiness checks.
	svc, err := ingestor.New(cfg.Ingestor, ingestor.Deps{
		Pool: pool, Redis: rdb, Brokers: cfg.Ingestor.Kafka.Brokers,
		Logger: logger, Registerer: proc.Registry, Ready: proc.Ready,
	})
	if err != nil {
		return err
	}
	// Readiness fails as soon as the stop is requested; the admin port outlives the drain.
	return proc.Run(ctx, svc.Run)
}
