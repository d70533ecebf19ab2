// Package embedded gives the all-in-one (`pulseboard run`) its Redis: the configured or
// local server, else an embedded in-memory Redis-protocol server (miniredis). It lives
// apart from pkg/redisx so that the standalone services, which always connect to a real
// Redis (redisx.Connect), never link miniredis (cmd/pulseboard/exposure_test.go checks
// with `go list -deps`): import it only from cmd/pulseboard and from tests.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/netx"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// OpenOrStart connects to redisURL. With redisURL empty (the all-in-one with REDIS_URL
// unset) it tries redisx.DefaultLocalURL and, if nothing answers there, starts an
// embedded server. An explicitly configured URL that does not answer is an error, never a
// silent fallback. The returned close function closes the client and any embedded server.
func OpenOrStart(ctx context.Context, redisURL string, logger *slog.Logger) (*redis.Client, func(), error) {
	c, _, closeFn, err := openOrStart(ctx, redisURL, redisx.DefaultLocalURL, logger)
	return c, closeFn, err
}

// OpenOrStartServer is OpenOrStart that also returns the embedded server it started (nil
// when it connected to a Redis of its own), whose address the all-in-one probes.
func OpenOrStartServer(ctx context.Context, redisURL string, logger *slog.Logger) (*redis.Client, *Server, func(), error) {
	return openOrStart(ctx, redisURL, redisx.DefaultLocalURL, logger)
}

func openOrStart(ctx context.Context, redisURL, defaultURL string, logger *slog.Logger) (*redis.Client, *Server, func(), error) {
	explicit := redisURL != ""
	if !explicit {
		redisURL = defaultURL
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parsing REDIS_URL: %w", err)
	}
	client := redis.NewClient(opts)
	pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = client.Ping(pingCtx).Err()
	cancel()
	if err == nil {
		return client, nil, func() { _ = client.Close() }, nil
	}
	_ = client.Close()
	if explicit {
		return nil, nil, nil, fmt.Errorf("connecting to Redis at %s: %w", opts.Addr, err)
	}
	srv, merr := Start(logger)
	if merr != nil {
		return nil, nil, nil, fmt.Errorf("no Redis at %s (%v) and the embedded server failed: %w", opts.Addr, err, merr)
	}
	logger.Warn("no Redis at the default address; using an embedded in-memory Redis (development only)",
		"tried", opts.Addr, "embedded", srv.Addr())
	client = redis.NewClient(&redis.Options{Addr: srv.Addr()})
	return client, srv, func() { _ = client.Close(); srv.Close() }, nil
}

// Server is an embedded Redis-protocol server (miniredis) on 127.0.0.1.
//
// miniredis's own accept loop returns on its first error and never listens again (out of
// file descriptors under a connection flood, Redis would be gone for good), and it takes
// no listener. So the server here is miniredis without a listener (its Dial starts one
// that serves connections handed to it) and the accept loop is this package's, over a
// netx.RetryListener that retries every error until Close.
type Server struct {
	mr   *miniredis.Miniredis
	ln   *netx.RetryListener
	done chan struct{}
	once sync.Once
}

// Start starts an embedded server on a free port of 127.0.0.1.
func Start(logger *slog.Logger) (*Server, error) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mr := miniredis.NewMiniRedis()
	// Dial starts miniredis without a listener; the pipe is not needed.
	c, err := mr.Dial()
	if err != nil {
		_ = inner.Close()
		return nil, err
	}
	_ = c.Close()
	ln := netx.NewRetryListener(inner)
	ln.OnError = func(err error, backoff time.Duration) {
		if backoff == 5*time.Millisecond && logger != nil {
			logger.Warn("embedded Redis: accepting a connection failed; retrying", "err", err)
		}
	}
	s := &Server{mr: mr, ln: ln, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *Server) serve() {
	defer close(s.done)
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mr.Server().ServeConn(conn)
	}
}

// Addr is host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Miniredis is the server underneath (tests inspect it).
func (s *Server) Miniredis() *miniredis.Miniredis { return s.mr }

// Close stops accepting, closes every connection and waits for them.
func (s *Server) Close() {
	s.once.Do(func() {
		_ = s.ln.Close()
		<-s.done
		s.mr.Close()
	})
}
