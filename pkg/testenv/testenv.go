// Package testenv decides where tests find their real services: an explicit URL from the
// environment, else a testcontainers container when a Docker engine answers, else the
// local default. It never skips: a service that cannot be reached fails the test, so CI
// cannot go green by testing nothing.
package testenv

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"go.uber.org/goleak"
)

var (
	dockerOnce sync.Once
	dockerOK   bool
)

// DockerAvailable reports whether a Docker engine answers (checked once per process).
// PULSEBOARD_TEST_NO_DOCKER=1 forces local services.
func DockerAvailable() bool {
	dockerOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		p, err := testcontainers.ProviderDocker.GetProvider()
		if err != nil {
			return
		}
		defer p.Close()
		dockerOK = p.Health(ctx) == nil
	})
	return dockerOK
}

// GoleakOptions are the goroutines a test binary may legitimately leave running at exit:
// with Docker, testcontainers' reaper connection and the Docker client's keep-alive
// connections; in the real-Kafka tier, the shared broker's process watcher and the
// thread that spawned it (realkafka.Shared lives as long as the test binary).
func GoleakOptions() []goleak.Option {
	opts := []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/pulseboard/pulseboard/pkg/testenv/realkafka.spawn.func1.1"),
		goleak.IgnoreAnyFunction("github.com/pulseboard/pulseboard/pkg/testenv/realkafka.(*Node).Start.func1"),
	}
	if os.Getenv("PULSEBOARD_TEST_NO_DOCKER") == "" && DockerAvailable() {
		opts = append(opts,
			goleak.IgnoreAnyFunction("github.com/testcontainers/testcontainers-go.(*Reaper).connect.func1"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		)
	}
	return opts
}
