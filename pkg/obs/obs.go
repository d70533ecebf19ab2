// Package obs is what every PulseBoard service exposes to operators: JSON logs (log/slog),
// one Prometheus registry per process with the Go and process collectors, and the admin
// HTTP server (/healthz, /readyz, /metrics, and /debug/pprof when enabled) on its own
// port, never on a public listener.
package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewLogger returns a JSON logger at the given level (debug, info, warn, error).
func NewLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if strings.TrimSpace(level) == "" {
		level = "info"
	}
	if err := l.UnmarshalText([]byte(strings.ToUpper(strings.TrimSpace(level)))); err != nil {
		return nil, fmt.Errorf("LOG_LEVEL %q: %w", level, err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// NewRegistry returns a registry with the Go runtime and process collectors. Services
// register their metrics on it with promauto.With(reg); nothing uses the global registry.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Readiness aggregates named dependency checks plus a draining flag. /readyz answers 503
// as soon as draining is set, before a service starts refusing work, so load balancers
// stop sending traffic first.
type Readiness struct {
	mu       sync.RWMutex
	checks   map[string]func(context.Context) error
	draining atomic.Bool
}

// NewReadiness returns an empty Readiness (ready).
func NewReadiness() *Readiness {
	return &Readiness{checks: map[string]func(context.Context) error{}}
}

// Add registers a check; it must return quickly and honour ctx.
func (r *Readiness) Add(name string, check func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks[name] = check
}

// SetDraining marks the process as shutting down; it never becomes ready again.
func (r *Readiness) SetDraining() { r.draining.Store(true) }

// Draining reports whether SetDraining was called.
func (r *Readiness) Draining() bool { return r.draining.Load() }

// Check runs every check and joins the failures.
func (r *Readiness) Check(ctx context.Context) error {
	if r.draining.Load() {
		return errors.New("draining: shutting down")
	}
	r.mu.RLock()
	names := make([]string, 0, len(r.checks))
	for n := range r.checks {
		names = append(names, n)
	}
	checks := r.checks
	r.mu.RUnlock()
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		if err := checks[n](ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// AdminOptions configure the admin server beyond its address.
type AdminOptions struct {
	// Pprof serves the runtime profiles under /debug/pprof/ (ADMIN_PPROF). Off, which is
	// every binary's default, those paths answer 404: the index discloses the command
	// line, and a CPU profile or trace costs the process for as long as the caller asks.
	Pprof bool
}

// AdminHandler serves /healthz, /readyz, /metrics and, with opts.Pprof, /debug/pprof/.
func AdminHandler(reg *prometheus.Registry, ready *Readiness, opts AdminOptions) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := ready.Check(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, `{"status":"unavailable","reason":%q}`, err.Error())
			return
		}
		_, _ = io.WriteString(w, `{"status":"ready"}`)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, EnableOpenMetrics: false}))
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// ServeAdmin serves h on ln until ctx is done, then shuts down within 5 s. The admin port
// outlives the service's own drain so that readiness and metrics stay observable.
func ServeAdmin(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      2 * time.Minute, // pprof profiles take up to 60 s by default
		IdleTimeout:       60 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("admin server listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("admin server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("admin server shutdown: %w", err)
	}
	return nil
}
