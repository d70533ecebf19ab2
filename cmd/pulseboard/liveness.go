package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	kafkaembedded "github.com/pulseboard/pulseboard/pkg/kafkax/embedded"
)

// embeddedKafkaConfig bounds the embedded broker (`pulseboard run` without KAFKA_BROKERS,
// and `pulseboard broker`); see kafkaembedded.Retention.
type embeddedKafkaConfig struct {
	// RetentionAge is how long records every consumer group has stored stay readable
	// (kcat, a tail) before the embedded broker deletes them.
	RetentionAge time.Duration `env:"KAFKA_EMBEDDED_RETENTION_AGE" envDefault:"1m"`
	// RetentionBytes: past this many retained bytes, stored records are deleted at once,
	// whatever their age.
	RetentionBytes int64 `env:"KAFKA_EMBEDDED_RETENTION_BYTES" envDefault:"33554432"`
	// MaxBytes is the most the embedded broker retains: past it (the consumer is down or
	// far behind) it refuses produce requests, and ingest answers 503.
	MaxBytes int64 `env:"KAFKA_EMBEDDED_MAX_BYTES" envDefault:"268435456"`
}

func (c embeddedKafkaConfig) validate() error {
	switch {
	case c.RetentionAge < 0:
		return fmt.Errorf("configuration: KAFKA_EMBEDDED_RETENTION_AGE must not be negative, got %s", c.RetentionAge)
	case c.MaxBytes <= 0:
		return fmt.Errorf("configuration: KAFKA_EMBEDDED_MAX_BYTES must be positive, got %d", c.MaxBytes)
	case c.RetentionBytes < 0 || c.RetentionBytes >= c.MaxBytes:
		return fmt.Errorf("configuration: KAFKA_EMBEDDED_RETENTION_BYTES must be at least 0 and below KAFKA_EMBEDDED_MAX_BYTES (%d), got %d",
			c.MaxBytes, c.RetentionBytes)
	}
	return nil
}

func (c embeddedKafkaConfig) retention(groups []string, topic string) kafkaembedded.Retention {
	return kafkaembedded.Retention{Groups: groups, Topics: []string{topic}, Age: c.RetentionAge, Bytes: c.RetentionBytes, MaxBytes: c.MaxBytes}
}

// livenessConfig configures the all-in-one's /healthz probes of its embedded components.
type livenessConfig struct {
	// LivenessInterval is how often the all-in-one probes each embedded component (broker,
	// Redis, PostgreSQL) with a protocol round trip on a fresh connection.
	LivenessInterval time.Duration `env:"PULSEBOARD_LIVENESS_INTERVAL" envDefault:"5s"`
	// LivenessFailures is how many consecutive failed probes of one component turn
	// /healthz to 503.
	LivenessFailures int `env:"PULSEBOARD_LIVENESS_FAILURES" envDefault:"3"`
}

func (c livenessConfig) validate() error {
	if c.LivenessInterval <= 0 {
		return fmt.Errorf("configuration: PULSEBOARD_LIVENESS_INTERVAL must be positive, got %s", c.LivenessInterval)
	}
	if c.LivenessFailures < 1 {
		return fmt.Errorf("configuration: PULSEBOARD_LIVENESS_FAILURES must be at least 1, got %d", c.LivenessFailures)
	}
	return nil
}

// probeTimeout bounds one probe (dial and round trip).
const probeTimeout = 2 * time.Second

type probeState struct {
	check    func(context.Context) error
	failures int   // consecutive
	last     error // the last failure
}

// liveness probes the embedded components and fails /healthz once one has failed
// `failures` probes in a row: an embedded component that stopped serving does not come
// back without a restart, and a restart is what a failing liveness probe gets. One failed
// probe (a blip) changes nothing; under a descriptor flood the probe's own dial fails,
// which is right: the process cannot serve then either.
type liveness struct {
	failures int
	logger   *slog.Logger
	mu       sync.Mutex
	comps    map[string]*probeState
}

func newLiveness(failures int, logger *slog.Logger) *liveness {
	return &liveness{failures: failures, logger: logger, comps: map[string]*probeState{}}
}

// add registers a component's probe; call before run.
func (l *liveness) add(name string, check func(context.Context) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.comps[name] = &probeState{check: check}
}

// run probes every interval until ctx ends.
func (l *liveness) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.probeAll(ctx)
		}
	}
}

func (l *liveness) probeAll(ctx context.Context) {
	l.mu.Lock()
	names := make([]string, 0, len(l.comps))
	for n := range l.comps {
		names = append(names, n)
	}
	l.mu.Unlock()
	sort.Strings(names)
	for _, n := range names {
		l.mu.Lock()
		st := l.comps[n]
		l.mu.Unlock()
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := st.check(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		switch {
		case err == nil:
			if st.failures >= l.failures {
				l.logger.Info("liveness: the embedded component answers again", "component", n)
			}
			st.failures, st.last = 0, nil
		default:
			st.failures++
			st.last = err
			if st.failures == l.failures {
				l.logger.Error("liveness: an embedded component stopped answering; /healthz fails", "component", n,
					"consecutive_failures", st.failures, "err", err)
			} else if st.failures < l.failures {
				l.logger.Warn("liveness: an embedded component's probe failed", "component", n,
					"consecutive_failures", st.failures, "err", err)
			}
		}
		l.mu.Unlock()
	}
}

// failing describes the components that failed their last `failures` probes, or "".
func (l *liveness) failing() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for n, st := range l.comps {
		if st.failures >= l.failures {
			out = append(out, fmt.Sprintf("%s: %d consecutive probes failed: %v", n, st.failures, st.last))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// wrap answers GET /healthz with 503 while a component is failing, and passes everything
// else (and /healthz while all answer) to next.
func (l *liveness) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			if reason := l.failing(); reason != "" {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.Header().Set("Cache-Control", "no-store")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = fmt.Fprintf(w, `{"status":"unavailable","reason":%q}`, reason)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// probeKafka asks the broker for its metadata on a fresh connection.
func probeKafka(addrs []string) func(context.Context) error {
	return func(ctx context.Context) error { return kafkax.Ping(ctx, addrs) }
}

// probeRedis sends PING on a fresh connection and expects +PONG.
func probeRedis(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "+PONG\r\n" {
			return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
		}
		return nil
	}
}

// probePostgres runs SELECT 1 on a fresh connection.
func probePostgres(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close(context.WithoutCancel(ctx)) }()
		var one int
		return c.QueryRow(ctx, "SELECT 1").Scan(&one)
	}
}
