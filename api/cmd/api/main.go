// Command api runs PulseBoard's query API (auth, projects, events, stats, alerts) against
// PostgreSQL and Redis. Configuration comes from the environment (and .env); see
// api.Config for the variables.
package main

import (
	"context"
	"io"

	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/service"
)

func main() { service.Main("api", run) }

type mainConfig struct {
	API         api.Config
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/pulseboard?sslmode=disable"`
	RedisURL    string `env:"REDIS_URL" envDefault:"redis://localhost:6379"`
	// AdminHost and AdminPort serve /healthz, /readyz, /metrics [127.0.0.1, 9104]: only
	// local by default (containers set ADMIN_HOST=0.0.0.0 for Prometheus and the probes).
	AdminHost string `env:"ADMIN_HOST" envDefault:"127.0.0.1"`
	AdminPort int    `env:"ADMIN_PORT" envDefault:"9104"`
	// AdminPprof also serves /debug/pprof/ on the admin port [false: 404].
	AdminPprof bool   `env:"ADMIN_PPROF" envDefault:"false"`
	LogLevel   string `env:"LOG_LEVEL" envDefault:"info"`
}

func run(ctx context.Context, env config.Env, stdout io.Writer) error {
	cfg, err := config.Parse[mainConfig](env)
	if err != nil {
		return err
	}
	if err := cfg.API.Validate(); err != nil {
		return err
	}
	proc, err := service.Start(stdout, service.Options{Name: "api", LogLevel: cfg.LogLevel,
		AdminHost: cfg.AdminHost, AdminPort: cfg.AdminPort, AdminPprof: cfg.AdminPprof, PublicListeners: 1})
	if err != nil {
		return err
	}
	logger := proc.Logger
	pool, err := pgstore.Open(ctx, cfg.DatabaseURL, pgstore.PoolOptions{ApplicationName: "pulseboard-api", MaxConns: 16})
	if err != nil {
		return err
	}
	defer pool.Close()
	// A Redis that does not answer at start is logged, not fatal: accounts, projects and
	// queries need only PostgreSQL, and go-redis reconnects by itself (docs/reliability.md F14:
	// login unaffected by a Redis outage).
	rdb, err := redisx.Connect(ctx, cfg.RedisURL, logger, "live streams wait for it; everything else is served")
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()

	// Not Redis: a Redis outage must not take every api replica out of the load balancer
	// when only live streams depend on it (they answer 503 and resync on their own).
	proc.Ready.Add("postgres", func(ctx context.Context) error { return pool.Ping(ctx) })
	tokens, err := api.NewAccessTokens(cfg.API, logger)
	if err != nil {
		return err
	}
	deps := api.Deps{Pool: pool, Redis: rdb, Logger: logger, Registerer: proc.Registry, Ready: proc.Ready, Tokens: tokens}
	// The live streams verify the same access tokens (a random development secret is per
	// process, so they must share this value).
	if deps.Live, err = api.NewLive(cfg.API, deps, tokens); err != nil {
		return err
	}
	svc, err := api.New(cfg.API, deps)
	if err != nil {
		return err
	}
	// Readiness fails as soon as the stop is requested; the admin port outlives the drain.
	return proc.Run(ctx, svc.Run)
}
