package live_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
)

// The benchmark's WebSocket clients run in a child process (this test binary, re-executed
// with benchClientEnv set), so that the server process's heap, stacks and goroutines
// measure the server alone, and each process stays under the open-files limit.
const (
	benchClientEnv = "PULSEBOARD_LIVE_BENCH_CLIENTS"
	benchURLEnv    = "PULSEBOARD_LIVE_BENCH_URL"
)

// BenchmarkFanOut publishes one event per iteration to a project with N WebSocket
// clients and waits until all N received it. It reports the delivery latency (PUBLISH to
// a client's read) p50/p99/max over all deliveries, and the server's heap, stack and
// goroutines per connection.
//
//	go test -run '^$' -bench FanOut -benchtime 20x ./internal/live/
//
// LIVE_BENCH_HEAPPROFILE=<file> writes the server's heap profile (every allocation
// sampled) once the clients are connected.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) { benchFanOut(b, n) })
	}
}

func benchFanOut(b *testing.B, n int) {
	raiseOpenFiles(b, uint64(n)+2048)
	if os.Getenv("LIVE_BENCH_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 1
	}
	bd := setup(b, func(o *setupOpts) { o.cfg.MaxConnsPerUser = n + 1 })
	url := bd.wsURL(bd.project.ID.String()) + "?token=" + bd.token

	heap0, stack0, g0 := serverFootprint()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), benchClientEnv+"="+strconv.Itoa(n), benchURLEnv+"="+url)
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	require.NoError(b, err)
	stdout, err := child.StdoutPipe()
	require.NoError(b, err)
	require.NoError(b, child.Start())
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = child.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	expect := func(prefix string) string {
		select {
		case l, ok := <-lines:
			require.True(b, ok, "the client process exited")
			require.True(b, strings.HasPrefix(l, prefix), "client process said %q, want %q", l, prefix)
			return l
		case <-time.After(2 * time.Minute):
			b.Fatalf("client process: no %q in time", prefix)
			return ""
		}
	}
	expect("ready")
	heap1, stack1, g1 := serverFootprint()
	if f := os.Getenv("LIVE_BENCH_HEAPPROFILE"); f != "" {
		fh, _ := os.Create(f)
		_ = pprof.WriteHeapProfile(fh)
		fh.Close()
	}

	seq := 0
	for b.Loop() {
		seq++
		e := bd.newEvent("bench", fmt.Sprintf(`{"seq":%d,"t":%d}`, seq, time.Now().UnixNano()))
		bd.publish(b, e)
		expect("done " + strconv.Itoa(seq))
	}
	require.NoError(b, stdin.Close()) // asks for the latency summary
	var p50, p99, pmax, count float64
	_, err = fmt.Sscanf(expect("stats"), "stats %g %g %g %g", &p50, &p99, &pmax, &count)
	require.NoError(b, err)
	require.Equal(b, float64(seq*n), count, "every client must receive every event")
	b.ReportMetric(p50/1e6, "p50-ms")
	b.ReportMetric(p99/1e6, "p99-ms")
	b.ReportMetric(pmax/1e6, "max-ms")
	b.ReportMetric(float64(heap1-heap0)/float64(n), "heapB/conn")
	b.ReportMetric(float64(stack1-stack0)/float64(n), "stackB/conn")
	b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/conn")
}

// serverFootprint is the process's heap and stack in use and its goroutine count, after
// a GC.
func serverFootprint() (heap, stack uint64, goroutines int) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
}

// raiseOpenFiles lifts the soft RLIMIT_NOFILE towards need (up to the hard limit); the
// client process inherits it.
func raiseOpenFiles(b *testing.B, need uint64) {
	var rl syscall.Rlimit
	require.NoError(b, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl))
	if rl.Cur >= need {
		return
	}
	rl.Cur = min(need, rl.Max)
	require.NoError(b, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl))
	if rl.Cur < need {
		b.Skipf("RLIMIT_NOFILE hard limit %d is below the %d this case needs", rl.Max, need)
	}
}

// runBenchClients is the client process: it dials N connections, says "ready", prints
// "done <seq>" once all N received event seq, and on EOF of stdin prints
// "stats <p50-ns> <p99-ns> <max-ns> <deliveries>".
func runBenchClients() int {
	n, err := strconv.Atoi(os.Getenv(benchClientEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench clients:", err)
		return 2
	}
	url := os.Getenv(benchURLEnv)
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	say := func(s string) {
		outMu.Lock()
		defer outMu.Unlock()
		_, _ = out.WriteString(s + "\n")
		_ = out.Flush()
	}

	// The clients share the two cores with the server, so they do as little as they can
	// per delivery: no lock shared between them (each keeps its own latencies, counters
	// are indexed by seq), a reused read buffer, and seq and t taken from the payload's
	// known position (JSON decoding only when that fails). What they cost is taken from
	// the server; clients on other machines would cost it nothing.
	var received [1 << 16]atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := make([]*websocket.Conn, n)
	var g errgroup.Group
	g.SetLimit(64)
	for i := range conns {
		g.Go(func() error {
			dctx, dcancel := context.WithTimeout(ctx, time.Minute)
			defer dcancel()
			c, _, err := websocket.Dial(dctx, url, nil)
			if err != nil {
				return fmt.Errorf("dial %d: %w", i, err)
			}
			if _, _, err := c.Read(dctx); err != nil { // "connected"
				return fmt.Errorf("connected %d: %w", i, err)
			}
			conns[i] = c
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "bench clients:", err)
		return 1
	}
	var readers sync.WaitGroup
	latencies := make([][]int64, len(conns))
	for i, c := range conns {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var buf bytes.Buffer
			for {
				_, r, err := c.Reader(ctx)
				if err != nil {
					return
				}
				buf.Reset()
				if _, err := buf.ReadFrom(r); err != nil {
					return
				}
				now := time.Now().UnixNano()
				seq, t, ok := benchSeq(buf.Bytes())
				if !ok || seq <= 0 || seq >= len(received) {
					continue // not a bench event (a resync would show up as a missing "done")
				}
				latencies[i] = append(latencies[i], now-t)
				if received[seq].Add(1) == int64(n) {
					say("done " + strconv.Itoa(seq))
				}
			}
		}()
	}
	say("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark closes stdin
	for _, c := range conns {
		_ = c.CloseNow()
	}
	cancel()
	readers.Wait()

	lat := slices.Concat(latencies...)
	slices.Sort(lat)
	pct := func(p float64) int64 {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	var maxLat int64
	if len(lat) > 0 {
		maxLat = lat[len(lat)-1]
	}
	say(fmt.Sprintf("stats %d %d %d %d", pct(0.50), pct(0.99), maxLat, len(lat)))
	return 0
}

// benchSeq returns the seq and t of a bench event's payload ({"seq":N,"t":T}), found
// where the canonical encoding puts them, or by decoding the JSON when it is not there.
func benchSeq(data []byte) (seq int, t int64, ok bool) {
	const key = `"payload":{"seq":`
	if i := bytes.Index(data, []byte(key)); i >= 0 {
		rest := data[i+len(key):]
		if j := bytes.Index(rest, []byte(`,"t":`)); j > 0 {
			s, err1 := strconv.Atoi(string(rest[:j]))
			rest = rest[j+len(`,"t":`):]
			if k := bytes.IndexByte(rest, '}'); k > 0 {
				v, err2 := strconv.ParseInt(string(rest[:k]), 10, 64)
				if err1 == nil && err2 == nil {
					return s, v, true
				}
			}
		}
	}
	var ev struct {
		Payload struct {
			Seq int   `json:"seq"`
			T   int64 `json:"t"`
		} `json:"payload"`
	}
	if json.Unmarshal(data, &ev) != nil || ev.Payload.Seq == 0 {
		return 0, 0, false
	}
	return ev.Payload.Seq, ev.Payload.T, true
}
