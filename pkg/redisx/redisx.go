// Package redisx holds PulseBoard's Redis conventions (channel and key names) and opens
// clients, falling back to an embedded Redis-protocol server in development only.
package redisx

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// DefaultLocalURL is tried when REDIS_URL is unset.
const DefaultLocalURL = "redis://localhost:6379"

// EventsChannel is where the consumer publishes a project's newly stored events.
func EventsChannel(projectID uuid.UUID) string { return "project:" + projectID.String() + ":events" }

// KeyInvalidationChannel carries API key hashes (hex) whose cached resolution every
// ingestor must drop at once (rotation, deletion).
const KeyInvalidationChannel = "pulseboard:apikeys:invalidate"

// APIKeyCacheKey is the Redis key caching the resolution of an API key hash.
func APIKeyCacheKey(h apikey.Hash) string { return "pulseboard:apikey:" + h.String() }

// Open connects to redisURL. With allowFallback (all-in-one mode and REDIS_URL unset) it
// tries DefaultLocalURL and, if nothing answers there, starts an embedded server. An
// explicitly configured URL that does not answer is an error, never a silent fallback.
// The returned close function closes the client and any embedded server.
func Open(ctx context.Context, redisURL string, allowFallback bool, logger *slog.Logger) (*redis.Client, func(), error) {
	explicit := redisURL != ""
	if !explicit {
		if !allowFallback {
			return nil, nil, fmt.Errorf("REDIS_URL is not set")
		}
		redisURL = DefaultLocalURL
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
	mr, merr := miniredis.Run()
	if merr != nil {
		return nil, nil, fmt.Errorf("no Redis at %s (%v) and the embedded server failed: %w", opts.Addr, err, merr)
	}
	logger.Warn("no Redis at the default address; using an embedded in-memory Redis (development only)",
		"tried", opts.Addr, "embedded", mr.Addr())
	client = redis.NewClient(&redis.Options{Addr: mr.Addr()})
	return client, func() { _ = client.Close(); mr.Close() }, nil
}

// Connect returns a client for redisURL (explicit, no fallback) without requiring Redis
// to answer: if it does not answer within 2 s, that is logged with meanwhile (what the
// service does without it) and the client is returned anyway; go-redis reconnects on its
// own. It is for services that keep working while Redis is down (the ingestor resolves
// API keys from PostgreSQL, the consumer still stores events), which must then also be
// able to start while it is down: refusing would turn a Redis outage into an outage of
// theirs as soon as one of them restarts (RELIABILITY.md F14).
func Connect(ctx context.Context, redisURL string, logger *slog.Logger, meanwhile string) (*redis.Client, error) {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("parsing REDIS_URL: %w", err)
	}
	rdb := redis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		logger.Warn("Redis does not answer; "+meanwhile, "addr", opts.Addr, "error", err)
	}
	return rdb, nil
}

// PublishKeyInvalidation deletes a key's cached resolution in Redis and tells every
// ingestor to drop it from its local cache (rotation, deletion). Ingestors that miss the
// message still drop the entry when its TTL (60 s) expires.
func PublishKeyInvalidation(ctx context.Context, rdb *redis.Client, h apikey.Hash) error {
	if err := rdb.Del(ctx, APIKeyCacheKey(h)).Err(); err != nil {
		return fmt.Errorf("deleting cached API key: %w", err)
	}
	if err := rdb.Publish(ctx, KeyInvalidationChannel, h.String()).Err(); err != nil {
		return fmt.Errorf("publishing API key invalidation: %w", err)
	}
	return nil
}
