package embeddedpg

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// A real PostgreSQL starts (downloaded on the first run into the shared cache, which
// later runs reuse), answers queries, stops, starts again on the same directory and
// still has the data. As root it runs as nobody, and the process is root again after
// Start and Stop.
func TestEmbeddedPostgresKeepsItsDataAcrossRestarts(t *testing.T) {
	shared, err := DefaultDir(os.Getenv("PULSEBOARD_CACHE_DIR"))
	require.NoError(t, err)
	dir := t.TempDir()
	euid := os.Geteuid()
	if euid == 0 {
		require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755)) // t.TempDir's parent is 0700; nobody must reach dir
	}
	opts := Options{
		Dir: filepath.Join(dir, "postgres"), BinCache: filepath.Join(shared, "bin-cache"), Port: 0,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// start starts the server and returns a connection to it.
	start := func() (*Server, *pgx.Conn) {
		t.Helper()
		began := time.Now()
		srv, err := Start(opts)
		require.NoError(t, err)
		t.Cleanup(func() { _ = srv.Stop() })
		t.Logf("started on %s in %s", srv.Addr(), time.Since(began).Round(time.Millisecond))
		require.Equal(t, euid, os.Geteuid(), "Start left the process with another user id")
		conn, err := pgx.Connect(ctx, srv.URL("postgres")) // no password: 127.0.0.1 is trusted
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return srv, conn
	}

	srv, conn := start()
	var version string
	require.NoError(t, conn.QueryRow(ctx, `SHOW server_version`).Scan(&version))
	require.Regexp(t, `^16\.`, version)
	_, err = conn.Exec(ctx, `CREATE TABLE kept (v text)`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO kept VALUES ($1)`, "persisted")
	require.NoError(t, err)
	if euid == 0 {
		require.Equal(t, "nobody", srv.RunsAs())
		a, err := unprivileged()
		require.NoError(t, err)
		require.Equal(t, a.uid, ownerUID(t, srv.DataDir()), "the cluster belongs to nobody")
	}
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, srv.Stop())
	require.NoError(t, srv.Stop(), "stopping twice is a no-op")
	require.Equal(t, euid, os.Geteuid(), "Stop left the process with another user id")
	_, err = pgx.Connect(ctx, srv.URL("postgres"))
	require.Error(t, err, "the server still answers after Stop")

	srv, conn = start()
	var v string
	require.NoError(t, conn.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v))
	require.Equal(t, "persisted", v)
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, srv.Stop())
}
