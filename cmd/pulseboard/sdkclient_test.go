package main_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/client"
)

// The Go SDK client against the real all-in-one: every event it reports as accepted is
// stored exactly once, with the ids the client assigned.
func TestSDKClientAgainstAllInOne(t *testing.T) {
	t.Parallel()
	in := start(t)
	c, err := client.New(client.Options{Endpoint: in.ingest, APIKey: in.apiKey, MaxBatchEvents: 50, Gzip: true, FlushInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	const n = 500
	for i := range n {
		require.NoError(t, c.Enqueue(client.Event{Type: client.TypeEvent, Name: fmt.Sprintf("sdk-%d", i), Payload: map[string]any{"i": i}}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.Close(ctx))
	st := c.Stats()
	require.EqualValues(t, n, st.Sent, "stats: %+v", st)
	require.Zero(t, st.Failed+st.Rejected+st.Dropped, "stats: %+v", st)

	require.Eventually(t, func() bool {
		var stored, distinct int
		err := in.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM events WHERE name LIKE 'sdk-%'`).Scan(&stored, &distinct)
		return err == nil && stored == n && distinct == n
	}, 30*time.Second, 50*time.Millisecond)
}
