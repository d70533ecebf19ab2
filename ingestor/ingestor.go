// Package ingestor is PulseBoard's ingest service: a fasthttp server that authenticates
// events by project API key, validates them, and answers only after Kafka acknowledged
// them with acks=all. New(cfg, deps).Run(ctx) is the whole service; the standalone binary
// and the all-in-one wire exactly this.
package ingestor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/pulseboard/pulseboard/ingestor/internal/intake"
	"github.com/pulseboard/pulseboard/ingestor/internal/keycache"
	"github.com/pulseboard/pulseboard/ingestor/internal/producer"
	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/clientip"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/connlimit"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/fdlimit"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/obs"
)

// Config is the ingestor's configuration (environment variables in the tags).
type Config struct {
	Kafka config.Kafka
	// Host and Port of the public listener.
	Host string `env:"INGEST_HOST" envDefault:"0.0.0.0"`
	Port int    `env:"INGEST_PORT" envDefault:"3002"`
	// RateLimit is the default per-project limit in events/s (0 = unlimited); a project's
	// own setting overrides it. The bucket holds twice that, at least one full batch.
	RateLimit float64 `env:"INGEST_RATE_LIMIT" envDefault:"5000"`
	// RateLimitBytes is the default per-project limit in request bytes/s after
	// decompression (0 = unlimited), scaled by a project's own events/s setting over
	// RateLimit. The bucket holds twice that, at least one maximal request.
	RateLimitBytes float64 `env:"INGEST_RATE_LIMIT_BYTES" envDefault:"8388608"`
	// ProduceTimeout is the deadline for Kafka's acknowledgement; past it the answer is
	// 503 with Retry-After.
	ProduceTimeout time.Duration `env:"INGEST_PRODUCE_TIMEOUT" envDefault:"5s"`
	// MaxInflightBytes bounds event bytes waiting for the broker; past it: 503.
	MaxInflightBytes int64 `env:"INGEST_MAX_INFLIGHT_BYTES" envDefault:"67108864"`
	// Body and event limits (docs/api.md).
	MaxBodyBytes         int `env:"INGEST_MAX_BODY_BYTES" envDefault:"1048576"`
	MaxDecompressedBytes int `env:"INGEST_MAX_DECOMPRESSED_BYTES" envDefault:"10485760"`
	MaxBatchEvents       int `env:"INGEST_MAX_BATCH_EVENTS" envDefault:"1000"`
	MaxEventBytes        int `env:"INGEST_MAX_EVENT_BYTES" envDefault:"65536"`
	// Slow-client protection (fasthttp has no timeouts by default, docs/reliability.md H1).
	ReadTimeout   time.Duration `env:"INGEST_READ_TIMEOUT" envDefault:"10s"`
	WriteTimeout  time.Duration `env:"INGEST_WRITE_TIMEOUT" envDefault:"10s"`
	IdleTimeout   time.Duration `env:"INGEST_IDLE_TIMEOUT" envDefault:"60s"`
	MaxConnsPerIP int           `env:"INGEST_MAX_CONNS_PER_IP" envDefault:"1024"`
	// MaxConns caps the connections open at once [0: half the process's open-file
	// soft limit, within 16..65536]. Over it, or over MaxConnsPerIP from one client
	// address (0: no per-address cap), a connection is answered 503 (429 per address)
	// and closed at once; from 90 % of MaxConns on, the oldest idle keep-alive
	// connections are closed to make room (issue 16). Per address means per TCP peer:
	// behind a reverse proxy, raise MaxConnsPerIP or set it to 0.
	MaxConns int `env:"INGEST_MAX_CONNS" envDefault:"0"`
	// API key cache TTLs: a rotated key stops working everywhere within KeyCacheTTL.
	KeyCacheTTL         time.Duration `env:"INGEST_KEY_CACHE_TTL" envDefault:"60s"`
	KeyCacheNegativeTTL time.Duration `env:"INGEST_KEY_CACHE_NEGATIVE_TTL" envDefault:"30s"`
	// UnknownKeyRate and UnknownKeyBurst limit requests with unknown API keys per client
	// address (B34): after UnknownKeyBurst of them the address gets 429 until its bucket
	// refills at UnknownKeyRate per second. 0 disables the limit.
	UnknownKeyRate  float64 `env:"INGEST_UNKNOWN_KEY_RATE" envDefault:"1"`
	UnknownKeyBurst int     `env:"INGEST_UNKNOWN_KEY_BURST" envDefault:"100"`
	// UnknownKeyPrefixRate and UnknownKeyPrefixBurst limit requests with unknown API keys
	// per key prefix as well, whatever address they come from (issue 16 item 5): after
	// UnknownKeyPrefixBurst unknown keys sharing their first 16 bytes, keys with that
	// prefix that are not known valid get 429 until its bucket refills at
	// UnknownKeyPrefixRate per second. 0 disables this dimension; UnknownKeyRate 0 turns
	// off the whole unknown-key guard, this dimension included.
	UnknownKeyPrefixRate  float64 `env:"INGEST_UNKNOWN_KEY_PREFIX_RATE" envDefault:"1"`
	UnknownKeyPrefixBurst int     `env:"INGEST_UNKNOWN_KEY_PREFIX_BURST" envDefault:"20"`
	// TrustedProxies are the reverse proxies (comma-separated CIDRs or addresses) whose
	// ClientIPHeader names the client the unknown-key guard keys on; from any other peer
	// the header is ignored. Empty: trust no one, the guard keys on the TCP peer.
	TrustedProxies string `env:"INGEST_TRUSTED_PROXIES" envDefault:""`
	// ClientIPHeader is the header the trusted proxies write: X-Forwarded-For or
	// Forwarded (RFC 7239). Only that one is read.
	ClientIPHeader string `env:"INGEST_CLIENT_IP_HEADER" envDefault:"X-Forwarded-For"`
	// DrainDelay keeps answering 503 (readiness false) before closing the listener, so a
	// load balancer notices first. 0 in the all-in-one.
	DrainDelay time.Duration `env:"INGEST_DRAIN_DELAY" envDefault:"0s"`
	// ShutdownTimeout bounds the wait for in-flight requests and the Kafka writer's flush.
	ShutdownTimeout time.Duration `env:"INGEST_SHUTDOWN_TIMEOUT" envDefault:"15s"`
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("INGEST_PORT must be a port number, got %d", c.Port))
	}
	if c.RateLimit < 0 {
		errs = append(errs, errors.New("INGEST_RATE_LIMIT must be >= 0"))
	}
	if c.RateLimitBytes < 0 {
		errs = append(errs, errors.New("INGEST_RATE_LIMIT_BYTES must be >= 0"))
	}
	if c.ProduceTimeout <= 0 {
		errs = append(errs, errors.New("INGEST_PRODUCE_TIMEOUT must be > 0"))
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, errors.New("INGEST_MAX_BODY_BYTES must be at least 1024"))
	}
	if c.MaxDecompressedBytes < c.MaxBodyBytes {
		errs = append(errs, errors.New("INGEST_MAX_DECOMPRESSED_BYTES must be >= INGEST_MAX_BODY_BYTES"))
	}
	if c.MaxEventBytes < 1024 || c.MaxEventBytes > 1<<20 {
		errs = append(errs, errors.New("INGEST_MAX_EVENT_BYTES must be between 1024 and 1048576 (below the broker's message.max.bytes)"))
	}
	if c.UnknownKeyRate < 0 || c.UnknownKeyBurst < 1 {
		errs = append(errs, errors.New("INGEST_UNKNOWN_KEY_RATE must be >= 0 and INGEST_UNKNOWN_KEY_BURST >= 1"))
	}
	if c.UnknownKeyPrefixRate < 0 || c.UnknownKeyPrefixBurst < 1 {
		errs = append(errs, errors.New("INGEST_UNKNOWN_KEY_PREFIX_RATE must be >= 0 and INGEST_UNKNOWN_KEY_PREFIX_BURST >= 1"))
	}
	if _, err := clientip.ParseTrusted(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("INGEST_TRUSTED_PROXIES: %w", err))
	}
	if _, err := clientip.ParseHeader(c.ClientIPHeader); err != nil {
		errs = append(errs, fmt.Errorf("INGEST_CLIENT_IP_HEADER: %w", err))
	}
	if c.MaxConns < 0 || c.MaxConnsPerIP < 0 {
		errs = append(errs, errors.New("INGEST_MAX_CONNS and INGEST_MAX_CONNS_PER_IP must be >= 0"))
	}
	if c.MaxBatchEvents < 1 {
		errs = append(errs, errors.New("INGEST_MAX_BATCH_EVENTS must be >= 1"))
	}
	if c.MaxInflightBytes < int64(c.MaxDecompressedBytes) {
		errs = append(errs, errors.New("INGEST_MAX_INFLIGHT_BYTES must be >= INGEST_MAX_DECOMPRESSED_BYTES"))
	}
	return errors.Join(errs...)
}

// Deps are what the ingestor needs from its host process.
type Deps struct {
	Pool       *pgxpool.Pool
	Redis      *redis.Client // nil: no Redis layer and no invalidation messages
	Brokers    []string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Ready      *obs.Readiness
	// Listener, when set, is used instead of listening on Host:Port (tests pass port 0).
	Listener net.Listener
}

// Service is a configured ingestor.
type Service struct {
	cfg      Config
	deps     Deps
	handler  *intake.Handler
	keys     *keycache.Resolver
	producer *producer.Producer
	server   *fasthttp.Server
	ln       net.Listener
	conns    *connlimit.Listener // wraps ln: the connection caps
}

// New builds the service; nothing runs until Run.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(deps.Brokers) == 0 {
		return nil, errors.New("ingestor: no Kafka brokers")
	}
	wo := kafkax.DefaultWriterOptions()
	wo.WriteTimeout = cfg.ProduceTimeout
	prod, err := producer.New(producer.Options{
		Brokers: deps.Brokers, Topic: cfg.Kafka.Topic, Writer: wo,
		Timeout: cfg.ProduceTimeout, MaxInflightBytes: cfg.MaxInflightBytes,
	}, deps.Registerer)
	if err != nil {
		return nil, err
	}
	keys := keycache.New(deps.Pool, deps.Redis, keycache.Options{TTL: cfg.KeyCacheTTL, NegativeTTL: cfg.KeyCacheNegativeTTL}, deps.Logger, deps.Registerer)
	limits := intake.Limits{
		MaxBodyBytes:          cfg.MaxBodyBytes,
		MaxSingleDecompressed: cfg.MaxBodyBytes,
		MaxBatchDecompressed:  cfg.MaxDecompressedBytes,
		MaxBatchEvents:        cfg.MaxBatchEvents,
		Event:                 event.Limits{MaxNameChars: event.DefaultMaxNameChars, MaxEventBytes: cfg.MaxEventBytes, MaxDepth: event.DefaultMaxDepth},
	}
	limiter := ratelimit.New(cfg.RateLimit, cfg.MaxBatchEvents)
	limiter.SetBytes(cfg.RateLimitBytes, max(cfg.MaxBodyBytes, cfg.MaxDecompressedBytes)) // a maximal request fits an idle bucket
	h := intake.New(limits, keys, prod, limiter, deps.Logger, deps.Registerer)
	h.SetKeyGuard(ratelimit.NewKeyGuard(cfg.UnknownKeyRate, cfg.UnknownKeyBurst))
	if cfg.UnknownKeyRate > 0 { // the prefix dimension is part of the guard, off with it
		h.SetPrefixGuard(ratelimit.NewPrefixGuard(cfg.UnknownKeyPrefixRate, cfg.UnknownKeyPrefixBurst))
	}
	trusted, _ := clientip.ParseTrusted(cfg.TrustedProxies) // checked by Validate
	header, _ := clientip.ParseHeader(cfg.ClientIPHeader)
	h.SetClientIP(clientip.New(trusted, header))
	s := &Service{cfg: cfg, deps: deps, handler: h, keys: keys, producer: prod}
	s.server = &fasthttp.Server{
		Handler:                      h.ServeFastHTTP,
		ErrorHandler:                 intake.ErrorHandler,
		ReadTimeout:                  cfg.ReadTimeout,
		WriteTimeout:                 cfg.WriteTimeout,
		IdleTimeout:                  cfg.IdleTimeout,
		MaxRequestBodySize:           cfg.MaxBodyBytes,
		ReadBufferSize:               8 << 10, // also the header cap: 431 beyond it
		ConnState:                    s.connState,
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		CloseOnShutdown:              true,
		TCPKeepalive:                 true,
		Logger:                       fasthttpLogger{deps.Logger},
	}
	if deps.Ready != nil {
		deps.Ready.Add("ingest-not-shedding", func(context.Context) error {
			if prod.Overloaded() {
				return errors.New("in-flight byte budget exhausted")
			}
			return nil
		})
		deps.Ready.Add("kafka", func(ctx context.Context) error { return kafkax.Ping(ctx, deps.Brokers) })
	}
	ln := deps.Listener
	if ln == nil {
		ln, err = net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
		if err != nil {
			_ = prod.Close()
			return nil, fmt.Errorf("ingestor: listening on %s:%d: %w", cfg.Host, cfg.Port, err)
		}
	}
	s.conns = connlimit.New(ln, connOptions(cfg, deps))
	s.ln = s.conns
	return s, nil
}

// connOptions are the connection caps of cfg; a MaxConns of 0 is derived from the
// open-file limit (fdlimit.DefaultMaxConns).
func connOptions(cfg Config, deps Deps) connlimit.Options {
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	soft, hard := fdlimit.Current()
	maxConns := cfg.MaxConns
	if maxConns == 0 {
		maxConns = fdlimit.DefaultMaxConns()
	}
	if soft > 0 && uint64(maxConns) > soft {
		logger.Warn("INGEST_MAX_CONNS is above the open-file limit: a connection flood can exhaust the descriptors Kafka, PostgreSQL and Redis need",
			"max_conns", maxConns, "nofile_soft", soft)
	}
	logger.Info("connection caps", "max_conns", maxConns, "max_conns_per_ip", cfg.MaxConnsPerIP, "nofile_soft", soft, "nofile_hard", hard)
	total := connlimit.HTTPRefusal(fasthttp.StatusServiceUnavailable,
		httperr.AppendBody(nil, httperr.Unavailable, "the server is at its connection limit; retry shortly"))
	perIP := connlimit.HTTPRefusal(fasthttp.StatusTooManyRequests,
		httperr.AppendBody(nil, httperr.RateLimited, "too many connections from your address; reuse or close some"))
	return connlimit.Options{
		MaxConns: maxConns, MaxConnsPerIP: cfg.MaxConnsPerIP,
		Refusal: func(r connlimit.Reason) []byte {
			if r == connlimit.ReasonPerIP {
				return perIP
			}
			return total
		},
		Namespace: "pulseboard_ingest", Registerer: deps.Registerer, Logger: logger,
	}
}

// connState feeds fasthttp's connection states to the connection caps, which shed idle
// connections under pressure. The caps (INGEST_MAX_CONNS_PER_IP included) are the
// listener's (connlimit), not fasthttp's MaxConnsPerIP and Concurrency: those neither
// count refusals nor shed idle connections. Concurrency stays at fasthttp's default
// (256 Ki), above any MaxConns.
func (s *Service) connState(c net.Conn, st fasthttp.ConnState) {
	if s.conns != nil {
		s.conns.SetIdle(c, st == fasthttp.StateIdle)
	}
}

// Addr is the public listener's address.
func (s *Service) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx is done, then shuts down gracefully: new requests get 503 and
// readiness turns false (Deps.Ready draining), in-flight requests finish and get
// their acknowledgement, the listener closes, and the Kafka writer is flushed and closed
// (ShutdownTimeout bounds both waits, so a stalled broker cannot hold the process).
func (s *Service) Run(ctx context.Context) error {
	gctx, stop := context.WithCancel(ctx)
	defer stop()
	var g errgroup.Group
	g.Go(func() error { return s.keys.Run(gctx) })
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.server.Serve(s.ln) }()
	s.deps.Logger.Info("ingestor listening", "addr", s.ln.Addr().String())

	var err error
	select {
	case err = <-serveErr:
		err = fmt.Errorf("ingest server: %w", err)
	case <-gctx.Done():
	}
	s.handler.SetDraining()
	if s.deps.Ready != nil {
		s.deps.Ready.SetDraining() // the host may have done so already; /readyz fails from now
	}
	if s.cfg.DrainDelay > 0 && err == nil {
		time.Sleep(s.cfg.DrainDelay) // let load balancers see /readyz fail before we close
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if serr := s.server.ShutdownWithContext(shutdownCtx); serr != nil {
		s.deps.Logger.Warn("ingest server shutdown", "err", serr)
	}
	// kafka-go's Close waits for every pending batch, which a stalled broker holds for up to
	// MaxAttempts × WriteTimeout. Nothing still pending was acknowledged to a client (their
	// requests got 503 or were cut off), so stop waiting once the shutdown budget is spent.
	closed := make(chan error, 1)
	go func() { closed <- s.producer.Close() }()
	select {
	case cerr := <-closed:
		if cerr != nil {
			s.deps.Logger.Warn("closing the Kafka writer", "err", cerr)
		}
	case <-shutdownCtx.Done():
		s.deps.Logger.Warn("the Kafka writer did not flush within the shutdown timeout; its unacknowledged events are dropped")
	}
	stop()
	s.deps.Logger.Info("ingestor stopped")
	if gerr := g.Wait(); err == nil {
		err = gerr
	}
	return err
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
}
