// Package embeddedpg runs a real PostgreSQL server for the all-in-one (`pulseboard run`)
// when DATABASE_URL is unset and nothing answers at the default address, as Redis and
// Kafka fall back to embedded servers. github.com/fergusstrange/embedded-postgres
// downloads the binaries from Maven Central (io.zonky.test.postgres) once; they and the
// cluster live under one directory, so the data survives restarts.
//
// The server listens on 127.0.0.1 only (no Unix socket) and trusts every connection
// there, like docker-compose.yml's development PostgreSQL: the default DATABASE_URL
// (user postgres, no password) reaches it, so `pulseboard seed` and psql work too.
//
// PostgreSQL refuses to run as root. As root, everything this package does to the
// server (download, initdb, pg_ctl start and stop) therefore runs as the user nobody:
// for that while, the whole process switches its real and effective user and group ids
// to nobody's, keeping root as the saved id to switch back (account.do). Start also
// points TMPDIR at Dir meanwhile (see setTempDir). Call Start and Stop while nothing else
// in the process opens files, as the all-in-one does (first thing at start-up, last at
// shutdown). Dir must be reachable by nobody: DefaultDir picks
// /var/cache/pulseboard/postgres for root, whose home is closed to other users.
//
// Only the all-in-one may link this (the package is internal to cmd/pulseboard): the
// standalone services never start a database of their own.
package embeddedpg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	embeddedpostgres "github.com/fergusstrange/embedded-postgres"
)

// Version is the PostgreSQL the server runs: docker-compose.yml's major version.
const Version = embeddedpostgres.V16

// User is the superuser; local connections need no password.
const User = "postgres"

// Options configure Start.
type Options struct {
	// Dir holds bin-cache/ (the downloaded archive and the binaries extracted from it),
	// runtime/ (scratch, emptied at each start) and data/ (the cluster, kept across
	// starts).
	Dir string
	// BinCache replaces Dir/bin-cache (tests share one).
	BinCache string
	// Port is the port on 127.0.0.1; 0 picks a free one.
	Port int
	// Logger receives PostgreSQL's start and stop output (debug level); nil discards it.
	Logger *slog.Logger
}

// Server is a running embedded PostgreSQL.
type Server struct {
	pg     *embeddedpostgres.EmbeddedPostgres
	port   int
	dir    string
	as     *account // nil: the process's own user
	mu     sync.Mutex
	closed bool
}

// DefaultDir is where the all-in-one keeps its embedded PostgreSQL: <cacheDir>/postgres
// (PULSEBOARD_CACHE_DIR); cacheDir empty, <the user cache directory>/pulseboard/postgres
// (~/.cache/pulseboard/postgres), or /var/cache/pulseboard/postgres for root.
func DefaultDir(cacheDir string) (string, error) {
	if cacheDir != "" {
		return filepath.Join(cacheDir, "postgres"), nil
	}
	if os.Geteuid() == 0 {
		return "/var/cache/pulseboard/postgres", nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for the embedded PostgreSQL (set PULSEBOARD_CACHE_DIR): %w", err)
	}
	return filepath.Join(base, "pulseboard", "postgres"), nil
}

// hbaConf replaces the pg_hba.conf initdb writes (password authentication): the server
// listens on 127.0.0.1 only, and trusts it as the development compose file does.
const hbaConf = `# Written by pulseboard at each start of its embedded PostgreSQL (development only):
# it listens on 127.0.0.1 and trusts local connections, as docker-compose.yml's does.
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
`

// Start starts the server, downloading PostgreSQL first when Dir has no copy yet
// (about 15 MB), and creating the cluster when Dir has none. It returns once the server
// accepts connections.
func Start(o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("embedded PostgreSQL: no directory")
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("embedded PostgreSQL: port %d is not a port number", o.Port)
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	binCache := filepath.Join(dir, "bin-cache")
	if o.BinCache != "" {
		if binCache, err = filepath.Abs(o.BinCache); err != nil {
			return nil, err
		}
	}
	binaries := filepath.Join(binCache, fmt.Sprintf("%s-%s-%s", Version, runtime.GOOS, runtime.GOARCH))
	as, err := unprivileged()
	if err != nil {
		return nil, err
	}
	if as != nil {
		for _, d := range []string{dir, binCache} {
			if err := handOver(d, as); err != nil {
				return nil, err
			}
		}
	}
	s := &Server{dir: dir, as: as, port: o.Port}
	err = s.asUser(func() error {
		for _, d := range []string{dir, binCache} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return s.unreachable(d, err)
			}
		}
		hba := filepath.Join(dir, "pg_hba.conf")
		if err := os.WriteFile(hba, []byte(hbaConf), 0o600); err != nil {
			return s.unreachable(dir, err)
		}
		if s.port == 0 {
			if s.port, err = freePort(); err != nil {
				return err
			}
		}
		cfg := embeddedpostgres.DefaultConfig().
			Version(Version).
			Port(uint32(s.port)).
			Username(User).
			Password(User). // initdb wants one; pg_hba.conf trusts 127.0.0.1 anyway
			CachePath(binCache).
			BinariesPath(binaries).
			RuntimePath(filepath.Join(dir, "runtime")).
			DataPath(filepath.Join(dir, "data")).
			Locale("C").
			Encoding("UTF8").
			StartTimeout(60 * time.Second).
			Logger(&lineLogger{logger: logger}).
			StartParameters(map[string]string{
				"listen_addresses":        "127.0.0.1",
				"unix_socket_directories": "", // TCP only: no socket in /tmp to collide with
				"hba_file":                hba,
				"max_connections":         "200", // as docker-compose.yml's
				// The server's own log goes to data/log/, not to the all-in-one's stdout.
				"logging_collector": "on",
			})
		// The library extracts the binaries file by file when bin/pg_ctl is missing: a
		// tree without the marker of a successful start may be partial (interrupted).
		complete := filepath.Join(binaries, ".started")
		if _, err := os.Stat(complete); err != nil {
			if err := os.RemoveAll(binaries); err != nil {
				return err
			}
		}
		s.pg = embeddedpostgres.NewDatabase(cfg)
		removeOutputFiles(dir) // a crashed run's
		defer setTempDir(dir)()
		if err := s.pg.Start(); err != nil {
			return err
		}
		_ = os.WriteFile(complete, nil, 0o644) // without it, the next start extracts again
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("starting the embedded PostgreSQL on 127.0.0.1:%d in %s: %w", s.port, dir, err)
	}
	return s, nil
}

// Stop stops the server (pg_ctl stop: fast shutdown, a checkpoint, no data lost). Close
// every connection first. Stopping twice is a no-op.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.asUser(s.pg.Stop)
	removeOutputFiles(s.dir)
	if err != nil {
		return fmt.Errorf("stopping the embedded PostgreSQL: %w", err)
	}
	return nil
}

// The library copies initdb's and pg_ctl's output to Logger through a file it creates in
// os.TempDir at Start and never removes: setTempDir (for Start) puts it in Dir, where
// removeOutputFiles removes it after Stop.
const outputFilePattern = "embedded_postgres_log*"

func setTempDir(dir string) (restore func()) {
	old, had := os.LookupEnv("TMPDIR")
	_ = os.Setenv("TMPDIR", dir)
	return func() {
		if had {
			_ = os.Setenv("TMPDIR", old)
		} else {
			_ = os.Unsetenv("TMPDIR")
		}
	}
}

func removeOutputFiles(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, outputFilePattern))
	for _, f := range files {
		_ = os.Remove(f)
	}
}

// Port is the port it listens on, on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// DataDir is the cluster's directory.
func (s *Server) DataDir() string { return filepath.Join(s.dir, "data") }

// RunsAs names the user the server runs as ("" for the process's own).
func (s *Server) RunsAs() string {
	if s.as == nil {
		return ""
	}
	return s.as.name
}

// URL is a connection URL for database (which the caller creates, e.g. with
// pgstore.EnsureDatabase; "postgres" always exists).
func (s *Server) URL(database string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", User, s.Addr(), database)
}

func (s *Server) asUser(fn func() error) error {
	if s.as == nil {
		return fn()
	}
	return s.as.do(fn)
}

// unreachable explains an access error to dir when running as another user.
func (s *Server) unreachable(dir string, err error) error {
	if s.as == nil || !errors.Is(err, os.ErrPermission) {
		return err
	}
	return fmt.Errorf("PostgreSQL refuses to run as root, so the embedded one runs as %s, which cannot use %s "+
		"(set PULSEBOARD_CACHE_DIR to a directory %s can reach): %w", s.as.name, dir, s.as.name, err)
}

// handOver creates dir as root and gives it (and anything in it) to the account.
func handOver(dir string, as *account) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, as.uid, as.gid)
	})
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// lineLogger turns what initdb and pg_ctl print into debug log lines.
type lineLogger struct {
	logger *slog.Logger
	buf    []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if line := bytes.TrimSpace(l.buf[:i]); len(line) > 0 {
			l.logger.Debug(string(line))
		}
		l.buf = l.buf[i+1:]
	}
}

var _ io.Writer = (*lineLogger)(nil)
