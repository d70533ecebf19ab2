package alerter_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/google/uuid"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver goose uses
	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/migrations"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Migration 00006 on a database with alerts: every project gets its owner-email
// channel, an alert still pending becomes a pending email delivery (attempts and error
// kept) that the alerter then sends, and a settled alert keeps its outcome as its
// delivery's. Down and Up again is clean.
func TestChannelsMigrationKeepsPendingAlerts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	db, err := sql.Open("pgx", b.dbURL)
	require.NoError(t, err)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS())
	require.NoError(t, err)
	_, err = p.DownTo(ctx, 5)
	require.NoError(t, err)

	u, err := pgstore.UpsertUser(ctx, b.pool, "Old", "old@example.com", "x")
	require.NoError(t, err)
	b.verify(t, u.ID)
	proj, err := pgstore.CreateProject(ctx, b.pool, u.ID, "old project")
	require.NoError(t, err)
	now := b.clock.Now()
	pending, sent := uuid.New(), uuid.New()
	_, err = b.pool.Exec(ctx, `
		INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold, state, attempts,
		                    last_error, next_attempt_at, recipient, created_at, sent_at)
		VALUES ($1, $3, 'threshold', $4, $5, 10, 10, 'pending', 2, '421 try later', $5, 'old@example.com', $5, NULL),
		       ($2, $3, 'threshold', $4 - interval '1 hour', $5 - interval '1 hour', 10, 10, 'sent', 1, NULL, $5, 'old@example.com', $5, $5)`,
		pending, sent, proj.ID, now.Add(-time.Minute), now)
	require.NoError(t, err)

	_, err = p.Up(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notification_channels WHERE project_id = $1 AND kind = 'email' AND url IS NULL AND enabled`, proj.ID))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notification_deliveries d JOIN notification_channels c ON c.id = d.channel_id
		WHERE d.alert_id = $1 AND d.state = 'pending' AND d.attempts = 2 AND d.last_error = '421 try later' AND d.target = 'old@example.com'`, pending))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notification_deliveries WHERE alert_id = $1 AND state = 'sent' AND sent_at IS NOT NULL`, sent))

	b.start(t, b.config(t, "pulseboard-alerter"), nil)
	b.waitMessages(t, "old@example.com", 1, waitFor)
	b.eventually(t, 1, `SELECT count(*) FROM alerts WHERE id = $1 AND state = 'sent' AND attempts = 3 AND last_error IS NULL`, pending)

	_, err = p.DownTo(ctx, 5)
	require.NoError(t, err)
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM alerts WHERE state = 'sent'`), "the summary stays in alerts")
	_, err = p.Up(ctx)
	require.NoError(t, err)
}
