package main_test

// System tests: the all-in-one binary as a real process, driven over HTTP like a user,
// with real PostgreSQL, Redis, the embedded Kafka-protocol broker and kcat.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

var (
	binary         string // pulseboard
	ingestorBinary string
	consumerBinary string
	alerterBinary  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pulseboard-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "pulseboard")
	ingestorBinary = filepath.Join(dir, "ingestor")
	consumerBinary = filepath.Join(dir, "consumer")
	alerterBinary = filepath.Join(dir, "alerter")
	for out, pkg := range map[string]string{
		binary:         ".",
		ingestorBinary: "github.com/pulseboard/pulseboard/ingestor/cmd/ingestor",
		consumerBinary: "github.com/pulseboard/pulseboard/consumer/cmd/consumer",
		alerterBinary:  "github.com/pulseboard/pulseboard/alerter/cmd/alerter",
	} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type instance struct {
	t        *testing.T
	cmd      *exec.Cmd
	env      []string
	ingest   string // http://127.0.0.1:port
	api      string
	admin    string
	kafka    string // bootstrap list
	kk       testKafka
	pool     *pgxpool.Pool
	redis    *redis.Client
	logs     *testenv.SyncBuffer
	exited   chan error
	apiKey   string
	project  string
	stopOnce sync.Once
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// start runs `pulseboard run` on free ports against a fresh database and waits for /readyz.
func start(t *testing.T, extraEnv ...string) *instance {
	t.Helper()
	dbURL, pool := pgtest.NewDB(t)
	rdb := redistest.Client(t)
	// freePort's port can be taken by a parallel test before the process binds it; a start
	// that dies with "address already in use" is retried on fresh ports.
	for attempt := 1; ; attempt++ {
		if in := tryStart(t, dbURL, pool, rdb, attempt < 5, extraEnv); in != nil {
			return in
		}
	}
}

// tryStart starts `pulseboard run` once; it returns nil when the process lost a port race
// and retry is allowed.
func tryStart(t *testing.T, dbURL string, pool *pgxpool.Pool, rdb *redis.Client, retry bool, extraEnv []string) *instance {
	t.Helper()
	ingestPort, adminPort, kafkaPort, apiPort := freePort(t), freePort(t), freePort(t), freePort(t)
	in := &instance{
		t: t, pool: pool, redis: rdb, logs: &testenv.SyncBuffer{}, exited: make(chan error, 1),
		ingest: fmt.Sprintf("http://127.0.0.1:%d", ingestPort),
		api:    fmt.Sprintf("http://127.0.0.1:%d", apiPort),
		admin:  fmt.Sprintf("http://127.0.0.1:%d", adminPort),
		kafka:  fmt.Sprintf("127.0.0.1:%d", kafkaPort),
	}
	in.env = append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"REDIS_URL="+redistest.URL(t),
		"KAFKA_BROKERS=",
		"INGEST_PORT="+strconv.Itoa(ingestPort),
		"PORT="+strconv.Itoa(apiPort),
		"ADMIN_PORT="+strconv.Itoa(adminPort),
		"KAFKA_EMBEDDED_PORT="+strconv.Itoa(kafkaPort),
		"INGEST_RATE_LIMIT=0",
		// Every test process registers from 127.0.0.1 against the one test Redis: the
		// register throttle (tested in api) would count them all together.
		"API_REGISTER_IP_LIMIT=100000", "API_REGISTER_GLOBAL_LIMIT=100000",
	)
	in.kk = kafkaFor(t)
	if in.kk.real {
		in.kafka = in.kk.brokers
		in.env = append(in.env, in.kk.env()...)
	}
	in.env = append(in.env, extraEnv...)

	seed := exec.Command(binary, "seed")
	seed.Env = in.env
	out, err := seed.Output()
	require.NoError(t, err, "seed: %s", out)
	in.apiKey, in.project = jsonField(t, out, "project", "apiKey"), jsonField(t, out, "project", "id")

	in.cmd = exec.Command(binary, "run")
	in.cmd.Env = in.env
	in.cmd.Stdout, in.cmd.Stderr = in.logs, in.logs
	require.NoError(t, in.cmd.Start())
	go func() { in.exited <- in.cmd.Wait() }()
	t.Cleanup(func() {
		in.checkNo500s()
		in.stop(30 * time.Second)
		if t.Failed() {
			t.Logf("pulseboard logs:\n%s", in.logs.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(in.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-in.exited:
			in.exited <- err // for stop, at cleanup
			if retry && strings.Contains(in.logs.String(), "address already in use") {
				t.Logf("port race on start, retrying: %s", strings.TrimSpace(in.logs.String()))
				return nil
			}
			t.Fatalf("the all-in-one exited before becoming ready (%v); logs:\n%s", err, in.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the all-in-one never became ready; logs:\n%s", in.logs.String())
		}
	}
	return in
}

// checkNo500s fails the test if the api or the ingestor answered any request with a 500
// (issue 16 acceptance 3: bad input is a 4xx, an outage a 503). A process that already
// stopped is not asked.
func (in *instance) checkNo500s() {
	t := in.t
	select {
	case err := <-in.exited:
		in.exited <- err
		return
	default:
	}
	resp, err := http.Get(in.admin + "/metrics")
	if err != nil {
		t.Logf("no metrics at the end of the test: %v", err)
		return
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Logf("no metrics at the end of the test: %d %v", resp.StatusCode, err)
		return
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	require.NoError(t, err)
	for _, name := range []string{"pulseboard_api_http_requests_total", "pulseboard_ingest_requests_total"} {
		if n, _ := exposition(mfs).value(name, "code", "500"); n != 0 {
			t.Errorf("%s: %v requests were answered 500", name, n)
		}
	}
}

// stop sends SIGTERM and waits for the process to exit.
func (in *instance) stop(timeout time.Duration) error {
	var err error
	in.stopOnce.Do(func() {
		_ = in.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-in.exited:
		case <-time.After(timeout):
			_ = in.cmd.Process.Kill()
			err = fmt.Errorf("did not exit within %s", timeout)
		}
	})
	return err
}

type ingestResponse struct {
	Success bool            `json:"success"`
	Message string          `json:"message"`
	Code    string          `json:"code"`
	Data    json.RawMessage `json:"data"`
}

func TestAllInOneIngestIsStoredPublishedAndReadableByKcat(t *testing.T) {
	t.Parallel()
	in := start(t)
	ctx := context.Background()

	sub := in.redis.Subscribe(ctx, "project:"+in.project+":events")
	defer sub.Close()
	_, err := sub.Receive(ctx) // subscription confirmed before we ingest
	require.NoError(t, err)

	// The old React Native SDK's request, unchanged.
	body := `{"apiKey":"` + in.apiKey + `","type":"error","name":"TypeError","payload":{"message":"x is undefined","line":12},` +
		`"timestamp":"2026-11-25T22:46:41.524Z","context":{"os":"ios"}}`
	sent := time.Now()
	resp, err := http.Post(in.ingest+"/ingest", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", raw)
	var r ingestResponse
	require.NoError(t, json.Unmarshal(raw, &r))
	require.True(t, r.Success)
	require.Equal(t, "Event accepted", r.Message)
	var ev struct {
		ID, ProjectID, Type, Name, Timestamp, ReceivedAt string
		Payload, Context                                 map[string]any
	}
	require.NoError(t, json.Unmarshal(r.Data, &ev))
	require.Equal(t, in.project, ev.ProjectID)
	require.Equal(t, "2026-11-25T22:46:41.524Z", ev.Timestamp)
	require.Equal(t, "ios", ev.Context["os"])

	// Published on the project's channel, byte for byte the event the client got back.
	msg, err := sub.ReceiveMessage(ctx)
	require.NoError(t, err)
	require.JSONEq(t, string(r.Data), msg.Payload)

	// Stored (published only after the commit, so the row is there now).
	var name, typ string
	require.NoError(t, in.pool.QueryRow(ctx, "SELECT name, type FROM events WHERE id = $1", ev.ID).Scan(&name, &typ))
	require.Equal(t, "TypeError", name)
	require.Equal(t, "error", typ)
	t.Logf("ingest → stored and published in %s", time.Since(sent))

	// kcat, a Kafka client written by others, reads it from the broker (embedded or real).
	kcat := exec.Command("kcat", "-b", in.kafka, "-t", in.kk.topic, "-C", "-e", "-q", "-f", "%k %s\n")
	out, err := kcat.CombinedOutput()
	require.NoError(t, err, "kcat: %s", out)
	require.Contains(t, string(out), in.project+" ")
	require.Contains(t, string(out), ev.ID)

	// A client retry that reuses its eventId (three attempts, plus the same id twice in
	// one batch) leaves exactly one row, although every attempt gets its own receivedAt.
	retryID := "0192f1a4-7c1e-7b3a-9d2f-3a4b5c6d7e8f"
	single := `{"apiKey":"` + in.apiKey + `","eventId":"` + retryID + `","type":"event","name":"retry","payload":{}}`
	for range 3 {
		resp, err := http.Post(in.ingest+"/ingest", "application/json", strings.NewReader(single))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}
	dup := `{"eventId":"` + retryID + `","type":"event","name":"retry","payload":{}}`
	dreq, _ := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader("["+dup+","+dup+"]"))
	dreq.Header.Set("Content-Type", "application/json")
	dreq.Header.Set("X-API-Key", in.apiKey)
	dresp, err := http.DefaultClient.Do(dreq)
	require.NoError(t, err)
	dresp.Body.Close()
	require.Equal(t, http.StatusAccepted, dresp.StatusCode)
	// The consumer stores in offset order per partition, so once a later event of the
	// project is stored, all five attempts have been processed.
	marker := `{"apiKey":"` + in.apiKey + `","type":"event","name":"after-retries","payload":{}}`
	mresp, err := http.Post(in.ingest+"/ingest", "application/json", strings.NewReader(marker))
	require.NoError(t, err)
	mresp.Body.Close()
	require.Eventually(t, func() bool {
		var n int
		return in.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE name = 'after-retries'`).Scan(&n) == nil && n == 1
	}, 30*time.Second, 20*time.Millisecond)
	var copies int
	require.NoError(t, in.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE id = $1`, retryID).Scan(&copies))
	require.Equal(t, 1, copies, "a retried eventId must be stored once")

	// The all-in-one runs the alerter too: nine more errors reach the default threshold
	// (10 in 60 s); without SMTP_HOST the email goes to the log and is recorded as sent.
	var batch []string
	for i := range 9 {
		batch = append(batch, fmt.Sprintf(`{"type":"error","name":"E%d","payload":{}}`, i))
	}
	req, _ := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader("["+strings.Join(batch, ",")+"]"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", in.apiKey)
	bresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	bresp.Body.Close()
	require.Equal(t, http.StatusAccepted, bresp.StatusCode)
	require.Eventually(t, func() bool {
		var state string
		err := in.pool.QueryRow(ctx, `SELECT state FROM alerts WHERE project_id = $1 AND kind = 'threshold'`, in.project).Scan(&state)
		return err == nil && state == "sent"
	}, 30*time.Second, 50*time.Millisecond, "no threshold alert recorded as sent")
}

func TestAllInOneSIGTERMUnderLoadLosesNoAcknowledgedEvent(t *testing.T) {
	t.Parallel()
	// Small consumer batches keep a backlog in the broker under load, so SIGTERM finds
	// acknowledged events that exist only in the embedded broker's memory.
	in := start(t, "CONSUMER_BATCH_SIZE=100")
	ctx := context.Background()

	var (
		mu    sync.Mutex
		acked []string
		other = map[int]int{}
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	client := &http.Client{Timeout: 15 * time.Second}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var events []string
				for j := range 20 {
					events = append(events, fmt.Sprintf(`{"type":"event","name":"load-%d-%d-%d","payload":{"i":%d}}`, w, i, j, j))
				}
				req, _ := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader("["+strings.Join(events, ",")+"]"))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-API-Key", in.apiKey)
				resp, err := client.Do(req)
				if err != nil {
					// The listener closed (or the connection did, mid-request): nothing
					// was acknowledged; a real client would retry elsewhere.
					return
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode == http.StatusAccepted {
					var r struct {
						Data struct {
							Results []struct{ ID string } `json:"results"`
						} `json:"data"`
					}
					if json.Unmarshal(raw, &r) == nil {
						for _, res := range r.Data.Results {
							acked = append(acked, res.ID)
						}
					}
				} else {
					other[resp.StatusCode]++
				}
				mu.Unlock()
			}
		}()
	}
	// Let load build up, then SIGTERM while requests are in flight and while the consumer
	// is behind (lag > 0): the drain must store what only the broker holds.
	require.Eventually(t, func() bool {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n < 2000 {
			return false
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		lag, err := kafkax.GroupLag(lctx, strings.Split(in.kafka, ","), in.kk.group, in.kk.topic)
		return err == nil && lag > 0
	}, 60*time.Second, 5*time.Millisecond)
	stopped := time.Now()
	require.NoError(t, in.stop(90*time.Second), "logs:\n%s", in.logs.String())
	close(stop)
	wg.Wait()
	t.Logf("exited %s after SIGTERM; %d events acknowledged; non-2xx answers: %v", time.Since(stopped), len(acked), other)
	for code := range other {
		require.Equal(t, http.StatusServiceUnavailable, code, "only 503s (which clients retry) are allowed during shutdown")
	}

	var stored, distinct int
	countStored := func() error {
		return in.pool.QueryRow(ctx,
			`SELECT count(*), count(DISTINCT id) FROM events WHERE id = ANY($1::uuid[])`, acked).Scan(&stored, &distinct)
	}
	if in.kk.real {
		// A real broker keeps what it acknowledged after the all-in-one stops (there is
		// nothing to drain): a standalone consumer of the same group stores the rest.
		startProc(t, "consumer", consumerBinary, append(in.env, "ADMIN_PORT=0"))
		require.Eventually(t, func() bool { return countStored() == nil && distinct == len(acked) },
			60*time.Second, 100*time.Millisecond, "acknowledged events missing from Postgres")
	}
	// Every acknowledged event is in Postgres, exactly once.
	require.NoError(t, countStored())
	require.Equal(t, len(acked), distinct, "acknowledged events missing from Postgres")
	require.Equal(t, distinct, stored, "duplicates stored")
	if !in.kk.real {
		require.Contains(t, in.logs.String(), "drained: every acknowledged event is stored")
	}
}

// jsonField digs a string out of seed's JSON output.
func jsonField(t *testing.T, raw []byte, path ...string) string {
	t.Helper()
	var v any
	require.NoError(t, json.Unmarshal(raw, &v), "seed prints one JSON object: %s", raw)
	for _, p := range path {
		m, ok := v.(map[string]any)
		require.True(t, ok, "no %v in %s", path, raw)
		v = m[p]
	}
	s, ok := v.(string)
	require.True(t, ok && s != "", "no %v in %s", path, raw)
	return s
}
