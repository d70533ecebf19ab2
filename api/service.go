package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/api/internal/authn"
	"github.com/pulseboard/pulseboard/api/internal/passwords"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/api/internal/throttle"
	"github.com/pulseboard/pulseboard/pkg/auth"
	"github.com/pulseboard/pulseboard/pkg/clientip"
	"github.com/pulseboard/pulseboard/pkg/connlimit"
	"github.com/pulseboard/pulseboard/pkg/fdlimit"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/obs"
)

// LiveStreams serves the WebSocket and SSE live streams (api/internal/live). The api
// mounts it and closes it at shutdown; it authenticates and authorises each stream
// itself, before upgrading.
//
// Both routes run behind the api's middleware, whose ResponseWriter passes Flush and
// Hijack through and unwraps for http.ResponseController. The http.Server has read and
// write timeouts (Config.ReadTimeout, WriteTimeout): an SSE handler must clear them for
// its request with http.NewResponseController(w).SetReadDeadline(time.Time{}) and
// SetWriteDeadline, and a hijacked connection must set its own deadlines.
type LiveStreams interface {
	// ServeWS is mounted at GET /realtime/{projectId}.
	ServeWS(w http.ResponseWriter, r *http.Request)
	// ServeSSE is mounted at GET /realtime/{projectId}/sse.
	ServeSSE(w http.ResponseWriter, r *http.Request)
	// Close closes every open stream and refuses new ones; it returns when they are
	// closed or ctx is done. net/http's Shutdown does not wait for hijacked connections
	// and never sees an SSE stream as idle, so Run calls this during shutdown.
	Close(ctx context.Context)
}

// Deps are the api's dependencies, built and closed by the caller.
type Deps struct {
	Pool  *pgxpool.Pool
	Redis *redis.Client
	// Logger defaults to discarding; Registerer to a private registry.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Ready is the host's readiness; the host adds its dependency checks and sets
	// draining before cancelling Run's context. May be nil.
	Ready *obs.Readiness
	// Listener, when set, is used instead of listening on Host:Port (tests use port 0).
	Listener net.Listener
	// Live serves the live streams; nil answers those routes 404.
	Live LiveStreams
	// Tokens issues and verifies access tokens. The host builds it with NewAccessTokens
	// when the live streams need the same one (in development the secret is random, so
	// both must share this value); nil builds one from the Config.
	Tokens *auth.Tokens
	// Now is the clock for login throttling and refresh-token lifetimes (tests inject
	// one); nil means time.Now. Access tokens always use the real clock.
	Now func() time.Time
}

// Service is a configured api. Create it with New and call Run once.
type Service struct {
	cfg    Config
	deps   Deps
	logger *slog.Logger
	m      *metrics
	now    func() time.Time

	store  *store.Store
	tokens *auth.Tokens
	// successorKey derives rotated refresh tokens from their predecessor (successorToken).
	successorKey []byte
	authn        *authn.Authenticator
	hasher       *passwords.Hasher // logins
	// regHasher hashes registrations on slots of their own (issue 16 item 6).
	regHasher *passwords.Hasher
	throttle  *throttle.Limiter

	origins   map[string]bool
	clientIPs *clientip.Resolver

	mux      *http.ServeMux
	patterns []string // registered, for the OpenAPI coverage test
	handler  http.Handler
	server   *http.Server
	ln       net.Listener
	conns    *connlimit.Listener // wraps ln: the connection caps
	started  atomic.Bool
}

// New checks the configuration and dependencies, builds the handlers and registers the
// metrics. It listens (unless Deps.Listener is set) but serves nothing until Run.
func New(cfg Config, deps Deps) (*Service, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if deps.Pool == nil {
		errs = append(errs, errors.New("api: Deps.Pool is required"))
	}
	if deps.Redis == nil {
		errs = append(errs, errors.New("api: Deps.Redis is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if deps.Registerer == nil {
		deps.Registerer = prometheus.NewRegistry()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Service{cfg: cfg, deps: deps, logger: deps.Logger.With("component", "api"), now: deps.Now}

	var err error
	if s.tokens = deps.Tokens; s.tokens == nil {
		if s.tokens, err = NewAccessTokens(cfg, s.logger); err != nil {
			return nil, err
		}
	}
	s.successorKey = s.tokens.Derive("pulseboard refresh-token successor v1")
	s.store = store.New(deps.Pool)
	s.authn = authn.New(s.tokens, s.store, func(err error) bool { return errors.Is(err, store.ErrNotFound) })
	conc := cfg.HashConcurrency
	if conc == 0 {
		conc = runtime.GOMAXPROCS(0)
	}
	if s.hasher, err = passwords.New(cfg.BcryptCost, conc, cfg.HashWait); err != nil {
		return nil, err
	}
	regConc := cfg.RegisterHashConcurrency
	if regConc == 0 {
		regConc = max(1, runtime.GOMAXPROCS(0)/4)
	}
	if s.regHasher, err = passwords.New(cfg.BcryptCost, regConc, cfg.HashWait); err != nil {
		return nil, err
	}
	s.m = newMetrics(deps.Registerer)
	s.throttle = throttle.New(deps.Redis, cfg.LoginThrottlePrefix, deps.Now, s.logger)
	s.throttle.OnFallback = s.m.throttleFallback.Inc
	s.origins = map[string]bool{}
	for _, o := range cfg.CORSOrigins {
		s.origins[o] = true
	}
	trusted, _ := clientip.ParseTrusted(strings.Join(cfg.TrustedProxies, ",")) // validated above
	s.clientIPs = clientip.New(trusted, clientip.XForwardedFor)

	s.mux = http.NewServeMux()
	s.routes()
	// The ingest routes bypass the api's CORS and body cap: forwarded to the ingestor
	// (API_INGEST_URL), whose own rules apply (forward.go).
	s.handler = s.forwardIngest(s.drainRejectedBody(s.instrument(s.cors(http.HandlerFunc(s.router)))))
	s.server = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}

	s.ln = deps.Listener
	if s.ln == nil {
		if s.ln, err = net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))); err != nil {
			return nil, fmt.Errorf("api: listening on %s:%d: %w", cfg.Host, cfg.Port, err)
		}
	}
	s.conns = connlimit.New(s.ln, s.connOptions())
	s.ln = s.conns
	s.server.ConnState = s.conns.ConnState
	return s, nil
}

// connOptions are the connection caps of Config (API_MAX_CONNS, API_MAX_CONNS_PER_IP):
// a MaxConns of 0 is derived from the open-file limit (fdlimit.DefaultMaxConns).
func (s *Service) connOptions() connlimit.Options {
	soft, hard := fdlimit.Current()
	maxConns := s.cfg.MaxConns
	if maxConns == 0 {
		maxConns = fdlimit.DefaultMaxConns()
	}
	if soft > 0 && uint64(maxConns) > soft {
		s.logger.Warn("API_MAX_CONNS is above the open-file limit: a connection flood can exhaust the descriptors PostgreSQL and Redis need",
			"max_conns", maxConns, "nofile_soft", soft)
	}
	s.logger.Info("connection caps", "max_conns", maxConns, "max_conns_per_ip", s.cfg.MaxConnsPerIP, "nofile_soft", soft, "nofile_hard", hard)
	total := connlimit.HTTPRefusal(http.StatusServiceUnavailable,
		httperr.AppendBody(nil, httperr.Unavailable, "the server is at its connection limit; retry shortly"))
	perIP := connlimit.HTTPRefusal(http.StatusTooManyRequests,
		httperr.AppendBody(nil, httperr.RateLimited, "too many connections from your address; reuse or close some"))
	return connlimit.Options{
		MaxConns: maxConns, MaxConnsPerIP: s.cfg.MaxConnsPerIP,
		Refusal: func(r connlimit.Reason) []byte {
			if r == connlimit.ReasonPerIP {
				return perIP
			}
			return total
		},
		Namespace: "pulseboard_api", Registerer: s.deps.Registerer, Logger: s.logger,
	}
}

// drainRejectedBody makes a 413 readable (issue 16 item 9). When a handler stops reading
// a body at API_MAX_BODY_BYTES (http.MaxBytesReader) and answers 413, net/http would
// close the connection with the rest of the body unread: the kernel then resets it, and a
// client that writes its whole body before reading (Node's fetch) sees ECONNRESET
// instead of the 413. Here, once the body passes the cap, the response gets
// Connection: close and full duplex; after the handler, the 413 is flushed and the rest
// of the body read and discarded (at most connlimit.DrainMaxBytes, within
// connlimit.DrainTimeout) before the connection closes. A body declaring more than that
// is not drained: the connection closes as before.
func (s *Service) drainRejectedBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		body := &capWatcher{ReadCloser: r.Body, limit: s.cfg.MaxBodyBytes, w: w}
		r2 := new(http.Request)
		*r2 = *r
		r2.Body = body
		next.ServeHTTP(w, r2)
		if !body.over || body.eof {
			return
		}
		n := int64(connlimit.DrainMaxBytes)
		if r.ContentLength > 0 {
			if n = r.ContentLength - body.n; n > connlimit.DrainMaxBytes {
				return
			}
		}
		rc := http.NewResponseController(w)
		if rc.Flush() != nil || rc.SetReadDeadline(time.Now().Add(connlimit.DrainTimeout)) != nil {
			return
		}
		_, _ = io.CopyN(io.Discard, r.Body, n)
	})
}

// capWatcher counts what a handler reads of a request body and, the moment it passes
// the cap, prepares the response for drainRejectedBody (before the handler answers).
type capWatcher struct {
	io.ReadCloser
	limit int64
	w     http.ResponseWriter
	n     int64
	over  bool
	eof   bool
}

func (c *capWatcher) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	if err == io.EOF {
		c.eof = true
	}
	if c.n > c.limit && !c.over {
		c.over = true
		c.w.Header().Set("Connection", "close")
		// Without full duplex net/http would refuse to read the body once the 413 is
		// written and close the connection with the rest of it unread.
		_ = http.NewResponseController(c.w).EnableFullDuplex()
	}
	return n, err
}

// NewAccessTokens returns the access token issuer of cfg: JWT_ACCESS_SECRET, or in
// development, when it is unset, a random secret (with a warning: tokens then do not
// survive a restart and are not shared between instances). Validate refuses a missing
// secret in production.
func NewAccessTokens(cfg Config, logger *slog.Logger) (*auth.Tokens, error) {
	secret := []byte(cfg.AccessSecret)
	if len(secret) == 0 {
		if cfg.Production() {
			return nil, errors.New("JWT_ACCESS_SECRET is required with PULSEBOARD_ENV=production")
		}
		secret = auth.RandomSecret()
		if logger != nil {
			logger.Warn("JWT_ACCESS_SECRET is not set: using a random secret (development only; access tokens do not survive a restart and are not shared between instances)")
		}
	}
	return auth.NewTokens(secret, cfg.AccessTTL.D())
}

// routes registers every route; docs/api.md is the contract, openapi.json its description
// (a test checks that every pattern registered here is documented there).
func (s *Service) routes() {
	m := func(pattern string, h http.Handler) {
		s.patterns = append(s.patterns, pattern)
		s.mux.Handle(pattern, h)
	}
	m("POST /auth/register", s.handle(s.register))
	m("POST /auth/login", s.handle(s.login))
	m("POST /auth/refresh", s.handle(s.refresh))
	m("POST /auth/logout", s.handle(s.logout))
	m("POST /auth/logout-all", s.authed(s.logoutAll))
	m("GET /me", s.authed(s.me))
	m("GET /auth/verify", s.handle(s.verifyEmail))
	m("POST /auth/verify/resend", s.authed(s.resendVerification))

	m("POST /projects", s.authed(s.createProject))
	m("GET /projects", s.authed(s.listProjects))
	m("GET /projects/{id}", s.authed(s.getProject))
	m("PATCH /projects/{id}", s.authed(s.updateProject))
	m("PUT /projects/{id}", s.authed(s.updateProject)) // alias of PATCH (partial update)
	m("DELETE /projects/{id}", s.authed(s.deleteProject))
	m("POST /projects/{id}/rotate-key", s.authed(s.rotateKey))
	m("GET /projects/{id}/events", s.authed(s.projectEvents))
	m("DELETE /projects/{id}/events", s.authed(s.deleteEvents))
	m("GET /projects/{id}/events/{eventId}", s.authed(s.projectEvent))
	m("GET /projects/{id}/stats", s.authed(s.stats))
	m("GET /projects/{id}/stats/errors", s.authed(s.topErrors))
	m("GET /projects/{id}/alerts", s.authed(s.alerts))
	m("GET /projects/{id}/channels", s.authed(s.listChannels))
	m("POST /projects/{id}/channels", s.authed(s.createChannel))
	m("GET /projects/{id}/channels/{channelId}", s.authed(s.getChannel))
	m("PATCH /projects/{id}/channels/{channelId}", s.authed(s.updateChannel))
	m("DELETE /projects/{id}/channels/{channelId}", s.authed(s.deleteChannel))
	m("POST /projects/{id}/channels/{channelId}/rotate-secret", s.authed(s.rotateChannelSecret))

	m("GET /events", s.handle(s.eventsByKey))
	m("GET /openapi.json", http.HandlerFunc(serveOpenAPI))
	s.dashboardRoutes(m) // GET / and /app/…: the dashboard (dashboard.go), not JSON routes

	if s.deps.Live != nil {
		m("GET /realtime/{projectId}", http.HandlerFunc(s.deps.Live.ServeWS))
		m("GET /realtime/{projectId}/sse", http.HandlerFunc(s.deps.Live.ServeSSE))
	}
	if sio, ok := s.deps.Live.(SocketIOStreams); ok {
		m("GET /socket.io/", http.HandlerFunc(sio.ServeSocketIO))
		m("POST /socket.io/", http.HandlerFunc(sio.ServeSocketIO))
	}
}

// Handler is the api's whole HTTP handler (middleware included).
func (s *Service) Handler() http.Handler { return s.handler }

// Addr is the public listener's address.
func (s *Service) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx is done, then shuts down gracefully within ShutdownTimeout: the
// host has already made readiness fail; the listener closes, in-flight requests finish,
// live streams are closed (Live.Close: Shutdown does not wait for hijacked connections
// and never sees an SSE stream as idle), and whatever is left is closed hard.
func (s *Service) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("api: Run called more than once")
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.server.Serve(s.ln) }()
	s.logger.Info("api listening", "addr", s.ln.Addr().String(), "config", s.cfg.String())

	select {
	case err := <-serveErr:
		if s.deps.Live != nil {
			s.deps.Live.Close(context.Background())
		}
		return fmt.Errorf("api server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- s.server.Shutdown(shutdownCtx) }()
	if s.deps.Live != nil {
		s.deps.Live.Close(shutdownCtx)
	}
	err := <-shutdownDone
	if err != nil {
		s.logger.Warn("api shutdown did not finish in time; closing the remaining connections", "error", err)
		_ = s.server.Close()
	}
	if serr := <-serveErr; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("api server: %w", serr)
	}
	s.logger.Info("api stopped")
	return nil
}
