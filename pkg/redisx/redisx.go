// Package redisx holds PulseBoard's Redis conventions (channel and key names) and opens
// clients. The all-in-one's fallback to an embedded Redis-protocol server is in
// pkg/redisx/embedded, which the standalone services do not link.
package redisx

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// DefaultLocalURL is what the services connect to when REDIS_URL is unset (the
// all-in-one tries it, then falls back to an embedded server: pkg/redisx/embedded).
const DefaultLocalURL = "redis://localhost:6379"

// EventsChannel is where the consumer publishes a project's newly stored events.
func EventsChannel(projectID uuid.UUID) string { return "project:" + projectID.String() + ":events" }

// KeyInvalidationChannel carries API key hashes (hex) whose cached resolution every
// ingestor must drop at once (rotation, deletion).
const KeyInvalidationChannel = "pulseboard:apikeys:invalidate"

// APIKeyCacheKey is the Redis key caching the resolution of an API key hash.
func APIKeyCacheKey(h apikey.Hash) string { return "pulseboard:apikey:" + h.String() }

// Connect returns a client for redisURL (explicit, no fallback) without requiring Redis
// to answer: if it does not answer within 2 s, that is logged with meanwhile (what the
// service does without it) and the client is returned anyway; go-redis reconnects on its
// own. It is for services that keep working while Redis is down (the ingestor resolves
// API keys from PostgreSQL, the consumer still stores events), which must then also be
// able to start while it is down: refusing would turn a Redis outage into an outage of
// theirs as soon as one of them restarts (docs/reliability.md F14).
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
