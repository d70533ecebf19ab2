package main_test

// Exposure (issue 16, item 8): admin ports bind 127.0.0.1 unless ADMIN_HOST says
// otherwise, /debug/pprof/ answers 404 unless ADMIN_PPROF=true, and the test fakes (the
// kfake broker, miniredis) are linked into the all-in-one only, never into the
// standalone services.

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// testFakes are the import paths (and path prefixes) of the in-memory stand-ins that
// only the all-in-one and the tests may link.
var testFakes = []string{"github.com/twmb/franz-go/pkg/kfake", "github.com/alicebob/miniredis"}

// standaloneMains are the standalone services' main packages, by module directory.
var standaloneMains = map[string]string{
	"ingestor": "./ingestor/cmd/ingestor",
	"consumer": "./consumer/cmd/consumer",
	"alerter":  "./alerter/cmd/alerter",
	"api":      "./api/cmd/api",
}

// goListDeps runs `go list -deps` in dir with extra environment and returns the import
// paths the package links.
func goListDeps(t *testing.T, dir string, env []string, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	var stderr string
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = string(ee.Stderr)
	}
	require.NoError(t, err, "go list -deps %v in %s: %s", args, dir, stderr)
	deps := strings.Fields(string(out))
	require.Greater(t, len(deps), 50, "go list -deps %v listed too little", args)
	return deps
}

// fakesIn returns the test fakes among deps.
func fakesIn(deps []string) []string {
	var found []string
	for _, d := range deps {
		for _, f := range testFakes {
			if d == f || strings.HasPrefix(d, f+"/") {
				found = append(found, d)
			}
		}
	}
	return found
}

// linksFake reports whether deps contain the fake f (or a package under it).
func linksFake(deps []string, f string) bool {
	for _, d := range deps {
		if d == f || strings.HasPrefix(d, f+"/") {
			return true
		}
	}
	return false
}

// `go list -deps` of each standalone service lists neither kfake nor miniredis, built as
// `make build` and deploy/Dockerfile do (the workspace), as chaos does (-tags failpoints)
// and as each module stands alone (GOWORK=off); the all-in-one lists both, so the check
// cannot pass vacuously.
func TestExposureTestFakesOnlyInTheAllInOne(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	workspace := []string{"GOWORK=" + filepath.Join(root, "go.work")}
	for _, tags := range []string{"", "failpoints"} {
		args := func(pkg string) []string {
			if tags == "" {
				return []string{pkg}
			}
			return []string{"-tags", tags, pkg}
		}
		for name, pkg := range standaloneMains {
			deps := goListDeps(t, root, workspace, args(pkg)...)
			require.Empty(t, fakesIn(deps), "bin/%s links test fakes (tags %q)", name, tags)
		}
		all := goListDeps(t, root, workspace, args("./cmd/pulseboard")...)
		for _, f := range testFakes {
			require.True(t, linksFake(all, f), "the all-in-one no longer links %s (tags %q): is the check still meaningful?", f, tags)
		}
	}
	// Each module on its own, as `make tidy` sees it.
	for name := range standaloneMains {
		deps := goListDeps(t, filepath.Join(root, name), []string{"GOWORK=off"}, "./cmd/"+name)
		require.Empty(t, fakesIn(deps), "%s (GOWORK=off) links test fakes", name)
	}
	all := goListDeps(t, filepath.Join(root, "cmd/pulseboard"), []string{"GOWORK=off"}, ".")
	for _, f := range testFakes {
		require.True(t, linksFake(all, f), "the all-in-one (GOWORK=off) no longer links %s", f)
	}
}

// Every binary reads ADMIN_HOST with the default 127.0.0.1 and ADMIN_PPROF with the
// default false (containers set ADMIN_HOST=0.0.0.0 explicitly: the deploy tests).
func TestExposureAdminDefaults(t *testing.T) {
	t.Parallel()
	cat := envCatalog(t)
	for _, name := range []string{"ADMIN_HOST", "ADMIN_PPROF"} {
		require.Contains(t, cat, name)
	}
	for comp := range adminPorts {
		host, ok := cat["ADMIN_HOST"].Defaults[comp]
		assert(t, ok, "%s does not read ADMIN_HOST", comp)
		assert(t, host == "127.0.0.1", "%s: ADMIN_HOST defaults to %q, want 127.0.0.1", comp, host)
		pprof, ok := cat["ADMIN_PPROF"].Defaults[comp]
		assert(t, ok, "%s does not read ADMIN_PPROF", comp)
		assert(t, pprof == "false", "%s: ADMIN_PPROF defaults to %q, want false", comp, pprof)
	}
}

// startForAdmin starts bin in an empty directory (no .env) with the environment minus
// every ADMIN_* variable, plus env, and returns the address its admin server reports.
func startForAdmin(t *testing.T, name, bin string, env ...string) string {
	t.Helper()
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ADMIN_") {
			base = append(base, kv)
		}
	}
	p := startProcIn(t, t.TempDir(), name, bin, append(append(base, "ADMIN_PORT=0"), env...))
	deadline := time.After(60 * time.Second)
	for {
		if addr := adminAddrFromLogs(p.logs.String()); addr != "" {
			return addr
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before its admin server listened; logs:\n%s", name, p.logs.String())
		case <-deadline:
			t.Fatalf("%s: no admin server after 60 s; logs:\n%s", name, p.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// adminAddrFromLogs returns the addr of the "admin server listening" log line, "" if none.
func adminAddrFromLogs(logs string) string {
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "admin server listening" {
			return rec.Addr
		}
	}
	return ""
}

// The standalone binaries (as built by TestMain) with ADMIN_HOST and ADMIN_PPROF unset:
// the admin port listens on 127.0.0.1 and /debug/pprof/ is 404 while /healthz is served;
// ADMIN_PPROF=true serves the CPU profile scripts/bench.py takes. (The api binary's run
// is checked in-process by api/cmd/api TestRunServesAndStops; the all-in-one below.)
func TestExposureStandaloneAdminPorts(t *testing.T) {
	t.Parallel()
	dbURL, _ := pgtest.NewDB(t)
	kc := kafkatest.New(t, 1)
	suffix := kafkatest.UniqueSuffix()
	env := []string{
		"DATABASE_URL=" + dbURL, "REDIS_URL=" + redistest.URL(t), "LOG_LEVEL=info",
		"KAFKA_BROKERS=" + strings.Join(kc.Brokers, ","), "KAFKA_TOPIC=" + kc.Topic, "KAFKA_DLQ_TOPIC=" + kc.DLQTopic,
		"KAFKA_PARTITIONS=1", "CONSUMER_GROUP=pbtest-exposure-" + suffix, "ALERTER_GROUP=pbtest-exposure-alerter-" + suffix,
		"INGEST_HOST=127.0.0.1", "INGEST_PORT=0",
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	status := func(url string) int {
		t.Helper()
		resp, err := hc.Get(url)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	for name, bin := range map[string]string{"ingestor": ingestorBinary, "consumer": consumerBinary, "alerter": alerterBinary} {
		addr := startForAdmin(t, name, bin, env...)
		require.True(t, strings.HasPrefix(addr, "127.0.0.1:"), "%s: with ADMIN_HOST unset the admin port listens on %s", name, addr)
		require.Equal(t, http.StatusOK, status("http://"+addr+"/healthz"), name)
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/cmdline"} {
			require.Equal(t, http.StatusNotFound, status("http://"+addr+path), "%s: %s with ADMIN_PPROF unset", name, path)
		}
	}
	addr := startForAdmin(t, "ingestor (ADMIN_PPROF=true)", ingestorBinary, append(env, "ADMIN_PPROF=true")...)
	require.True(t, strings.HasPrefix(addr, "127.0.0.1:"), addr)
	resp, err := hc.Get("http://" + addr + "/debug/pprof/profile?seconds=1")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "ADMIN_PPROF=true serves the CPU profile")
	magic := make([]byte, 2)
	_, err = resp.Body.Read(magic)
	require.NoError(t, err)
	require.Equal(t, []byte{0x1f, 0x8b}, magic, "a pprof profile is gzip-compressed")
}

// The all-in-one with ADMIN_PPROF=true (what scripts/bench.py sets to profile it): its
// admin port is on 127.0.0.1 by default and serves /debug/pprof/.
func TestExposureAllInOnePprofWhenEnabled(t *testing.T) {
	t.Parallel()
	in := start(t, "ADMIN_PPROF=true")
	addr := adminAddrFromLogs(in.logs.String())
	if os.Getenv("ADMIN_HOST") == "" {
		require.True(t, strings.HasPrefix(addr, "127.0.0.1:"), "the all-in-one's admin port listens on %s", addr)
	}
	code, _ := get(t, in.admin+"/debug/pprof/cmdline")
	require.Equal(t, http.StatusOK, code)
}

// The Go SDK (pkg/client) is a module of its own whose graph is what it runs with: an SDK
// user's module pulls no server, test or infrastructure module (issue 19 item 4). Its
// module graph, tests included, is exactly these.
func TestSDKModuleGraphHoldsOnlyItsRuntimeDependencies(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	cmd := exec.Command("go", "list", "-m", "all")
	cmd.Dir = filepath.Join(root, "pkg", "client")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	var mods []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		mods = append(mods, strings.Fields(line)[0])
	}
	require.ElementsMatch(t, []string{"github.com/pulseboard/pulseboard/pkg/client", "github.com/google/uuid", "github.com/valyala/fastjson"}, mods)
}
