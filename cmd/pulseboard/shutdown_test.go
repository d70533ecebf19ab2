package main_test

// Acceptance 3 for the standalone services: SIGTERM to the ingestor, the consumer or the
// alerter, each a real process, under load: no acknowledged event is lost, no 5xx other
// than 503 (which SDKs retry), and the process exits 0 within its configured bound. The
// all-in-one is covered by TestAllInOneSIGTERMUnderLoadLosesNoAcknowledgedEvent.
//
// These tests are not parallel: each runs five processes and a load generator, and the
// machine they are meant for has two shared cores.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// stack is a standalone broker (`pulseboard broker`, its log outlives every service, as a
// real cluster's does), a database with the demo project, and the environment the
// standalone services share.
type stack struct {
	t       *testing.T
	env     []string
	brokers string
	kk      testKafka
	pool    *pgxpool.Pool
	apiKey  string
	project string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	dbURL, pool := pgtest.NewDB(t)
	kafkaPort := freePort(t)
	s := &stack{t: t, pool: pool, brokers: fmt.Sprintf("127.0.0.1:%d", kafkaPort)}
	s.env = append(os.Environ(),
		"DATABASE_URL="+dbURL, "REDIS_URL="+redistest.URL(t),
		"KAFKA_EMBEDDED_PORT="+strconv.Itoa(kafkaPort), "INGEST_RATE_LIMIT=0",
		"ADMIN_HOST=127.0.0.1",
	)
	s.kk = kafkaFor(t)
	if s.kk.real {
		s.brokers = s.kk.brokers
		s.env = append(s.env, s.kk.env()...)
	} else {
		broker := startProc(t, "broker", binary, s.env, "broker")
		require.Eventually(t, func() bool { return strings.Contains(broker.logs.String(), "broker listening") },
			30*time.Second, 20*time.Millisecond, "broker logs:\n%s", broker.logs.String())
	}
	seed := exec.Command(binary, "seed")
	seed.Env = s.env
	out, err := seed.Output()
	require.NoError(t, err)
	s.apiKey, s.project = jsonField(t, out, "project", "apiKey"), jsonField(t, out, "project", "id")
	if !s.kk.real {
		s.env = append(s.env, "KAFKA_BROKERS="+s.brokers)
	}
	return s
}

// service starts a standalone binary with an admin port (and extra variables) and waits
// until it is ready; it returns the process and its admin URL.
func (s *stack) service(name, bin string, extra ...string) (*proc, string) {
	s.t.Helper()
	p, ports := startOnFreePorts(s.t, name, bin, append(append([]string{}, s.env...), extra...), "ADMIN_PORT")
	return p, fmt.Sprintf("http://127.0.0.1:%d", ports["ADMIN_PORT"])
}

// ingestor starts a standalone ingestor; it returns the process, its ingest URL and its
// admin URL. Like service, it starts again on fresh ports after a lost port race.
func (s *stack) ingestor(extra ...string) (*proc, string, string) {
	s.t.Helper()
	env := append(append([]string{}, s.env...), extra...)
	p, ports := startOnFreePorts(s.t, "ingestor", ingestorBinary, env, "ADMIN_PORT", "INGEST_PORT")
	return p, fmt.Sprintf("http://127.0.0.1:%d", ports["INGEST_PORT"]), fmt.Sprintf("http://127.0.0.1:%d", ports["ADMIN_PORT"])
}

// sigterm stops p with SIGTERM and requires a clean exit (status 0) within bound.
func (p *proc) sigterm(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(bound + 30*time.Second):
		t.Fatalf("%s did not exit within %s of SIGTERM; logs:\n%s", p.name, bound+30*time.Second, p.logs.String())
	}
	took := time.Since(start)
	require.NoError(t, p.waitErr, "%s exit status; logs:\n%s", p.name, p.logs.String())
	require.LessOrEqual(t, took, bound, "%s took %s to exit after SIGTERM, beyond its bound %s", p.name, took, bound)
	t.Logf("%s exited cleanly %s after SIGTERM (bound %s)", p.name, took.Round(time.Millisecond), bound)
	return took
}

// load posts batches of events like an SDK until stopped, recording the id of every
// acknowledged event and the status of every other answer.
type load struct {
	mu     sync.Mutex
	acked  []string
	other  map[int]int
	errors int
	stop   chan struct{}
	wg     sync.WaitGroup
}

func startLoad(t *testing.T, ingestURL, apiKey, typ string, workers int) *load {
	t.Helper()
	l := &load{other: map[int]int{}, stop: make(chan struct{})}
	client := &http.Client{Timeout: 15 * time.Second}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				var events []string
				for j := range 20 {
					events = append(events, fmt.Sprintf(`{"type":%q,"name":"load-%d-%d-%d","payload":{"j":%d}}`, typ, w, i, j, j))
				}
				req, _ := http.NewRequest(http.MethodPost, ingestURL+"/ingest/batch", strings.NewReader("["+strings.Join(events, ",")+"]"))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-API-Key", apiKey)
				resp, err := client.Do(req)
				if err != nil {
					// Refused or cut off (the ingestor is gone): nothing was acknowledged.
					l.mu.Lock()
					l.errors++
					l.mu.Unlock()
					select {
					case <-l.stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					continue
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				l.mu.Lock()
				if resp.StatusCode == http.StatusAccepted {
					var r struct {
						Data struct {
							Results []struct{ ID string } `json:"results"`
						} `json:"data"`
					}
					if json.Unmarshal(raw, &r) == nil {
						for _, res := range r.Data.Results {
							l.acked = append(l.acked, res.ID)
						}
					}
				} else {
					l.other[resp.StatusCode]++
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// finish stops the workers (idempotent) and returns what they saw.
func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// requireOnly503 fails on any non-2xx answer other than 503.
func (l *load) requireOnly503(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for code, n := range l.other {
		require.Equal(t, http.StatusServiceUnavailable, code, "%d answers with status %d: only 503s (which clients retry) are allowed", n, code)
	}
	t.Logf("%d events acknowledged; other answers %v; %d connection errors", len(l.acked), l.other, l.errors)
}

// requireAllStored waits until every acknowledged event is in Postgres, exactly once.
func (s *stack) requireAllStored(l *load) {
	s.t.Helper()
	l.mu.Lock()
	acked := append([]string(nil), l.acked...)
	l.mu.Unlock()
	require.NotEmpty(s.t, acked)
	var stored, distinct int
	require.Eventually(s.t, func() bool {
		err := s.pool.QueryRow(context.Background(),
			`SELECT count(*), count(DISTINCT id) FROM events WHERE id = ANY($1::uuid[])`, acked).Scan(&stored, &distinct)
		return err == nil && distinct == len(acked)
	}, 60*time.Second, 100*time.Millisecond, "acknowledged events missing from Postgres")
	require.Equal(s.t, distinct, stored, "duplicates stored")
}

func (s *stack) lag(group string) int64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lag, err := kafkax.GroupLag(ctx, strings.Split(s.brokers, ","), s.kk.groupName(group), s.kk.topic)
	if err != nil {
		return -1
	}
	return lag
}

// An ingestor under load: readiness turns 503 first (for INGEST_DRAIN_DELAY, while new
// requests get 503), in-flight requests get their acknowledgement, the writer is flushed,
// and the process exits within INGEST_DRAIN_DELAY + INGEST_SHUTDOWN_TIMEOUT. The consumer
// then stores every acknowledged event once.
func TestStandaloneIngestorSIGTERMUnderLoad(t *testing.T) {
	s := newStack(t)
	s.service("consumer", consumerBinary)
	ing, ingestURL, admin := s.ingestor("INGEST_DRAIN_DELAY=1s", "INGEST_SHUTDOWN_TIMEOUT=5s")
	l := startLoad(t, ingestURL, s.apiKey, "event", 6)
	require.Eventually(t, func() bool { return l.count() >= 1000 }, 60*time.Second, 5*time.Millisecond)

	// Watch readiness from the moment of the signal until the admin port closes.
	sawNotReady := make(chan bool, 1)
	go func() {
		c := &http.Client{Timeout: time.Second}
		for {
			resp, err := c.Get(admin + "/readyz")
			if err != nil {
				sawNotReady <- false
				return
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				sawNotReady <- true
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	ing.sigterm(t, 1*time.Second+5*time.Second+2*time.Second) // drain delay + shutdown timeout + process teardown
	require.True(t, <-sawNotReady, "/readyz never answered 503 before the ingestor stopped")
	l.finish()
	l.requireOnly503(t)
	s.requireAllStored(l)
	require.Contains(t, ing.logs.String(), "ingestor stopped")
}

// A consumer under load, with a backlog: it finishes (stores, commits) the batch in hand
// within CONSUMER_SHUTDOWN_TIMEOUT and exits 0; a new consumer takes over from the
// committed offsets, and every acknowledged event is stored once.
func TestStandaloneConsumerSIGTERMUnderLoad(t *testing.T) {
	s := newStack(t)
	cons, _ := s.service("consumer", consumerBinary, "CONSUMER_BATCH_SIZE=100", "CONSUMER_SHUTDOWN_TIMEOUT=5s")
	_, ingestURL, _ := s.ingestor()
	l := startLoad(t, ingestURL, s.apiKey, "event", 6)
	require.Eventually(t, func() bool {
		return l.count() >= 1000 && s.lag("pulseboard-consumer") > 0
	}, 60*time.Second, 5*time.Millisecond, "no backlog built up")

	cons.sigterm(t, 5*time.Second+3*time.Second) // CONSUMER_SHUTDOWN_TIMEOUT + leaving the group
	require.Contains(t, cons.logs.String(), "consumer stopped")
	// Ingest is unaffected; a replacement resumes from the committed offsets.
	require.Eventually(t, func() bool { return l.count() >= 2000 }, 60*time.Second, 5*time.Millisecond)
	s.service("consumer", consumerBinary)
	l.finish()
	l.requireOnly503(t)
	s.requireAllStored(l)
	require.Eventually(t, func() bool { return s.lag("pulseboard-consumer") == 0 }, 30*time.Second, 100*time.Millisecond)
}

// An alerter under load (error events, so windows are evaluated all along): it stops
// within ALERTER_SHUTDOWN_TIMEOUT and exits 0; a replacement catches up (its group's lag
// returns to 0) and the project still has exactly one alert for the cooldown.
func TestStandaloneAlerterSIGTERMUnderLoad(t *testing.T) {
	s := newStack(t)
	s.service("consumer", consumerBinary)
	al, alAdmin := s.service("alerter", alerterBinary, "ALERTER_SHUTDOWN_TIMEOUT=5s", "ALERTER_BATCH_SIZE=100")
	_, ingestURL, _ := s.ingestor()
	l := startLoad(t, ingestURL, s.apiKey, "error", 4)
	require.Eventually(t, func() bool {
		if l.count() < 1000 {
			return false
		}
		processed, _ := scrape(t, alAdmin).value("pulseboard_alerter_messages_processed_total")
		return processed > 0
	}, 60*time.Second, 20*time.Millisecond, "the alerter processed nothing")

	al.sigterm(t, 5*time.Second+3*time.Second) // ALERTER_SHUTDOWN_TIMEOUT + leaving the group
	require.Eventually(t, func() bool { return l.count() >= 2000 }, 60*time.Second, 5*time.Millisecond)
	s.service("alerter", alerterBinary)
	l.finish()
	l.requireOnly503(t)
	s.requireAllStored(l)
	require.Eventually(t, func() bool { return s.lag("pulseboard-alerter") == 0 }, 60*time.Second, 100*time.Millisecond,
		"the replacement alerter did not catch up")
	var alerts int
	require.NoError(t, s.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM alerts WHERE project_id = $1 AND kind = 'threshold'`, s.project).Scan(&alerts))
	require.Equal(t, 1, alerts, "one alert per project per cooldown, across the restart")
}
