// Package service is the setup the standalone binaries (ingestor/cmd/ingestor,
// consumer/cmd/consumer, alerter/cmd/alerter, api/cmd/api) share, so that each main only
// builds its own dependencies:
//
//   - Main: SIGINT/SIGTERM cancel the context, the environment (and .env) is read, and an
//     error is printed as "<name>: <error>" on stderr with exit status 1;
//   - Start: the JSON logger on stdout (LOG_LEVEL, every record tagged service=<name>), the
//     file-descriptor limit raised and logged (pkg/fdlimit), one Prometheus registry and
//     the readiness checks;
//   - Process.Run: the admin server (/metrics, /healthz, /readyz and, with ADMIN_PPROF,
//     /debug/pprof/ on ADMIN_HOST:ADMIN_PORT) next to the service's Run, with readiness
//     failing as soon as the stop is requested and the admin port outliving the drain
//     (obs.RunService).
//
// The variables themselves (ADMIN_HOST, ADMIN_PORT, ADMIN_PPROF, LOG_LEVEL) stay declared
// in each binary's configuration: their defaults differ (ADMIN_PORT), and the
// configuration reference is checked per component. The all-in-one (cmd/pulseboard) runs
// the four services in one process with its own, richer setup.
package service

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/fdlimit"
	"github.com/pulseboard/pulseboard/pkg/obs"
)

// Main runs a standalone binary named name: run gets a context cancelled by SIGINT or
// SIGTERM, the environment (with .env when present) and stdout for the logs. An error
// (reading the environment, or run's) is printed as "<name>: <error>" on stderr and the
// process exits with status 1.
func Main(name string, run func(ctx context.Context, env config.Env, stdout io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env, err := config.FromOS(".env")
	if err == nil {
		err = run(ctx, env, os.Stdout)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Options are a standalone binary's process settings, from its own configuration.
type Options struct {
	// Name is the service ("consumer"): the logs' service attribute.
	Name string
	// LogLevel: debug, info, warn or error (LOG_LEVEL).
	LogLevel string
	// AdminHost, AdminPort and AdminPprof place the admin server (ADMIN_HOST, ADMIN_PORT,
	// ADMIN_PPROF).
	AdminHost  string
	AdminPort  int
	AdminPprof bool
	// PublicListeners is the number of public listeners sharing the connection budget
	// (fdlimit.Init): 1 for the ingestor and the api, 0 for the consumer and the alerter.
	PublicListeners int
}

// Process is what Start sets up: the logger, the registry and the readiness checks the
// service's dependencies are built with.
type Process struct {
	Logger   *slog.Logger
	Registry *prometheus.Registry
	Ready    *obs.Readiness
	opts     Options
}

// Start builds the logger (JSON on stdout, tagged service=Name), logs the file-descriptor
// limit, and creates the metrics registry and the readiness checks.
func Start(stdout io.Writer, o Options) (*Process, error) {
	logger, err := obs.NewLogger(stdout, o.LogLevel)
	if err != nil {
		return nil, err
	}
	logger = logger.With("service", o.Name)
	fdlimit.Init(logger, o.PublicListeners)
	return &Process{Logger: logger, Registry: obs.NewRegistry(), Ready: obs.NewReadiness(), opts: o}, nil
}

// Run serves the admin port and runs run until ctx is cancelled (after run's graceful
// stop) or either fails. Readiness fails as soon as the stop is requested; the admin port
// outlives the drain, so /metrics and /readyz stay observable while the last work finishes.
func (p *Process) Run(ctx context.Context, run func(context.Context) error) error {
	addr := net.JoinHostPort(p.opts.AdminHost, strconv.Itoa(p.opts.AdminPort))
	return obs.RunService(ctx, addr, obs.AdminOptions{Pprof: p.opts.AdminPprof}, p.Registry, p.Ready, p.Logger, run)
}
