// Package testenv decides where tests find their real services: an explicit URL from the
// environment, else a testcontainers container when a Docker engine answers, else the
// local default. It never skips: a service that cannot be reached fails the test, so CI
// cannot go green by testing nothing.
package testenv

import (
	"context"
	"sync"
	"time"

	"github.com/testcontainers/testcontainers-go"
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
