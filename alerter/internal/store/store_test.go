package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter/internal/store"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

// Two channels' deliveries of one alert recorded at the same time by two transactions
// (two replicas): the summary counts both outcomes, whichever commits first. Without the
// alert lock taken in a statement of its own, the second summary is computed from a
// snapshot that misses the first outcome and the alert stays pending for ever.
func TestConcurrentOutcomesOfOneAlertAreAllSummarised(t *testing.T) {
	_, pool := pgtest.NewDB(t)
	ctx := context.Background()
	u, err := pgstore.UpsertUser(ctx, pool, "U", "u@example.com", "x")
	require.NoError(t, err)
	p, err := pgstore.CreateProject(ctx, pool, u.ID, "p")
	require.NoError(t, err)
	for _, kind := range []string{"webhook", "slack"} {
		_, err := pool.Exec(ctx, `INSERT INTO notification_channels (id, project_id, kind, name, url, secret) VALUES ($1, $2, $3, $3, 'https://hooks.example/x/y', 'k')`,
			uuid.New(), p.ID, kind)
		require.NoError(t, err)
	}
	st := store.New(pool)
	now := time.Now().UTC()
	alert := uuid.New()
	tx, err := st.Begin(ctx)
	require.NoError(t, err)
	inserted, n, err := tx.RecordAlert(ctx, store.NewAlert{
		ID: alert, Project: p.ID, Kind: "threshold", WindowStart: now.Add(-time.Minute), WindowEnd: now,
		ErrorCount: 10, Threshold: 10, Owner: u.Email, CreatedAt: now, NextAttemptAt: now,
	})
	require.NoError(t, err)
	require.True(t, inserted)
	require.Equal(t, 2, n)
	require.NoError(t, tx.Commit(ctx))
	var target string
	require.NoError(t, pool.QueryRow(ctx, `SELECT target FROM notification_deliveries WHERE alert_id = $1 AND kind = 'webhook'`, alert).Scan(&target))
	require.Equal(t, "https://hooks.example/…", target, "the URL's path is not stored")

	tx1, err := st.Begin(ctx)
	require.NoError(t, err)
	defer tx1.Rollback(ctx)
	d1, err := tx1.ClaimDelivery(ctx, now.Add(time.Second), []string{"webhook"}, time.Minute)
	require.NoError(t, err)
	tx2, err := st.Begin(ctx)
	require.NoError(t, err)
	defer tx2.Rollback(ctx)
	d2, err := tx2.ClaimDelivery(ctx, now.Add(time.Second), []string{"slack"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, d1.AlertID, d2.AlertID)

	status := 200
	require.NoError(t, tx1.RecordSent(ctx, store.Deliveries, d1.ID, now, &status))
	require.NoError(t, tx2.RecordAttempt(ctx, store.Deliveries, d2.ID, true, "410 Gone", now, nil))
	require.NoError(t, tx1.SummarizeAlert(ctx, alert)) // sees slack still pending
	done := make(chan error, 1)
	go func() { done <- tx2.SummarizeAlert(ctx, alert) }() // waits for tx1's alert lock
	select {
	case err := <-done:
		t.Fatalf("the second summary did not wait for the first: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	require.NoError(t, tx1.Commit(ctx))
	require.NoError(t, <-done)
	require.NoError(t, tx2.Commit(ctx))

	var state string
	var lastErr *string
	var attempts int
	require.NoError(t, pool.QueryRow(ctx, `SELECT state, last_error, attempts FROM alerts WHERE id = $1`, alert).Scan(&state, &lastErr, &attempts))
	require.Equal(t, "sent", state)
	require.NotNil(t, lastErr)
	require.Equal(t, "410 Gone", *lastErr)
	require.Equal(t, 1, attempts)
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://hooks.slack.com/services/T0/B0/secret": "https://hooks.slack.com/…",
		"https://example.com":                           "https://example.com",
		"https://example.com/":                          "https://example.com",
		"https://example.com?token=x":                   "https://example.com/…",
		"not a url":                                     "(invalid URL)",
	} {
		require.Equal(t, want, store.RedactURL(in), in)
	}
}
