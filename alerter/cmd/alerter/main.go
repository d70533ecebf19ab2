// Command alerter runs one PulseBoard alerter replica on its own: error-threshold alerts
// by email from its own consumer group, the daily digest and retention, with /healthz,
// /readyz, /metrics (and /debug/pprof with ADMIN_PPROF=true) on ADMIN_PORT (default
// 9103, on 127.0.0.1 unless ADMIN_HOST says otherwise). Configuration comes from the
// environment (and .env); see alerter.Config and docs/architecture.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/service"
)

func main() { service.Main("alerter", run) }

// processConfig is what the standalone binary needs beyond alerter.Config.
type processConfig struct {
	// DatabaseURL [postgres://postgres@localhost:5432/pulseboard?sslmode=disable].
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/pulseboard?sslmode=disable"`
	// AdminHost and AdminPort serve /healthz, /readyz, /metrics [127.0.0.1, 9103]; port
	// 0 = any. Only local by default (containers set ADMIN_HOST=0.0.0.0 for Prometheus
	// and the probes).
	AdminHost string `env:"ADMIN_HOST" envDefault:"127.0.0.1"`
	AdminPort int    `env:"ADMIN_PORT" envDefault:"9103"`
	// AdminPprof also serves /debug/pprof/ on the admin port [false: 404].
	AdminPprof bool `env:"ADMIN_PPROF" envDefault:"false"`
	// LogLevel: debug, info, warn, error [info].
	LogLevel string `env:"LOG_LEVEL" envDefault:"info"`
	// DBMaxConns bounds the pool: evaluation, resolution, delivery (one connection held
	// per email in flight), the job lock and the job itself [6].
	DBMaxConns int32 `env:"ALERTER_DB_MAX_CONNS" envDefault:"6"`
}

func (c processConfig) validate() error {
	var errs []error
	if c.AdminPort < 0 || c.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("ADMIN_PORT must be a port number, got %d", c.AdminPort))
	}
	if c.DBMaxConns < 4 {
		errs = append(errs, fmt.Errorf("ALERTER_DB_MAX_CONNS must be at least 4, got %d", c.DBMaxConns))
	}
	return errors.Join(errs...)
}

// run starts the alerter and its admin server and returns when ctx is cancelled (after
// the graceful stop) or either fails.
func run(ctx context.Context, env config.Env, stdout io.Writer) error {
	pcfg, err := config.Parse[processConfig](env)
	if err != nil {
		return err
	}
	cfg, err := config.Parse[alerter.Config](env)
	if err != nil {
		return err
	}
	errs := []error{pcfg.validate(), cfg.Validate()}
	if len(cfg.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("KAFKA_BROKERS is required for the standalone alerter (the embedded broker lives in the all-in-one `pulseboard run`)"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	proc, err := service.Start(stdout, service.Options{Name: "alerter", LogLevel: pcfg.LogLevel,
		AdminHost: pcfg.AdminHost, AdminPort: pcfg.AdminPort, AdminPprof: pcfg.AdminPprof})
	if err != nil {
		return err
	}
	logger := proc.Logger

	pool, err := pgstore.Open(ctx, pcfg.DatabaseURL, pgstore.PoolOptions{
		MaxConns:        pcfg.DBMaxConns,
		ApplicationName: "pulseboard-alerter",
	})
	if err != nil {
		return fmt.Errorf("%w (start one with `docker compose up -d postgres`, or set DATABASE_URL)", err)
	}
	defer pool.Close()

	topicCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = kafkax.EnsureTopics(topicCtx, cfg.Kafka.Brokers, kafkax.Topic{Name: cfg.Kafka.Topic, Partitions: cfg.Kafka.Partitions})
	cancel()
	if err != nil {
		return err
	}

	proc.Ready.Add("postgres", func(ctx context.Context) error { return pool.Ping(ctx) })
	svc, err := alerter.New(cfg, alerter.Deps{
		Pool: pool, Brokers: cfg.Kafka.Brokers,
		Logger: logger, Registerer: proc.Registry, Ready: proc.Ready,
	})
	if err != nil {
		return err
	}
	if cfg.SMTP.Host == "" {
		logger.Warn("SMTP_HOST is unset: emails are written to the log (and recorded with transport \"log\"), not sent")
	}

	// Readiness fails as soon as the stop is requested; the admin port outlives the drain,
	// so /metrics and /readyz stay observable while the last batch finishes.
	return proc.Run(ctx, svc.Run)
}
