// Package redistest connects tests to a real Redis: PULSEBOARD_TEST_REDIS_URL when set,
// else a testcontainers Redis 7 when Docker is available, else redis://127.0.0.1:6379.
// Tests share the server; keys and channels carry random ids, so they do not collide.
package redistest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"

	"github.com/pulseboard/pulseboard/pkg/testenv"
)

var (
	once   sync.Once
	rawURL string
	urlErr error
)

// URL returns the Redis URL tests use.
func URL(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if u := os.Getenv("PULSEBOARD_TEST_REDIS_URL"); u != "" {
			rawURL = u
			return
		}
		if os.Getenv("PULSEBOARD_TEST_NO_DOCKER") == "" && testenv.DockerAvailable() {
			c, err := tcredis.Run(context.Background(), "redis:7-alpine")
			if err != nil {
				urlErr = fmt.Errorf("starting a Redis container: %w", err)
				return
			}
			rawURL, urlErr = c.ConnectionString(context.Background())
			return
		}
		rawURL = "redis://127.0.0.1:6379"
	})
	if urlErr != nil {
		t.Fatalf("redistest: %v", urlErr)
	}
	return rawURL
}

// Client returns a connected client, closed at the end of the test.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(URL(t))
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("redistest: Redis at %s does not answer: %v (start it or set PULSEBOARD_TEST_REDIS_URL)", opts.Addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
