package main_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv"
)

// The all-in-one's RSS over a long sustained ingest (issue 16: "the embedded broker keeps
// every byte in memory"): `pulseboard run` (embedded broker with its retention) under
// `pulseboard loadgen` at PULSEBOARD_RSS_SOAK_RATE events/s (default 5,000) for
// PULSEBOARD_RSS_SOAK (a duration, e.g. 30m; unset: skipped), its RSS sampled every 10 s
// from /proc (with the broker's retained bytes, the heap, the consumer lag from /metrics).
// It reports first/median/max/last RSS, requires the last 10 minutes (the second half of
// a shorter run) not to grow by more than 10 % (the peak of the window's last third
// against that of its first third: RSS is a sawtooth), and `pulseboard verify` to find
// every acknowledged event stored exactly once.
//
//	PULSEBOARD_RSS_SOAK=30m go test -run TestAllInOneRSSIsFlatUnderSustainedIngest -timeout 60m -v ./cmd/pulseboard
func TestAllInOneRSSIsFlatUnderSustainedIngest(t *testing.T) {
	raw := os.Getenv("PULSEBOARD_RSS_SOAK")
	if raw == "" {
		t.Skip("set PULSEBOARD_RSS_SOAK to a duration (e.g. 30m) to run the RSS soak")
	}
	dur, err := time.ParseDuration(raw)
	require.NoError(t, err)
	rate := 5000
	if v := os.Getenv("PULSEBOARD_RSS_SOAK_RATE"); v != "" {
		rate, err = strconv.Atoi(v)
		require.NoError(t, err)
	}
	in := start(t)
	pid := in.cmd.Process.Pid
	ledger := filepath.Join(t.TempDir(), "soak.ledger")
	lg := exec.Command(binary, "loadgen", "-url", in.ingest, "-keys", in.apiKey, "-mode", "batch", "-batch", "100",
		"-rate", strconv.Itoa(rate), "-duration", dur.String(), "-ledger", ledger, "-progress", "0", "-json")
	lg.Env = in.env
	var lgOut, lgErr testenv.SyncBuffer
	lg.Stdout, lg.Stderr = &lgOut, &lgErr
	began := time.Now()
	require.NoError(t, lg.Start())
	lgDone := make(chan error, 1)
	go func() { lgDone <- lg.Wait() }()

	type sample struct {
		at  time.Duration
		rss int64 // bytes
	}
	var samples []sample
	take := func() {
		rss, err := rssOf(pid)
		require.NoError(t, err)
		samples = append(samples, sample{time.Since(began), rss})
		m := metricValues(in.admin, "pulseboard_ingest_broker_retained_bytes", "go_memstats_heap_inuse_bytes",
			"pulseboard_ingest_inflight_bytes", "pulseboard_ingest_broker_produce_refused_total", "pulseboard_consumer_lag_messages")
		t.Logf("t=%s rss=%.1f MiB heap_inuse=%.1f MiB broker_retained=%.1f MiB ingest_inflight=%.1f MiB consumer_lag=%.0f refused=%.0f",
			time.Since(began).Round(time.Second), float64(rss)/(1<<20), m["go_memstats_heap_inuse_bytes"]/(1<<20),
			m["pulseboard_ingest_broker_retained_bytes"]/(1<<20), m["pulseboard_ingest_inflight_bytes"]/(1<<20),
			m["pulseboard_consumer_lag_messages"], m["pulseboard_ingest_broker_produce_refused_total"])
	}
	take()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-lgDone:
			require.NoError(t, err, "loadgen: %s", lgErr.String())
			break wait
		case <-tick.C:
			take()
		case <-time.After(dur + 5*time.Minute):
			t.Fatal("loadgen did not finish")
		}
	}
	take()
	t.Logf("loadgen: %s", strings.TrimSpace(lgOut.String()))

	mibs := func(xs []int64) string {
		var parts []string
		for _, x := range xs {
			parts = append(parts, fmt.Sprintf("%.1f", float64(x)/(1<<20)))
		}
		return strings.Join(parts, " ")
	}
	all := make([]int64, len(samples))
	for i, s := range samples {
		all[i] = s.rss
	}
	sorted := append([]int64(nil), all...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	t.Logf("RSS (MiB) over %s at %d events/s: first %s, median %s, max %s, last %s (%d samples)", dur, rate,
		mibs(all[:1]), mibs(sorted[len(sorted)/2:len(sorted)/2+1]), mibs(sorted[len(sorted)-1:]), mibs(all[len(all)-1:]), len(all))

	// The window: the last 10 minutes, or the second half of a shorter run.
	end := samples[len(samples)-1].at
	window := min(10*time.Minute, end/2)
	var w []sample
	for _, s := range samples {
		if s.at >= end-window {
			w = append(w, s)
		}
	}
	require.GreaterOrEqual(t, len(w), 6, "too few samples in the window")
	// RSS is a sawtooth (the broker trims, the GC returns memory): compare the peaks of the
	// window's first and last thirds.
	peak := func(ss []sample) int64 {
		var m int64
		for _, s := range ss {
			m = max(m, s.rss)
		}
		return m
	}
	third := len(w) / 3
	head, tail := peak(w[:third]), peak(w[len(w)-third:])
	growth := float64(tail-head) / float64(head)
	t.Logf("last %s: peak %.1f MiB in its first third, %.1f MiB in its last (%+.1f %%)", window.Round(time.Second),
		float64(head)/(1<<20), float64(tail)/(1<<20), 100*growth)
	require.LessOrEqual(t, growth, 0.10, "the all-in-one's RSS grew by more than 10 %% over the last %s", window)

	verify := exec.Command(binary, "verify", "-ledger", ledger, "-db", dbURLOf(in), "-wait", "5m")
	verify.Env = in.env
	out, err := verify.CombinedOutput()
	require.NoError(t, err, "verify: %s", out)
	t.Logf("verify: %s", strings.TrimSpace(string(out)))
}

// rssOf reads a process's resident set size from /proc.
func rssOf(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// dbURLOf is the DATABASE_URL the instance runs with.
func dbURLOf(in *instance) string {
	for i := len(in.env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(in.env[i], "DATABASE_URL="); ok {
			return v
		}
	}
	return ""
}

// metricValues scrapes an admin /metrics and sums each named metric over its series
// (missing: 0).
func metricValues(adminURL string, names ...string) map[string]float64 {
	out := map[string]float64{}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(adminURL + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return out
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
			_, rest, _ = strings.Cut(line[strings.IndexByte(line, '}'):], " ")
		}
		if !want[name] {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] += v
		}
	}
	return out
}
