package client

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A goroutine leak check for the client's tests (what go.uber.org/goleak does, in the few
// lines this package needs, so that the SDK's module requires nothing for its tests).

// goroutines returns the stacks of the running goroutines by their header line
// ("goroutine 7 [chan receive]:" without the state), the caller's own excluded.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := make(map[string]string)
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 {
			continue // the caller
		}
		id, _, _ := strings.Cut(g, " [")
		out[id] = g
	}
	return out
}

// ignored reports the goroutines of the test framework and the runtime, which are
// not the client's.
func ignored(stack string) bool {
	for _, s := range []string{"testing.(*T).Run", "testing.tRunner", "testing.(*M).", "testing.runTests",
		"os/signal.signal_recv", "runtime.ensureSigM", "runtime.goexit0"} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

// leakedSince returns, after waiting up to 5 s for them to end, the goroutines that
// started after before was taken and still run.
func leakedSince(before map[string]string) []string {
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		leaked = leaked[:0]
		for id, stack := range goroutines() {
			if _, old := before[id]; !old && !ignored(stack) {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func verifyNone(t testing.TB, before map[string]string) {
	t.Helper()
	if leaked := leakedSince(before); len(leaked) > 0 {
		t.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
}

func TestMain(m *testing.M) {
	before := goroutines()
	code := m.Run()
	if code == 0 {
		if leaked := leakedSince(before); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests:\n%s\n", strings.Join(leaked, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// TestLeakCheckSeesALeak: the check above finds a goroutine left running.
func TestLeakCheckSeesALeak(t *testing.T) {
	before := goroutines()
	stop := make(chan struct{})
	go func() { <-stop }()
	rec := &recorder{TB: t}
	verifyNone(rec, before)
	close(stop)
	if !rec.failed {
		t.Fatal("a running goroutine was not reported")
	}
	verifyNone(t, before)
}
