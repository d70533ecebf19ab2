package realkafka

import (
	"context"
	"sync"
	"testing"
	"time"
)

// StartT starts a cluster for one test and closes it when the test ends; the brokers'
// log tails are printed when the test failed.
func StartT(t testing.TB, o Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Kafka %s logs:\n%s", c.Version, c.logTails(40))
		}
		c.Close()
	})
	return c
}

var (
	sharedMu sync.Mutex
	shared   = map[string]*sharedCluster{}
)

type sharedCluster struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns a single-node cluster of the version that every test of this test
// binary shares (tests keep apart by topic and group names); CloseShared, from TestMain,
// stops them. Starting a JVM broker takes seconds, so tests share it.
func Shared(t testing.TB, version string) *Cluster {
	t.Helper()
	sharedMu.Lock()
	s := shared[version]
	if s == nil {
		s = &sharedCluster{}
		shared[version] = s
	}
	sharedMu.Unlock()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		s.c, s.err = Start(ctx, Options{Version: version, Nodes: 1})
	})
	if s.err != nil {
		t.Fatalf("%v", s.err)
	}
	return s.c
}

// CloseShared stops the clusters Shared started.
func CloseShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	for v, s := range shared {
		if s.c != nil {
			s.c.Close()
		}
		delete(shared, v)
	}
}
