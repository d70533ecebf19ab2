package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

func TestProjectByKeyHash(t *testing.T) {
	t.Parallel()
	_, pool := pgtest.NewDB(t)
	ctx := context.Background()

	u, err := pgstore.UpsertUser(ctx, pool, "Demo", "demo@example.com", "x")
	require.NoError(t, err)
	again, err := pgstore.UpsertUser(ctx, pool, "Other", "DEMO@example.com", "y")
	require.NoError(t, err)
	require.Equal(t, u.ID, again.ID, "emails are one account regardless of case")

	p, err := pgstore.CreateProject(ctx, pool, u.ID, "demo")
	require.NoError(t, err)
	require.True(t, apikey.Plausible(p.APIKey))

	got, err := pgstore.ProjectByKeyHash(ctx, pool, apikey.HashOf(p.APIKey))
	require.NoError(t, err)
	require.Equal(t, p.ID, got.ID)
	require.Nil(t, got.RateLimit)

	_, err = pgstore.ProjectByKeyHash(ctx, pool, apikey.HashOf("pb_live_unknown"))
	require.ErrorIs(t, err, pgstore.ErrNotFound)
}

func TestEnsurePartitionsIsIdempotent(t *testing.T) {
	t.Parallel()
	_, pool := pgtest.NewDB(t)
	ctx := context.Background()
	day := time.Date(2031, 1, 1, 12, 0, 0, 0, time.UTC)

	n, err := pgstore.EnsurePartitions(ctx, pool, day, day.AddDate(0, 0, 2))
	require.NoError(t, err)
	require.Equal(t, 3, n)
	n, err = pgstore.EnsurePartitions(ctx, pool, day, day.AddDate(0, 0, 2))
	require.NoError(t, err)
	require.Zero(t, n)

	// The partition bounds are UTC midnights.
	var bound string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'events_20310102'`).Scan(&bound))
	require.Contains(t, bound, "2031-01-02 00:00:00+00")
	require.Contains(t, bound, "2031-01-03 00:00:00+00")
}
