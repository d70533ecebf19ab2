package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProcSpec describes a process to run.
type ProcSpec struct {
	// Name is how logs, errors and the report call the process ("consumer", "broker"…).
	Name string
	// Bin and Args are the command line; Env the complete environment.
	Bin  string
	Args []string
	Env  []string
	// Dir is the working directory; a fresh temporary directory when empty (so no
	// stray .env file is read).
	Dir string
	// AdminURL, when set, is the process's admin server (http://host:port): Ready
	// polls its /readyz, and the sampler scrapes its /metrics.
	AdminURL string
	// Ready, when set, replaces the /readyz poll: it reports whether the process is
	// ready to be used.
	Ready func() bool
	// Metrics are gauges the sampler records the maximum of, besides go_goroutines.
	Metrics []string
}

// ProcStats are what the sampler saw of a process over all its incarnations.
type ProcStats struct {
	// Starts counts incarnations; Kills the SIGKILLs (by the harness or a failpoint).
	Starts int `json:"starts"`
	Kills  int `json:"kills"`
	// PeakRSSBytes is the largest VmHWM (peak resident set) of any incarnation.
	PeakRSSBytes int64 `json:"peakRssBytes"`
	// MaxGoroutines is the largest go_goroutines scraped (0 without an admin URL).
	MaxGoroutines float64 `json:"maxGoroutines"`
	// Max holds the largest value scraped of each of ProcSpec.Metrics.
	Max map[string]float64 `json:"max,omitempty"`
}

// Proc is a service process under test. It can be killed, stopped and started again
// with the same command line; its output is kept across incarnations.
type Proc struct {
	t    testing.TB
	spec ProcSpec
	logs *logBuffer

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current incarnation has exited
	waitErr error
	stats   ProcStats
	stopped bool // the test has ended: no more starts
}

// StartProc starts a process and registers its end (SIGKILL) with the test's cleanup.
// It does not wait for readiness; see WaitReady.
func StartProc(t testing.TB, spec ProcSpec) *Proc {
	t.Helper()
	if spec.Dir == "" {
		spec.Dir = t.TempDir()
	}
	p := &Proc{t: t, spec: spec, logs: newLogBuffer(8 << 20)}
	p.stats.Max = map[string]float64{}
	t.Cleanup(p.cleanup)
	p.Start()
	return p
}

// Name returns the process's name.
func (p *Proc) Name() string { return p.spec.Name }

// AdminURL returns the admin server's URL ("" when it has none).
func (p *Proc) AdminURL() string { return p.spec.AdminURL }

// Start starts a new incarnation; the previous one must have exited.
func (p *Proc) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		p.t.Fatalf("%s: Start after the test ended", p.spec.Name)
	}
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			p.t.Fatalf("%s: Start while it is still running", p.spec.Name)
		}
	}
	cmd := exec.Command(p.spec.Bin, p.spec.Args...)
	cmd.Env = append([]string{}, p.spec.Env...)
	cmd.Dir = p.spec.Dir
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	// Its own process group, so that a Ctrl-C of the test run does not reach it twice;
	// and killed by the kernel if the test binary dies without running its cleanups (a
	// test timeout panics past them).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.stats.Starts++
	fmt.Fprintf(p.logs, "=== harness: start #%d of %s\n", p.stats.Starts, p.spec.Name)
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("%s: starting %s: %v", p.spec.Name, p.spec.Bin, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		fmt.Fprintf(p.logs, "=== harness: %s exited: %v\n", p.spec.Name, exitString(err))
		close(done)
	}()
	go p.sample(cmd.Process.Pid, done)
}

// PID returns the current incarnation's process id.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Done is closed when the current incarnation has exited.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Running reports whether the current incarnation is alive.
func (p *Proc) Running() bool {
	select {
	case <-p.Done():
		return false
	default:
		return true
	}
}

// ExitErr is the current incarnation's exit (nil while running or after status 0).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Killed reports whether the current incarnation ended by SIGKILL.
func (p *Proc) Killed() bool {
	var ee *exec.ExitError
	if !errors.As(p.ExitErr(), &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// Kill sends SIGKILL and waits for the exit (a no-op when it has exited already).
func (p *Proc) Kill() {
	p.t.Helper()
	if !p.Running() {
		return
	}
	p.readHWM() // the last chance to see this incarnation's peak
	p.mu.Lock()
	proc := p.cmd.Process
	p.stats.Kills++
	p.mu.Unlock()
	_ = proc.Signal(syscall.SIGKILL)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s did not die within 30 s of SIGKILL", p.spec.Name)
	}
}

// Pause freezes the process with SIGSTOP: its sockets stay open and connections to it
// are accepted by the kernel but never answered, like a hung server or a network
// partition (the harder variant of "down"). Resume undoes it; the test's end resumes
// and kills it.
func (p *Proc) Pause() { p.signal(syscall.SIGSTOP) }

// Resume continues a process frozen by Pause.
func (p *Proc) Resume() { p.signal(syscall.SIGCONT) }

func (p *Proc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.mu.Lock()
	proc := p.cmd.Process
	p.mu.Unlock()
	if err := proc.Signal(sig); err != nil {
		p.t.Fatalf("%s: sending %v: %v", p.spec.Name, sig, err)
	}
}

// Term sends SIGTERM and waits up to bound for the exit. It returns how long the exit
// took and the exit error (nil for status 0); past bound the process is killed and an
// error says so.
func (p *Proc) Term(bound time.Duration) (time.Duration, error) {
	p.t.Helper()
	if !p.Running() {
		return 0, fmt.Errorf("%s was not running", p.spec.Name)
	}
	p.readHWM()
	start := time.Now()
	p.mu.Lock()
	proc := p.cmd.Process
	p.mu.Unlock()
	_ = proc.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
		return time.Since(start), p.ExitErr()
	case <-time.After(bound):
		p.Kill()
		return time.Since(start), fmt.Errorf("%s did not exit within %s of SIGTERM (killed)", p.spec.Name, bound)
	}
}

// WaitExit waits up to timeout for the current incarnation to exit on its own (a
// failpoint) and fails the test if it does not.
func (p *Proc) WaitExit(timeout time.Duration) {
	p.t.Helper()
	select {
	case <-p.Done():
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s; last logs:\n%s", p.spec.Name, timeout, p.LogTail(40))
	}
}

// WaitFailpointKill waits for the current incarnation to die by SIGKILL at the failpoint
// name (its "failpoint NAME: kill" line must be in the logs), and fails the test
// otherwise: a fault test whose fault happened elsewhere, or not at all, proves nothing.
func (p *Proc) WaitFailpointKill(name string, timeout time.Duration) {
	p.t.Helper()
	p.WaitExit(timeout)
	if !p.Killed() {
		p.t.Fatalf("%s exited with %v, not by SIGKILL at failpoint %s; last logs:\n%s", p.spec.Name, exitString(p.ExitErr()), name, p.LogTail(40))
	}
	if !strings.Contains(p.logs.String(), "failpoint "+name+": kill") {
		p.t.Fatalf("%s was killed, but not by failpoint %s; last logs:\n%s", p.spec.Name, name, p.LogTail(40))
	}
	p.mu.Lock()
	p.stats.Kills++
	p.mu.Unlock()
}

// Restart kills the process if it runs, starts it again and waits until it is ready.
func (p *Proc) Restart() {
	p.t.Helper()
	p.Kill()
	p.Start()
	p.WaitReady(90 * time.Second)
}

// WaitReady waits until the process is ready (ProcSpec.Ready, else the admin /readyz
// answers 200), failing the test if it exits first or the timeout passes.
func (p *Proc) WaitReady(timeout time.Duration) {
	p.t.Helper()
	ready := p.spec.Ready
	if ready == nil && p.spec.AdminURL != "" {
		ready = func() bool { return httpStatus(p.spec.AdminURL+"/readyz") == http.StatusOK }
	}
	if ready == nil {
		return
	}
	deadline := time.Now().Add(timeout)
	done := p.Done()
	for !ready() {
		select {
		case <-done:
			p.t.Fatalf("%s exited before becoming ready (%v); last logs:\n%s", p.spec.Name, exitString(p.ExitErr()), p.LogTail(60))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s was not ready within %s; last logs:\n%s", p.spec.Name, timeout, p.LogTail(60))
		}
	}
}

// Logs returns everything the process wrote (all incarnations, with "=== harness"
// separator lines), bounded to the last 8 MiB.
func (p *Proc) Logs() string { return p.logs.String() }

// LogTail returns the last n lines of Logs.
func (p *Proc) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.logs.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitLog waits until the logs contain substr.
func (p *Proc) WaitLog(substr string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.logs.String(), substr) {
		if time.Now().After(deadline) {
			p.t.Fatalf("%s never logged %q within %s; last logs:\n%s", p.spec.Name, substr, timeout, p.LogTail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Metric scrapes the admin /metrics and returns the value of the series whose text
// before the value is exactly series (a name, or a name with its labels as exposed,
// e.g. `pulseboard_consumer_dlq_messages_total{code="INVALID_JSON"}`).
func (p *Proc) Metric(series string) (float64, bool) {
	if p.spec.AdminURL == "" {
		return 0, false
	}
	m, err := scrape(p.spec.AdminURL)
	if err != nil {
		return 0, false
	}
	v, ok := m[series]
	return v, ok
}

// Stats returns what the sampler saw so far.
func (p *Proc) Stats() ProcStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Max = maps.Clone(p.stats.Max)
	return s
}

// sample records the peak RSS every 200 ms and, with an admin URL, go_goroutines and
// the extra gauges every second, until the incarnation exits.
func (p *Proc) sample(pid int, done <-chan struct{}) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		p.recordHWM(pid)
		if p.spec.AdminURL == "" || i%5 != 0 {
			continue
		}
		m, err := scrape(p.spec.AdminURL)
		if err != nil {
			continue
		}
		p.mu.Lock()
		if g, ok := m["go_goroutines"]; ok && g > p.stats.MaxGoroutines {
			p.stats.MaxGoroutines = g
		}
		for _, name := range p.spec.Metrics {
			if v, ok := m[name]; ok && v > p.stats.Max[name] {
				p.stats.Max[name] = v
			}
		}
		p.mu.Unlock()
	}
}

func (p *Proc) readHWM() {
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	p.recordHWM(pid)
}

// recordHWM reads VmHWM, the peak resident set size, from /proc/PID/status.
func (p *Proc) recordHWM(pid int) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return
		}
		p.mu.Lock()
		if b := kb << 10; b > p.stats.PeakRSSBytes {
			p.stats.PeakRSSBytes = b
		}
		p.mu.Unlock()
		return
	}
}

// cleanup ends the process when the test ends (SIGKILL: the test is over, nothing is
// verified any more) and shows the end of its logs if the test failed.
func (p *Proc) cleanup() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	if p.Running() {
		p.mu.Lock()
		proc := p.cmd.Process
		p.mu.Unlock()
		_ = proc.Signal(syscall.SIGKILL)
		<-p.Done()
	}
	if p.t.Failed() {
		p.t.Logf("--- last logs of %s:\n%s", p.spec.Name, p.LogTail(80))
	}
}

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func httpStatus(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// scrape reads a Prometheus text exposition into series → value.
func scrape(adminURL string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// logBuffer keeps the last max bytes written to it; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func newLogBuffer(max int) *logBuffer { return &logBuffer{max: max} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if over := l.b.Len() - l.max; over > 0 {
		l.b.Next(over + l.max/4) // drop the oldest quarter at once
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// SetEnv adds variables to the environment of the next incarnations (a later value of
// a variable wins over an earlier one), e.g. SetEnv("PULSEBOARD_FAILPOINTS=") to start a
// successor without the failpoint that killed its predecessor.
func (p *Proc) SetEnv(vars ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.spec.Env = append(append([]string{}, p.spec.Env...), vars...)
}

// LabelValues returns the values of label among the series of metric that the process
// exports now (for example the partitions a consumer has read, from
// pulseboard_consumer_lag_messages{partition="…"}).
func (p *Proc) LabelValues(metric, label string) []string {
	if p.spec.AdminURL == "" {
		return nil
	}
	m, err := scrape(p.spec.AdminURL)
	if err != nil {
		return nil
	}
	var out []string
	prefix := metric + "{"
	for series := range m {
		rest, ok := strings.CutPrefix(series, prefix)
		if !ok {
			continue
		}
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			if v, ok := strings.CutPrefix(kv, label+"=\""); ok {
				out = append(out, strings.TrimSuffix(v, "\""))
			}
		}
	}
	sort.Strings(out)
	return out
}
