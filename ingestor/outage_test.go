package ingestor_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/kafkax/embedded"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

// brokerGate wraps the embedded broker's listener so a test can make the broker
// unreachable while it keeps its address (clients learn it from metadata, so a proxy in
// front of the bootstrap address alone would not do):
//   - down: every connection is closed and new ones are closed as soon as they are
//     accepted, which clients see as a reset during their handshake (a dead broker);
//   - hang: connections stay open but no byte moves in either direction, and new ones
//     are accepted and stalled alike (a network partition, or a broker stuck on disk);
//   - up: back to normal. Bytes held during a hang are delivered, as TCP would after
//     a partition heals.
type brokerGate struct {
	net.Listener
	mu    sync.Mutex
	state gateState
	wake  chan struct{} // closed when a hang ends
	conns map[*gatedConn]struct{}
}

type gateState int

const (
	gateUp gateState = iota
	gateDown
	gateHang
)

// newGatedCluster starts an embedded broker behind a gate.
func newGatedCluster(t *testing.T) (*kafkatest.Cluster, *brokerGate) {
	t.Helper()
	g := &brokerGate{conns: map[*gatedConn]struct{}{}, wake: make(chan struct{})}
	kc := &kafkatest.Cluster{Topic: "pulseboard.events", DLQTopic: "pulseboard.events.dlq"}
	e, err := embedded.Start(embedded.Options{
		Topics: []string{kc.Topic, kc.DLQTopic}, Partitions: testPartitions,
		WrapListener: func(ln net.Listener) net.Listener { g.Listener = ln; return g },
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		g.set(gateUp) // release stalled connections so the broker can close them
		e.Close()
	})
	kc.Brokers, kc.Embedded = e.Addrs(), e
	return kc, g
}

func (g *brokerGate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		if g.state == gateDown {
			g.mu.Unlock()
			_ = c.Close()
			continue
		}
		gc := &gatedConn{Conn: c, g: g, closed: make(chan struct{})}
		g.conns[gc] = struct{}{}
		g.mu.Unlock()
		return gc, nil
	}
}

func (g *brokerGate) set(s gateState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == s {
		return
	}
	if g.state == gateHang {
		close(g.wake)
	}
	if s == gateHang {
		g.wake = make(chan struct{})
	}
	g.state = s
	if s == gateDown {
		for c := range g.conns {
			c.closeOnce()
		}
	}
}

// wait blocks while the gate hangs.
func (g *brokerGate) wait(c *gatedConn) error {
	for {
		g.mu.Lock()
		state, wake := g.state, g.wake
		g.mu.Unlock()
		if state != gateHang {
			return nil
		}
		select {
		case <-wake:
		case <-c.closed:
			return net.ErrClosed
		}
	}
}

type gatedConn struct {
	net.Conn
	g      *brokerGate
	once   sync.Once
	closed chan struct{}
}

func (c *gatedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if werr := c.g.wait(c); werr != nil {
		return 0, werr
	}
	return n, err
}

func (c *gatedConn) Write(p []byte) (int, error) {
	if err := c.g.wait(c); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *gatedConn) closeOnce() {
	c.once.Do(func() {
		close(c.closed)
		_ = c.Conn.Close()
	})
}

func (c *gatedConn) Close() error {
	c.closeOnce()
	c.g.mu.Lock()
	delete(c.g.conns, c)
	c.g.mu.Unlock()
	return nil
}

// inflightSampler records the highest pulseboard_ingest_inflight_bytes seen.
type inflightSampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	high float64
}

func (s *inflightSampler) max() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.high
}

func sampleInflight(t *testing.T, b *testBundle) *inflightSampler {
	s := &inflightSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			families, err := b.reg.Gather()
			if err == nil {
				for _, f := range families {
					if f.GetName() == "pulseboard_ingest_inflight_bytes" {
						s.mu.Lock()
						s.high = max(s.high, f.GetMetric()[0].GetGauge().GetValue())
						s.mu.Unlock()
					}
				}
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.finish)
	return s
}

func (s *inflightSampler) finish() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// TestBrokerUnreachable (F07, promises 1–3): while the broker is down or hangs, ingest
// answers 503 with Retry-After within the produce deadline, never 2xx and never a hang;
// in-flight bytes stay within the budget; once the broker is back, ingest succeeds again
// without a restart.
func TestBrokerUnreachable(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name  string
		state gateState
	}{{"down", gateDown}, {"hang", gateHang}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			const deadline = time.Second
			kc, gate := newGatedCluster(t)
			b := setup(t, withCluster(kc), withConfig(func(c *ingestor.Config) { c.ProduceTimeout = deadline }))
			sampler := sampleInflight(t, b)

			res := b.ingest(t, validEvent(b.project.APIKey))
			require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)

			gate.set(mode.state)
			var wg sync.WaitGroup
			results := make([]response, 8)
			errs := make([]error, len(results))
			single := mustJSON(t, validEvent(b.project.APIKey))
			evs, _ := batchEvents(50)
			batch := mustJSON(t, evs)
			for i := range results {
				wg.Go(func() {
					if i%2 == 0 {
						results[i], errs[i] = b.try(http.MethodPost, "/ingest", single, nil)
						return
					}
					results[i], errs[i] = b.try(http.MethodPost, "/ingest/batch", batch, hdr{"X-API-Key": b.project.APIKey})
				})
			}
			wg.Wait()
			for i, r := range results {
				require.NoError(t, errs[i])
				requireJSONError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
				retry, err := strconv.Atoi(r.header.Get("Retry-After"))
				require.NoError(t, err, "Retry-After %q", r.header.Get("Retry-After"))
				require.Positive(t, retry)
				require.Less(t, r.took, 3*deadline, "request %d answered after %s", i, r.took)
			}
			require.LessOrEqual(t, sampler.max(), float64(b.cfg.MaxInflightBytes))
			require.Positive(t, metricValue(t, b.reg, "pulseboard_ingest_produce_errors_total"))

			// Back up: the same service accepts again (kafka-go reconnects and refreshes
			// metadata on its own).
			gate.set(gateUp)
			var accepted response
			require.Eventually(t, func() bool {
				r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(b.project.APIKey)), nil)
				accepted = r
				return err == nil && r.status == http.StatusAccepted
			}, 30*time.Second, 100*time.Millisecond)
			var ev wireEvent
			require.NoError(t, json.Unmarshal(accepted.env.Data, &ev))
			// Events answered 503 may still be written, even twice, once the broker is
			// back (K4/K5; the consumer deduplicates by id).
			byID := messagesByID(t, b.readTopic(t), allowDuplicates)
			require.Contains(t, byID, ev.ID)
			sampler.finish()
			require.LessOrEqual(t, sampler.max(), float64(b.cfg.MaxInflightBytes))
		})
	}
}

// TestBrokerHangSheds (promise 3, K3): kafka-go keeps bytes after the caller gave up, so
// the ingestor bounds them; past the budget requests are shed at once with 503 and
// readiness turns false, instead of queueing without bound.
func TestBrokerHangSheds(t *testing.T) {
	t.Parallel()
	const budget = 16 << 10
	kc, gate := newGatedCluster(t)
	b := setup(t, withCluster(kc), withConfig(func(c *ingestor.Config) {
		c.ProduceTimeout = 3 * time.Second
		c.MaxBodyBytes, c.MaxDecompressedBytes, c.MaxInflightBytes = budget, budget, budget
	}))
	sampler := sampleInflight(t, b)

	// Events of a fixed size: ~5 KiB each, so three fit the budget and a fourth does not.
	ev := validEvent(b.project.APIKey)
	ev["payload"] = map[string]any{"pad": strings.Repeat("x", 5000)}
	body := mustJSON(t, ev)
	res := b.post(t, "/ingest", body, nil)
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	size := len(b.project.ID.String()) + len(res.env.Data) // Kafka key + value
	require.Greater(t, 4*size, budget)
	require.LessOrEqual(t, 3*size, budget)
	require.NoError(t, readiness(t, b))

	gate.set(gateHang)
	var wg sync.WaitGroup
	hung := make([]response, 3)
	for i := range hung {
		wg.Go(func() { hung[i], _ = b.try(http.MethodPost, "/ingest", body, nil) })
	}
	require.Eventually(t, func() bool {
		return metricValue(t, b.reg, "pulseboard_ingest_inflight_bytes") == float64(3*size)
	}, 5*time.Second, 5*time.Millisecond, "three requests wait for the broker")

	// The fourth is shed at once, and readiness says so.
	shed := b.post(t, "/ingest", body, nil)
	requireJSONError(t, shed, http.StatusServiceUnavailable, "UNAVAILABLE")
	require.Contains(t, shed.env.Message, "overloaded")
	require.NotEmpty(t, shed.header.Get("Retry-After"))
	require.Less(t, shed.took, time.Second, "shed without waiting for the broker")
	readyErr := readiness(t, b)
	require.ErrorContains(t, readyErr, "ingest-not-shedding")
	require.ErrorContains(t, readyErr, "kafka")
	require.Equal(t, 1.0, metricValue(t, b.reg, "pulseboard_ingest_produce_errors_total", "reason", "overloaded"))

	wg.Wait()
	for _, r := range hung {
		requireJSONError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
		require.Less(t, r.took, 3*b.cfg.ProduceTimeout)
	}
	// kafka-go still holds the timed-out messages, so the budget is still taken: a
	// request now is shed too rather than piling more bytes on.
	shed = b.post(t, "/ingest", body, nil)
	requireJSONError(t, shed, http.StatusServiceUnavailable, "UNAVAILABLE")

	gate.set(gateUp)
	require.Eventually(t, func() bool {
		r, err := b.try(http.MethodPost, "/ingest", body, nil)
		return err == nil && r.status == http.StatusAccepted
	}, 30*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return readiness(t, b) == nil }, 30*time.Second, 50*time.Millisecond)
	sampler.finish()
	require.LessOrEqual(t, sampler.max(), float64(budget))
	require.Positive(t, sampler.max())
}

// readiness runs the readiness checks as /readyz does (2 s budget) and fails the test if
// they do not return promptly: a probe that hangs is as bad as a wrong answer.
func readiness(t *testing.T, b *testBundle) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.ready.Check(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("readiness checks did not return within 5 s")
		return nil
	}
}

// TestGracefulShutdown (promise 6): cancelling Run while requests wait for Kafka lets every
// one of them finish; every 2xx is on the topic; new requests get 503 while draining; Run
// returns within the shutdown timeout.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	const drainDelay = time.Second
	kc, gate := newGatedCluster(t)
	b := setup(t, withCluster(kc), withConfig(func(c *ingestor.Config) {
		c.ProduceTimeout = 20 * time.Second
		c.ShutdownTimeout = 15 * time.Second
		c.DrainDelay = drainDelay
	}))
	warm := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, warm.status, "body: %s", warm.body)
	size := len(b.project.ID.String()) + len(warm.env.Data)

	// Hold the broker so that all 50 requests are provably in flight when Run is cancelled.
	gate.set(gateHang)
	const n = 50
	results := make([]response, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	body := mustJSON(t, validEvent(b.project.APIKey))
	for i := range n {
		wg.Go(func() { results[i], errs[i] = b.try(http.MethodPost, "/ingest", body, nil) })
	}
	require.Eventually(t, func() bool {
		return metricValue(t, b.reg, "pulseboard_ingest_inflight_bytes") == float64(n*size)
	}, 10*time.Second, 5*time.Millisecond, "all %d requests wait for the broker", n)

	cancelled := time.Now()
	b.cancel()
	// Run marks readiness draining right after its handler: a request sent before that
	// would be taken in and wait for the stalled broker like the 50.
	require.Eventually(t, b.ready.Draining, 5*time.Second, time.Millisecond, "Run starts draining")
	// Draining: new requests are refused with 503 (the listener is still open during the
	// drain delay).
	drained, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(b.project.APIKey)), hdr{"Connection": "close"})
	require.NoError(t, err)
	requireJSONError(t, drained, http.StatusServiceUnavailable, "UNAVAILABLE")
	require.NotEmpty(t, drained.header.Get("Retry-After"))
	require.Less(t, time.Since(cancelled), drainDelay, "the 503 came during the drain delay")

	// Keep the broker stalled until the server itself is shutting down (its listener is
	// closed), so the in-flight requests see the shutdown while they wait for Kafka.
	addr := strings.TrimPrefix(b.url, "http://")
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		_ = c.Close()
		return false
	}, drainDelay+5*time.Second, 10*time.Millisecond, "the listener closes after the drain delay")
	gate.set(gateUp)

	var runErr error
	select {
	case runErr = <-b.runDone:
		b.runDone <- runErr // for the cleanup
	case <-time.After(drainDelay + b.cfg.ShutdownTimeout):
		t.Fatalf("Run did not return within the drain delay + shutdown timeout")
	}
	require.NoError(t, runErr)
	// Run returned only after every in-flight request had been handled.
	require.Equal(t, float64(n+1), metricValue(t, b.reg, "pulseboard_ingest_requests_total", "route", "ingest", "code", "202"))
	wg.Wait()

	ids := map[uuid.UUID]bool{}
	for i, r := range results {
		require.NoError(t, errs[i])
		require.Equal(t, http.StatusAccepted, r.status, "in-flight request %d: %s", i, r.body)
		var ev wireEvent
		require.NoError(t, json.Unmarshal(r.env.Data, &ev))
		ids[ev.ID] = true
	}
	byID := messagesByID(t, b.readTopic(t), allowDuplicates)
	for id := range ids {
		require.Contains(t, byID, id, "acknowledged event %s is on the topic", id)
	}
	require.Len(t, byID, n+1)

	// After Run returned nothing is served any more.
	_, err = b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(b.project.APIKey)), nil)
	require.Error(t, err)
	var opErr *net.OpError
	require.True(t, errors.As(err, &opErr), "connection refused, got %v", err)
}

// TestShutdownBrokerHung: a broker that never answers cannot hold the process hostage:
// Run returns within the shutdown timeout (plus a margin), and nothing was acknowledged.
func TestShutdownBrokerHung(t *testing.T) {
	t.Parallel()
	kc, gate := newGatedCluster(t)
	b := setup(t, withCluster(kc), withConfig(func(c *ingestor.Config) {
		c.ProduceTimeout = 3 * time.Second
		c.ShutdownTimeout = time.Second
	}))
	warm := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, warm.status, "body: %s", warm.body)

	gate.set(gateHang)
	var wg sync.WaitGroup
	results := make([]response, 5)
	body := mustJSON(t, validEvent(b.project.APIKey))
	for i := range results {
		wg.Go(func() { results[i], _ = b.try(http.MethodPost, "/ingest", body, nil) })
	}
	require.Eventually(t, func() bool {
		return metricValue(t, b.reg, "pulseboard_ingest_inflight_bytes") > 0
	}, 5*time.Second, 5*time.Millisecond)
	start := time.Now()
	b.cancel()
	select {
	case err := <-b.runDone:
		b.runDone <- err
		t.Logf("Run returned after %s", time.Since(start))
	case <-time.After(60 * time.Second):
		t.Fatalf("Run did not return")
	}
	took := time.Since(start)
	wg.Wait()
	for _, r := range results {
		require.NotEqual(t, http.StatusAccepted, r.status)
	}
	require.Less(t, took, 3*b.cfg.ShutdownTimeout)
}
