package obs

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// RunService runs a standalone service next to its admin server on adminAddr (serving
// AdminHandler with opts), in the order every PulseBoard service stops in: when ctx ends,
// readiness turns false at once (before the service starts draining, so load balancers
// stop sending traffic first), the service drains and returns, and only then does the
// admin server stop, so /readyz and /metrics stay observable throughout the drain. If the
// admin server fails, the service is stopped too.
func RunService(ctx context.Context, adminAddr string, opts AdminOptions, reg *prometheus.Registry, ready *Readiness,
	logger *slog.Logger, run func(context.Context) error) error {
	ln, err := net.Listen("tcp", adminAddr)
	if err != nil {
		return fmt.Errorf("admin listener on %s: %w", adminAddr, err)
	}
	stopReady := context.AfterFunc(ctx, ready.SetDraining)
	defer stopReady()
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer stopAdmin()
		return run(gctx)
	})
	g.Go(func() error { return ServeAdmin(adminCtx, ln, AdminHandler(reg, ready, opts), logger) })
	return g.Wait()
}
