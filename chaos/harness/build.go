package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// packages are the binaries the harness can build, by name.
var packages = map[string]string{
	"pulseboard": "github.com/pulseboard/pulseboard/cmd/pulseboard", // broker, seed, migrate, run
	"ingestor":   "github.com/pulseboard/pulseboard/ingestor/cmd/ingestor",
	"consumer":   "github.com/pulseboard/pulseboard/consumer/cmd/consumer",
	"alerter":    "github.com/pulseboard/pulseboard/alerter/cmd/alerter",
	"api":        "github.com/pulseboard/pulseboard/api/cmd/api",
}

var (
	binMu  sync.Mutex
	binDir string
	built  = map[string]*buildOnce{}
)

type buildOnce struct {
	once sync.Once
	path string
	err  error
}

// Bin returns the path of a PulseBoard binary built with the failpoints build tag
// (`go build -tags failpoints`), building it on first use in this test binary: name is
// one of pulseboard, ingestor, consumer, alerter, api. CHAOS_RACE=1 builds them with the
// race detector too; CHAOS_BIN_<NAME> (e.g. CHAOS_BIN_API) names a prebuilt binary to
// use instead. Call Cleanup from TestMain to remove them.
func Bin(t testing.TB, name string) string {
	t.Helper()
	pkg, ok := packages[name]
	if !ok {
		t.Fatalf("harness: no binary %q", name)
	}
	binMu.Lock()
	if binDir == "" {
		dir, err := os.MkdirTemp("", "pulseboard-chaos-bin-")
		if err != nil {
			binMu.Unlock()
			t.Fatalf("harness: %v", err)
		}
		binDir = dir
	}
	b := built[name]
	if b == nil {
		b = &buildOnce{path: filepath.Join(binDir, name)}
		built[name] = b
	}
	binMu.Unlock()
	b.once.Do(func() {
		// CHAOS_BIN_<NAME> (CHAOS_BIN_API, …) runs a binary built elsewhere instead, to
		// measure another version of a service (R16 compares with the code before a fix).
		if path := os.Getenv("CHAOS_BIN_" + strings.ToUpper(name)); path != "" {
			b.path = path
			t.Logf("harness: using %s for %s (CHAOS_BIN_%s)", path, name, strings.ToUpper(name))
			return
		}
		args := []string{"build", "-tags", "failpoints", "-o", b.path}
		if os.Getenv("CHAOS_RACE") == "1" {
			args = append(args, "-race")
		}
		start := time.Now()
		out, err := exec.Command("go", append(args, pkg)...).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build -tags failpoints %s: %v\n%s", pkg, err, out)
			return
		}
		t.Logf("harness: built %s with -tags failpoints in %s", name, time.Since(start).Round(100*time.Millisecond))
	})
	if b.err != nil {
		t.Fatalf("harness: %v", b.err)
	}
	return b.path
}

// Cleanup removes the binaries Bin built. Call it from TestMain after m.Run.
func Cleanup() {
	binMu.Lock()
	defer binMu.Unlock()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
		binDir = ""
	}
}
