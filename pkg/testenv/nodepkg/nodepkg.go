// Package nodepkg runs Node scripts that use npm packages, for tests that drive
// PulseBoard with the real clients its users run (socket.io-client, a browser through
// playwright-core). A test directory holds a package.json with exact versions and its
// package-lock.json; Install runs `npm ci` there once per lock file (node_modules is
// ignored by git and reused while the lock is unchanged; npm's own cache makes a fresh
// clone's install quick). Node 20 and npm are on every CI machine
// (scripts/test-services.sh's machine): a missing node fails the test, never skips it.
package nodepkg

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// installTimeout bounds one npm ci (a cold npm cache downloads the packages).
const installTimeout = 5 * time.Minute

var (
	mu        sync.Mutex
	installed = map[string]bool{}
)

// Node returns the path of node, failing the test when there is none.
func Node(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node (20+) is required for this test: %v", err)
	}
	return node
}

// Install makes dir/node_modules match dir/package-lock.json (npm ci, only when the
// lock changed since the last install) and returns dir as an absolute path. Concurrent
// callers, in this process or others, wait for one install.
func Install(t testing.TB, dir string) string {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if installed[abs] {
		return abs
	}
	lock, err := os.ReadFile(filepath.Join(abs, "package-lock.json"))
	if err != nil {
		t.Fatalf("nodepkg: %v (commit the package-lock.json next to package.json)", err)
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join(abs, "node_modules", ".pulseboard-lock-sha256")

	// Other test processes (go test runs packages in parallel) may install the same
	// directory: an exclusive lock on a file beside it serialises them.
	dirSum := sha256.Sum256([]byte(abs))
	lf, err := os.OpenFile(filepath.Join(os.TempDir(), "pulseboard-nodepkg-"+hex.EncodeToString(dirSum[:8])+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Flock(int(lf.Fd()), syscall.LOCK_UN) }()

	if got, err := os.ReadFile(stamp); err == nil && string(got) == want {
		installed[abs] = true
		return abs
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("npm is required for this test: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error")
	cmd.Dir = abs
	// Packages that would download binaries at install (playwright-core does not) must
	// not: this machine reaches the registries only.
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", abs, err, out)
	}
	if err := os.WriteFile(stamp, []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	installed[abs] = true
	return abs
}
