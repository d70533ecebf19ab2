// Package pgtest gives each test its own migrated PostgreSQL database, cloned from a
// template database that is migrated once per schema version, and dropped when the test
// ends. Tests therefore run in parallel and leave nothing behind.
//
// The server is PULSEBOARD_TEST_DATABASE_URL when set, else a testcontainers Postgres 16
// when Docker is available, else postgres://postgres@127.0.0.1:5432.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/pulseboard/pulseboard/migrations"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
)

const localURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error

	templateMu   sync.Mutex
	templateName string
)

// ServerURL returns the URL of the server's "postgres" database.
func ServerURL(t testing.TB) string {
	t.Helper()
	serverOnce.Do(func() {
		if u := os.Getenv("PULSEBOARD_TEST_DATABASE_URL"); u != "" {
			serverURL = u
			return
		}
		if os.Getenv("PULSEBOARD_TEST_NO_DOCKER") == "" && testenv.DockerAvailable() {
			ctx := context.Background()
			c, err := tcpostgres.Run(ctx, "postgres:16-alpine",
				tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
				testcontainers.WithWaitStrategy(wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(60*time.Second)))
			if err != nil {
				serverErr = fmt.Errorf("starting a Postgres container: %w", err)
				return
			}
			serverURL, serverErr = c.ConnectionString(ctx, "sslmode=disable")
			return
		}
		serverURL = localURL
	})
	if serverErr != nil {
		t.Fatalf("pgtest: %v", serverErr)
	}
	return serverURL
}

// NewDB creates a fresh database with the schema applied and returns its URL and a pool.
// Both are closed and the database dropped at the end of the test.
func NewDB(t testing.TB) (string, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := ServerURL(t)
	tmpl := ensureTemplate(t, ctx, admin)

	name := "pbtest_" + randomHex(6)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("pgtest: connecting to %s: %v (is PostgreSQL running? set PULSEBOARD_TEST_DATABASE_URL)", admin, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tmpl)); err != nil {
		t.Fatalf("pgtest: creating database: %v", err)
	}
	dbURL := withDatabase(t, admin, name)
	pool, err := pgstore.Open(ctx, dbURL, pgstore.PoolOptions{ApplicationName: "pgtest"})
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// The template may be days old: make sure today's partitions exist.
	now := time.Now()
	if _, err := pgstore.EnsurePartitions(ctx, pool, now.AddDate(0, 0, -1), now.AddDate(0, 0, 7)); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("pgtest: dropping %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Errorf("pgtest: dropping %s: %v", name, err)
		}
	})
	return dbURL, pool
}

// ensureTemplate creates and migrates the template database for the current migration
// files once; the name carries a hash of the files, so a schema change makes a new one.
func ensureTemplate(t testing.TB, ctx context.Context, admin string) string {
	t.Helper()
	templateMu.Lock()
	defer templateMu.Unlock()
	if templateName != "" {
		return templateName
	}
	name := "pbtest_template_" + migrationsHash(t)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("pgtest: connecting to %s: %v (is PostgreSQL running? set PULSEBOARD_TEST_DATABASE_URL)", admin, err)
	}
	defer conn.Close(context.Background())
	// Several test binaries run at once: serialise template creation across processes.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", name); err != nil {
		t.Fatalf("pgtest: locking: %v", err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), "SELECT pg_advisory_unlock(hashtext($1))", name) }()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if !exists {
		building := name + "_b"
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+building+" WITH (FORCE)")
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+building); err != nil {
			t.Fatalf("pgtest: creating template: %v", err)
		}
		logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if err := migrations.Up(ctx, withDatabase(t, admin, building), logger); err != nil {
			t.Fatalf("pgtest: migrating template: %v", err)
		}
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+name); err != nil {
			t.Fatalf("pgtest: renaming template: %v", err)
		}
	}
	templateName = name
	return name
}

func migrationsHash(t testing.TB) string {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS(), path)
		if err != nil {
			return err
		}
		h.Write([]byte(path))
		h.Write(b)
		return nil
	})
	if err != nil {
		t.Fatalf("pgtest: hashing migrations: %v", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

func withDatabase(t testing.TB, raw, name string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("pgtest: parsing %q: %v", raw, err)
	}
	u.Path = "/" + name
	return u.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
