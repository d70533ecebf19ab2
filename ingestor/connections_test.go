package ingestor_test

// Connection caps, idle shedding, the readable 413 and recovery from a connection flood
// (issue 16): real connections from several loopback addresses against a real ingestor.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/obs"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/nodefetch"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/rawhttp"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// dialFrom opens a connection to addr from the loopback address localIP.
func dialFrom(tb testing.TB, addr, localIP string) net.Conn {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// requireRefused reads the refusal of a connection over a cap (without writing anything
// on it): status, Retry-After, the JSON error code, then the server's close, all within
// 10 s.
func requireRefused(tb testing.TB, c net.Conn, status int, code string) {
	tb.Helper()
	require.NoError(tb, c.SetDeadline(time.Now().Add(10*time.Second)))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(tb, err, "a refused connection gets an answer")
	body, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	require.Equal(tb, status, resp.StatusCode, "body: %s", body)
	require.Equal(tb, "1", resp.Header.Get("Retry-After"))
	var env struct{ Code string }
	require.NoError(tb, json.Unmarshal(body, &env), "body: %s", body)
	require.Equal(tb, code, env.Code)
	_, err = br.ReadByte()
	require.ErrorIs(tb, err, io.EOF, "the server closed the refused connection at once")
}

// waitOpen waits until the open-connections gauge shows n.
func waitOpen(tb testing.TB, reg *prometheus.Registry, name string, n int) {
	tb.Helper()
	require.Eventually(tb, func() bool { return metricValue(tb, reg, name) == float64(n) }, 10*time.Second, 5*time.Millisecond,
		"%s should reach %d (is %v)", name, n, metricValue(tb, reg, name))
}

const ingestOpen = "pulseboard_ingest_open_connections"

// A connection over the per-address cap gets 429, one over the total cap 503; both are
// closed at once and counted, neither touches the connections already open, and once
// the crowd leaves a fresh client is served.
func TestConnectionCapsPerAddressAndTotal(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *ingestor.Config) {
		c.MaxConns, c.MaxConnsPerIP = 6, 2
		c.ReadTimeout = time.Minute // the held connections send nothing
	}))
	addr := strings.TrimPrefix(b.url, "http://")

	var held []net.Conn
	for range 2 {
		held = append(held, dialFrom(t, addr, "127.0.0.2"))
	}
	waitOpen(t, b.reg, ingestOpen, 2)
	requireRefused(t, dialFrom(t, addr, "127.0.0.2"), http.StatusTooManyRequests, "RATE_LIMITED")
	require.Equal(t, 1.0, metricValue(t, b.reg, "pulseboard_ingest_connections_refused_total", "reason", "per_ip"))

	for _, ip := range []string{"127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"} {
		held = append(held, dialFrom(t, addr, ip))
	}
	waitOpen(t, b.reg, ingestOpen, 6)
	requireRefused(t, dialFrom(t, addr, "127.0.0.5"), http.StatusServiceUnavailable, "UNAVAILABLE")
	require.Equal(t, 1.0, metricValue(t, b.reg, "pulseboard_ingest_connections_refused_total", "reason", "total"))
	require.Equal(t, 6.0, metricValue(t, b.reg, "pulseboard_ingest_max_connections"))

	// The held connections were not touched: one of them is served.
	body := mustJSON(t, validEvent(b.project.APIKey))
	_, err := fmt.Fprintf(held[0], "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(held[0]), nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	for _, c := range held {
		_ = c.Close()
	}
	waitOpen(t, b.reg, ingestOpen, 0)
	r := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, r.status, "body: %s", r.body)
}

// Past 90 % of the cap, the oldest idle keep-alive connections are closed so that a new
// client is served instead of refused.
func TestIdleKeepAliveConnectionsAreShedForNewClients(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *ingestor.Config) { c.MaxConns, c.MaxConnsPerIP = 4, 0 }))
	addr := strings.TrimPrefix(b.url, "http://")
	body := mustJSON(t, validEvent(b.project.APIKey))
	request := "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body)

	// Four keep-alive connections, each served once and left idle: the cap is full.
	var idle []*bufio.Reader
	var conns []net.Conn
	for i := range 4 {
		c := dialFrom(t, addr, "127.0.0."+strconv.Itoa(10+i))
		_, err := io.WriteString(c, request)
		require.NoError(t, err)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err, "connection %d", i)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, "connection %d", i)
		require.False(t, resp.Close)
		idle, conns = append(idle, br), append(conns, c)
	}

	// A new client is served, not refused.
	r := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, r.status, "body: %s", r.body)
	require.GreaterOrEqual(t, metricValue(t, b.reg, "pulseboard_ingest_connections_shed_total"), 1.0)
	require.Zero(t, metricValue(t, b.reg, "pulseboard_ingest_connections_refused_total"))

	requireIdleShed(t, conns, idle)
}

// requireIdleShed checks that the server closed at least one of the idle connections
// (oldest first, but which ones were idle when the new client came depends on when the
// server marked them idle, which a loaded machine delays).
func requireIdleShed(t *testing.T, conns []net.Conn, idle []*bufio.Reader) {
	t.Helper()
	// Shedding happens before the new connection is served, so a shed connection reads
	// EOF at once; the others would block, so each gets a short deadline.
	closed := 0
	for i, c := range conns {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
		if _, err := idle[i].ReadByte(); errors.Is(err, io.EOF) {
			closed++
		}
	}
	require.Positive(t, closed, "an idle connection was closed by the server")
}

// twoMiB is a body twice the default INGEST_MAX_BODY_BYTES.
func twoMiB() []byte {
	return append(append([]byte(`{"apiKey":"x","type":"event","name":"n","payload":{"pad":"`), bytes.Repeat([]byte("a"), 2<<20)...), `"}}`...)
}

// A client that writes its whole body before reading the answer (Node's fetch does)
// reads the 413, not a connection reset (issue 16 item 9).
func TestOversizedBodyGets413ThatAClientWritingEverythingFirstCanRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := twoMiB()

	t.Run("raw client", func(t *testing.T) {
		for i := range 3 { // a reset is a race: try a few times
			c := dialFrom(t, strings.TrimPrefix(b.url, "http://"), "127.0.0.1")
			require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
			// The head and a first part, then a pause in which the server has answered and
			// would have closed, then the rest: a client on a slow link.
			resp, rb, err := rawhttp.SlowPost(c, "/ingest", body, 64<<10)
			require.NoError(t, err, "attempt %d: the whole body is written (the server reads it), the answer read", i)
			require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "body: %s", rb)
			require.Contains(t, string(rb), `"code":"PAYLOAD_TOO_LARGE"`)
			require.True(t, resp.Close)
			_ = c.Close()
		}
	})

	for _, slow := range []bool{false, true} {
		t.Run("node fetch slow="+strconv.FormatBool(slow), func(t *testing.T) {
			for i, a := range nodefetch.Post(t, b.url+"/ingest", len(body), map[bool]int{false: 10, true: 3}[slow], slow) {
				require.Equal(t, http.StatusRequestEntityTooLarge, a.Status, "attempt %d: node saw: %s", i, a.Text)
				require.Contains(t, a.Text, `"code":"PAYLOAD_TOO_LARGE"`)
			}
		})
	}

	// Afterwards the service serves as usual.
	r := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, r.status)
}

// The environment of the flood child process.
const floodChildEnv = "PULSEBOARD_TEST_FLOOD_CHILD"

// floodNoFile is the child's open-file limit: the default caps are derived from it.
const floodNoFile = 256

// A flood of connections, several times the process's open-file limit, idle keep-alive
// ones and ones that never send anything, from many addresses: the ingestor, in its own
// process with RLIMIT_NOFILE 256, keeps its descriptors for Kafka, PostgreSQL and Redis
// and answers ingest again promptly once the flood ends (issue 16: before, every
// /ingest stayed 503 after such a flood).
func TestIngestRecoversPromptlyAfterAConnectionFlood(t *testing.T) {
	t.Parallel()
	t.Run("default caps", func(t *testing.T) { t.Parallel(); floodAndRecover(t, "0", 1500) })
	// A cap above the open-file limit (misconfigured): the listener runs out of
	// descriptors, sheds idle connections and backs off instead of failing (fasthttp
	// takes an EMFILE from Accept as fatal), and ingest comes back all the same.
	t.Run("cap above the open-file limit", func(t *testing.T) { t.Parallel(); floodAndRecover(t, "100000", 600) })
}

// floodAndRecover runs a flood of total connections against a child ingestor with
// INGEST_MAX_CONNS=maxConns.
func floodAndRecover(t *testing.T, maxConns string, total int) {
	dbURL, pool := pgtest.NewDB(t)
	kc := kafkatest.New(t, testPartitions)
	ctx := context.Background()
	user, err := pgstore.UpsertUser(ctx, pool, "Flood", "flood@example.com", "x")
	require.NoError(t, err)
	project, err := pgstore.CreateProject(ctx, pool, user.ID, "flood")
	require.NoError(t, err)

	cmd := exec.Command(os.Args[0], "-test.run=^TestFloodChildProcess$")
	cmd.Env = append(os.Environ(), floodChildEnv+"=1",
		"DATABASE_URL="+dbURL, "REDIS_URL="+redistest.URL(t),
		"KAFKA_BROKERS="+strings.Join(kc.Brokers, ","), "KAFKA_TOPIC="+kc.Topic, "KAFKA_DLQ_TOPIC="+kc.DLQTopic, "INGEST_MAX_CONNS="+maxConns)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout := &addrWatcher{found: make(chan string, 1)}
	cmd.Stdout = stdout
	stderr := &testenv.SyncBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = stdin.Close() // the child stops when its stdin closes
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	var addr string
	select {
	case addr = <-stdout.found:
	case err := <-exited:
		t.Fatalf("the child did not start: %v\n%s", err, stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("the child did not start within 60 s:\n%s", stderr)
	}

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	body := mustJSON(t, validEvent(project.APIKey))
	ingest := func() (int, error) {
		resp, err := client.Post("http://"+addr+"/ingest", "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, nil
	}
	require.Eventually(t, func() bool { s, _ := ingest(); return s == http.StatusAccepted }, 30*time.Second, 50*time.Millisecond,
		"the child serves before the flood: %s", stderr)

	// The flood: 8 workers from 32 addresses open total connections (several times the
	// open-file limit) and keep every one they get, half of them idle after one request.
	const workers = 8
	floodStart := time.Now()
	var (
		mu    sync.Mutex
		flood []net.Conn
		wg    sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < total; i += workers {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%32))}, Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					continue // the backlog may overflow: that is part of a flood
				}
				if i%2 == 0 {
					_ = c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := io.WriteString(c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil {
						if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
							_, _ = io.Copy(io.Discard, resp.Body)
							_ = resp.Body.Close()
						}
					}
				}
				mu.Lock()
				flood = append(flood, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	select {
	case err := <-exited:
		t.Fatalf("the ingestor died during the flood: %v\n%s", err, stderr)
	default:
	}

	t.Logf("flood of %d connections took %s", total, time.Since(floodStart).Round(time.Millisecond))
	// The flood ends; ingest must answer 202 again, promptly.
	for _, c := range flood {
		_ = c.Close()
	}
	ended := time.Now()
	for {
		status, err := ingest()
		if status == http.StatusAccepted {
			break
		}
		if time.Since(ended) > 10*time.Second {
			t.Fatalf("ingest did not answer 202 within 10 s after the flood: last status %d, error %v\n%s", status, err, stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("ingest back within %d ms after the connection flood ends (%d flood connections, RLIMIT_NOFILE %d, INGEST_MAX_CONNS %s)",
		time.Since(ended).Milliseconds(), len(flood), floodNoFile, maxConns)
}

// addrWatcher is the child's stdout: it passes on the address the child prints.
type addrWatcher struct {
	mu    sync.Mutex
	buf   []byte
	found chan string
}

func (w *addrWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if a, ok := strings.CutPrefix(line, "ADDR="); ok {
			select {
			case w.found <- a:
			default:
			}
		}
	}
}

// TestFloodChildProcess is the ingestor process of the flood test (it does nothing in a
// normal run): RLIMIT_NOFILE lowered to floodNoFile, the default connection caps, real
// PostgreSQL, Redis and the parent's Kafka; it prints ADDR=host:port and serves until
// its stdin closes.
func TestFloodChildProcess(t *testing.T) {
	if os.Getenv(floodChildEnv) == "" {
		t.Skip("the child process of TestIngestRecoversPromptlyAfterAConnectionFlood")
	}
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: floodNoFile, Max: floodNoFile}))
	env := config.Env{}
	for _, k := range []string{"KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_DLQ_TOPIC", "INGEST_MAX_CONNS"} {
		env[k] = os.Getenv(k)
	}
	cfg, err := config.Parse[ingestor.Config](env)
	require.NoError(t, err)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	require.NoError(t, err)
	defer pool.Close()
	ropts, err := redis.ParseURL(os.Getenv("REDIS_URL"))
	require.NoError(t, err)
	rdb := redis.NewClient(ropts)
	defer func() { _ = rdb.Close() }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	logger, err := obs.NewLogger(os.Stderr, "warn")
	require.NoError(t, err)
	svc, err := ingestor.New(cfg, ingestor.Deps{
		Pool: pool, Redis: rdb, Brokers: cfg.Kafka.Brokers, Logger: logger,
		Registerer: prometheus.NewRegistry(), Ready: obs.NewReadiness(), Listener: ln,
	})
	require.NoError(t, err)
	fmt.Printf("ADDR=%s\n", ln.Addr())
	runCtx, cancel := context.WithCancel(ctx)
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	require.NoError(t, svc.Run(runCtx))
}
