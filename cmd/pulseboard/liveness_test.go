package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	kafkaembedded "github.com/pulseboard/pulseboard/pkg/kafkax/embedded"
	"github.com/pulseboard/pulseboard/pkg/obs"
	redisembedded "github.com/pulseboard/pulseboard/pkg/redisx/embedded"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

func healthz(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url + "/healthz")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// /healthz stays 200 through fewer than PULSEBOARD_LIVENESS_FAILURES consecutive failed
// probes (a blip), turns 503 naming the component at that many, and 200 again once the
// component answers; /readyz and /metrics are the admin handler's as before.
func TestLivenessFailsOnlyAfterConsecutiveFailures(t *testing.T) {
	t.Parallel()
	l := newLiveness(3, slog.New(slog.DiscardHandler))
	var down atomic.Bool
	l.add("kafka", func(context.Context) error {
		if down.Load() {
			return errors.New("dial tcp 127.0.0.1:9092: connect: connection refused")
		}
		return nil
	})
	l.add("redis", func(context.Context) error { return nil })
	srv := httptest.NewServer(l.wrap(obs.AdminHandler(obs.NewRegistry(), obs.NewReadiness(), obs.AdminOptions{})))
	defer srv.Close()
	ctx := context.Background()

	l.probeAll(ctx)
	code, _ := healthz(t, srv.URL)
	require.Equal(t, http.StatusOK, code)

	down.Store(true)
	l.probeAll(ctx) // a blip
	code, _ = healthz(t, srv.URL)
	require.Equal(t, http.StatusOK, code, "one failed probe must not fail liveness")
	down.Store(false)
	l.probeAll(ctx) // recovered: the count starts over
	down.Store(true)
	l.probeAll(ctx)
	l.probeAll(ctx)
	code, _ = healthz(t, srv.URL)
	require.Equal(t, http.StatusOK, code, "two consecutive failures (after a success) are below the threshold")
	l.probeAll(ctx)
	code, body := healthz(t, srv.URL)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, `"status":"unavailable"`)
	require.Contains(t, body, "kafka: 3 consecutive probes failed")
	require.Contains(t, body, "connection refused")
	require.NotContains(t, body, "redis")

	// The rest of the admin port is untouched.
	resp, err := http.Get(srv.URL + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	down.Store(false)
	l.probeAll(ctx)
	code, _ = healthz(t, srv.URL)
	require.Equal(t, http.StatusOK, code)
}

// run probes on its interval until its context ends.
func TestLivenessRunProbesPeriodically(t *testing.T) {
	t.Parallel()
	l := newLiveness(2, slog.New(slog.DiscardHandler))
	var n atomic.Int64
	l.add("kafka", func(context.Context) error { n.Add(1); return errors.New("down") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.run(ctx, 20*time.Millisecond); close(done) }()
	require.Eventually(t, func() bool { return l.failing() != "" }, 5*time.Second, 10*time.Millisecond)
	cancel()
	<-done
	require.GreaterOrEqual(t, n.Load(), int64(2))
}

// The probes make a real protocol round trip on a fresh connection: they pass against the
// embedded broker, the embedded Redis and PostgreSQL, and fail once those stop, and
// against a listener that accepts but never answers (within the probe timeout).
func TestLivenessProbesAreRealRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	probe := func(check func(context.Context) error) error {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		return check(pctx)
	}

	b, err := kafkaembedded.Start(kafkaembedded.Options{Topics: []string{"live.events"}, Partitions: 1})
	require.NoError(t, err)
	kafkaProbe := probeKafka(b.Addrs())
	require.NoError(t, probe(kafkaProbe))
	b.Close()
	require.Error(t, probe(kafkaProbe))

	r, err := redisembedded.Start(nil)
	require.NoError(t, err)
	redisProbe := probeRedis(r.Addr())
	require.NoError(t, probe(redisProbe))
	r.Close()
	require.Error(t, probe(redisProbe))

	dbURL, _ := pgtest.NewDB(t)
	require.NoError(t, probe(probePostgres(dbURL)))

	// Accepts, never answers: every probe gives up within its timeout.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	silent := ln.Addr().String()
	for name, check := range map[string]func(context.Context) error{
		"kafka":    probeKafka([]string{silent}),
		"redis":    probeRedis(silent),
		"postgres": probePostgres("postgres://postgres@" + silent + "/x?sslmode=disable"),
	} {
		began := time.Now()
		require.Error(t, probe(check), name)
		require.Less(t, time.Since(began), probeTimeout+2*time.Second, name)
	}
}

// Bad settings are refused at start with the variable's name.
func TestEmbeddedSettingsAreValidated(t *testing.T) {
	t.Parallel()
	ok := embeddedKafkaConfig{RetentionAge: time.Minute, RetentionBytes: 1 << 20, MaxBytes: 2 << 20}
	require.NoError(t, ok.validate())
	for want, c := range map[string]embeddedKafkaConfig{
		"KAFKA_EMBEDDED_RETENTION_AGE":   {RetentionAge: -time.Second, RetentionBytes: 1, MaxBytes: 2},
		"KAFKA_EMBEDDED_MAX_BYTES":       {MaxBytes: 0},
		"KAFKA_EMBEDDED_RETENTION_BYTES": {RetentionBytes: 2, MaxBytes: 2},
	} {
		err := c.validate()
		require.Error(t, err, want)
		require.Contains(t, err.Error(), want)
	}
	require.ErrorContains(t, livenessConfig{LivenessInterval: 0, LivenessFailures: 3}.validate(), "PULSEBOARD_LIVENESS_INTERVAL")
	require.ErrorContains(t, livenessConfig{LivenessInterval: time.Second, LivenessFailures: 0}.validate(), "PULSEBOARD_LIVENESS_FAILURES")
	require.NoError(t, livenessConfig{LivenessInterval: time.Second, LivenessFailures: 1}.validate())
}
