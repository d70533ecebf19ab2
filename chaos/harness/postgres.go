package harness

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/migrations"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Postgres is a PostgreSQL server of the test's own: initdb into a temporary directory,
// `postgres` on a fixed loopback port (no Unix socket), so that the test can stop it,
// keep it down and start it again (F11) without touching the shared test server. Its
// data directory survives restarts. It is stopped (fast shutdown) when the test ends.
//
// The binaries are PG_BIN/{initdb,postgres} when PG_BIN is set, else the newest
// /usr/lib/postgresql/*/bin (the Debian package), else initdb and postgres on PATH.
// PostgreSQL refuses to run as root, so as root the server runs as the "postgres"
// user (setpriv, which execs in place: the process the harness signals is the
// postmaster itself) and its directory is handed to that user.
type Postgres struct {
	*Proc
	Port int
	// URL is the server's "postgres" database (superuser postgres, trust auth).
	URL string
}

// PostgresBinDir returns the directory of initdb and postgres ("" if none is found).
func PostgresBinDir() string {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// StartPostgres initialises and starts a server and waits until it accepts
// connections. The test fails when no PostgreSQL binaries are installed (never a silent
// skip: .ci/run installs the postgresql package).
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := PostgresBinDir()
	if bin == "" {
		t.Fatal("harness: no PostgreSQL server binaries (initdb, postgres); set PG_BIN or install the postgresql package")
	}
	base := t.TempDir()
	var cred *syscall.Credential
	var setpriv []string
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("harness: running as root, PostgreSQL needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// t.TempDir's parent is private to root: let the postgres user through it.
		if err := os.Chmod(filepath.Dir(base), 0o711); err != nil {
			t.Fatalf("harness: %v", err)
		}
		if err := os.Chown(base, uid, gid); err != nil {
			t.Fatalf("harness: %v", err)
		}
		setpriv = []string{"--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", "--"}
	}
	data := filepath.Join(base, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.Dir = base
	initdb.Env = append(os.Environ(), "TZ=UTC")
	if cred != nil {
		initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("harness: initdb: %v\n%s", err, out)
	}

	port := Port(t)
	pg := &Postgres{Port: port, URL: fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", Addr(port))}
	args := []string{"-D", data, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		// Only the process is stopped or killed in these tests, never the machine: what
		// was written to the kernel survives, so fsync buys nothing here and costs the
		// shared disk. synchronous_commit stays on: without it a commit is acknowledged
		// before its WAL leaves PostgreSQL's memory, and an immediate shutdown loses it.
		"-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=64MB",
		"-c", "log_min_messages=warning", "-c", "log_connections=off"}
	spec := ProcSpec{Name: "postgres", Bin: filepath.Join(bin, "postgres"), Args: args, Dir: base,
		Env: append(os.Environ(), "TZ=UTC"), Ready: pg.ready}
	if setpriv != nil {
		spec.Bin, spec.Args = "setpriv", append(append(setpriv, filepath.Join(bin, "postgres")), args...)
	}
	pg.Proc = StartProc(t, spec)
	// Registered after StartProc's SIGKILL, so it runs first: a fast shutdown leaves no
	// orphaned backends or shared memory behind.
	t.Cleanup(func() { pg.Stop() })
	pg.WaitReady(60 * time.Second)
	return pg
}

func (pg *Postgres) ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		return false
	}
	defer c.Close(ctx)
	return c.Ping(ctx) == nil
}

// Stop shuts the server down with a fast shutdown (SIGINT: clients are disconnected,
// transactions rolled back, a checkpoint written) and waits until it has exited. It is
// a no-op when the server is not running.
func (pg *Postgres) Stop() { pg.signal(syscall.SIGINT) }

// Crash shuts the server down with an immediate shutdown (SIGQUIT: every process quits
// at once, no checkpoint; the next start runs crash recovery from the WAL), the
// closest to kill -9 that PostgreSQL supports without orphaning its backends.
func (pg *Postgres) Crash() { pg.signal(syscall.SIGQUIT) }

func (pg *Postgres) signal(sig syscall.Signal) {
	pg.t.Helper()
	if !pg.Running() {
		return
	}
	pg.readHWM()
	_ = syscall.Kill(pg.PID(), sig)
	select {
	case <-pg.Done():
	case <-time.After(60 * time.Second):
		pg.t.Errorf("postgres did not exit within 60 s of %s; killing it", sig)
		pg.Kill()
	}
}

// Start starts the stopped server again on its port and data directory and waits until
// it accepts connections.
func (pg *Postgres) Start() {
	pg.t.Helper()
	pg.Proc.Start()
	pg.WaitReady(2 * time.Minute)
}

// Restart crashes the server (immediate shutdown) and starts it again at once.
func (pg *Postgres) Restart() {
	pg.t.Helper()
	pg.Crash()
	pg.Start()
}

// NewDB creates database name on the server, migrated like the shared test server's
// (migrations, then today's partitions), and returns its URL and a pool, closed when
// the test ends. The pool reconnects by itself after a restart.
func (pg *Postgres) NewDB(t testing.TB, name string) (string, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	conn.Close(ctx)
	if err != nil {
		t.Fatalf("harness: creating database %s: %v", name, err)
	}
	url := strings.Replace(pg.URL, "/postgres?", "/"+name+"?", 1)
	logger := slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := migrations.Up(ctx, url, logger); err != nil {
		t.Fatalf("harness: migrating %s: %v", name, err)
	}
	pool, err := pgstore.Open(ctx, url, pgstore.PoolOptions{ApplicationName: "chaos"})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(pool.Close)
	now := time.Now()
	if _, err := pgstore.EnsurePartitions(ctx, pool, now.AddDate(0, 0, -1), now.AddDate(0, 0, 7)); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return url, pool
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// DB is an Options.DB for a cluster on this server: database name, created by NewDB.
func (pg *Postgres) DB(name string) func(testing.TB) (string, *pgxpool.Pool) {
	return func(t testing.TB) (string, *pgxpool.Pool) { return pg.NewDB(t, name) }
}

// WaitStored waits until at least n events are stored and returns how long that took;
// it fails the test after timeout. Queries that fail (the database is down) are retried.
func (c *Cluster) WaitStored(n int64, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var have int64
	for time.Since(start) < timeout {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&have)
		cancel()
		if err == nil && have >= n {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("%d events stored after %s, want at least %d", have, timeout, n)
	return 0
}
