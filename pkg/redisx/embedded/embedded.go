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
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// OpenOrStart connects to redisURL. With redisURL empty (the all-in-one with REDIS_URL
// unset) it tries redisx.DefaultLocalURL and, if nothing answers there, starts an
// embedded server. An explicitly configured URL that does not answer is an error, never a
// silent fallback. The returned close function closes the client and any embedded server.
func OpenOrStart(ctx context.Context, redisURL string, logger *slog.Logger) (*redis.Client, func(), error) {
	return openOrStart(ctx, redisURL, redisx.DefaultLocalURL, logger)
}

func openOrStart(ctx context.Context, redisURL, defaultURL string, logger *slog.Logger) (*redis.Client, func(), error) {
	explicit := redisURL != ""
	if !explicit {
		redisURL = defaultURL
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing REDIS_URL: %w", err)
	}
	client := redis.NewClient(opts)
	pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = client.Ping(pingCtx).Err()
	cancel()
	if err == nil {
		return client, func() { _ = client.Close() }, nil
	}
	_ = client.Close()
	if explicit {
		return nil, nil, fmt.Errorf("connecting to Redis at %s: %w", opts.Addr, err)
	}
	mr, merr := miniredis.Run() // listens on 127.0.0.1 only
	if merr != nil {
		return nil, nil, fmt.Errorf("no Redis at %s (%v) and the embedded server failed: %w", opts.Addr, err, merr)
	}
	logger.Warn("no Redis at the default address; using an embedded in-memory Redis (development only)",
		"tried", opts.Addr, "embedded", mr.Addr())
	client = redis.NewClient(&redis.Options{Addr: mr.Addr()})
	return client, func() { _ = client.Close(); mr.Close() }, nil
}
