// Package pgstore is PulseBoard's PostgreSQL boundary: connection pools, database creation,
// partition maintenance and the queries shared by several services. Driver errors are
// mapped here (pgx.ErrNoRows → ErrNotFound) so that callers branch on sentinels.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// PoolOptions tune a pool for its user.
type PoolOptions struct {
	// MaxConns bounds the pool (0 keeps pgxpool's default of max(4, NumCPU)).
	MaxConns int32
	// StatementTimeout is set on every connection (0 = server default).
	StatementTimeout time.Duration
	// ApplicationName shows up in pg_stat_activity.
	ApplicationName string
	// AfterConnect runs on every new connection (e.g. to create a temporary table).
	AfterConnect func(context.Context, *pgx.Conn) error
}

// Open connects a pool and pings it.
func Open(ctx context.Context, databaseURL string, o PoolOptions) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parsing DATABASE_URL: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	if o.ApplicationName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = o.ApplicationName
	}
	if o.StatementTimeout > 0 {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(o.StatementTimeout.Milliseconds())
	}
	cfg.AfterConnect = o.AfterConnect
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating pool: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL at %s: %w", safeHost(databaseURL), err)
	}
	return pool, nil
}

// EnsureDatabase creates the database named in databaseURL if it does not exist, by
// connecting to the server's "postgres" database with the same credentials.
func EnsureDatabase(ctx context.Context, databaseURL string) error {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return fmt.Errorf("parsing DATABASE_URL: %w", err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	if name == "" || name == "postgres" {
		return nil
	}
	admin := *u
	admin.Path = "/postgres"
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, admin.String())
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL at %s: %w", safeHost(databaseURL), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(cctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("checking database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(cctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // created concurrently
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating database %q: %w", name, err)
	}
	return nil
}

// EnsurePartitions creates the daily events partitions from `from` to `to` (inclusive,
// UTC days) that are missing and returns how many it created.
func EnsurePartitions(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, from, to time.Time) (int, error) {
	var n int
	err := db.QueryRow(ctx, "SELECT pulseboard_ensure_event_partitions($1::date, $2::date)",
		from.UTC().Format(time.DateOnly), to.UTC().Format(time.DateOnly)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("ensuring event partitions: %w", err)
	}
	return n, nil
}

func safeHost(databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Host + u.Path
}
