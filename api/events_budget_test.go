package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/pkg/config"
)

// insertBigEvents stores n events of about size bytes each (payload {"i":…,"pad":"xxx…"}),
// received one millisecond apart, the newest at newest; it returns their ids newest
// first.
func (b *bundle) insertBigEvents(projectID string, n, size int, newest time.Time) []string {
	b.t.Helper()
	rows, err := b.pool.Query(context.Background(), `
		WITH ins AS (
			INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at)
			SELECT gen_random_uuid(), $1, 'event', 'big',
				jsonb_build_object('i', i, 'pad', repeat('x', $3)),
				$4::timestamptz - i * interval '1 millisecond', $4::timestamptz - i * interval '1 millisecond'
			FROM generate_series(0, $2 - 1) i
			RETURNING id, received_at)
		SELECT id::text FROM ins ORDER BY received_at DESC, id DESC`, projectID, n, size, newest)
	require.NoError(b.t, err)
	var ids []string
	for rows.Next() {
		var id string
		require.NoError(b.t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(b.t, rows.Err())
	return ids
}

// Every query answer is bounded in bytes (issue 16 item 2): past API_MAX_RESPONSE_BYTES
// a page is shorter than its limit and nextCursor resumes it; following the cursors
// returns every event exactly once. The compat list (no cursor in its shape) is just
// shorter.
func TestEventListsAreBoundedInBytes(t *testing.T) {
	t.Parallel()
	const budget = 256 << 10
	b := setup(t, withEnv("API_MAX_RESPONSE_BYTES", "262144"))
	c, _ := b.newUser("Budget")
	p := c.createProject("Big")
	pid, key := p["id"].(string), p["apiKey"].(string)
	// 40 events of ~60 KiB: 2.4 MB, about ten budgets' worth.
	want := b.insertBigEvents(pid, 40, 60<<10, time.Now().UTC().Truncate(time.Millisecond))

	var got []string
	next := ""
	pages := 0
	for {
		path := "/projects/" + pid + "/events?limit=1000"
		if next != "" {
			path += "&cursor=" + url.QueryEscape(next)
		}
		r := c.do("GET", path, nil)
		require.Equal(t, http.StatusOK, r.status, "body: %.300s", r.body)
		require.LessOrEqual(t, len(r.body), budget, "an answer passed API_MAX_RESPONSE_BYTES")
		var page struct {
			Data       []map[string]any `json:"data"`
			NextCursor *string          `json:"nextCursor"`
		}
		require.NoError(t, json.Unmarshal(r.body, &page))
		require.NotEmpty(t, page.Data, "a page holds at least one event")
		pages++
		for _, e := range page.Data {
			got = append(got, e["id"].(string))
		}
		if page.NextCursor == nil {
			require.Contains(t, string(r.body), `"nextCursor":null`)
			break
		}
		require.Less(t, len(page.Data), 1000, "a shorter page than the limit")
		next = *page.NextCursor
		require.Less(t, pages, 40, "the pages do not end")
	}
	require.Greater(t, pages, 5, "the budget split the answer")
	require.Equal(t, want, got, "every event exactly once, newest first")

	// The compat list has no cursor: it is shorter, the newest first.
	r := b.client().do("GET", "/events?apiKey="+url.QueryEscape(key)+"&limit=100", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.LessOrEqual(t, len(r.body), budget)
	var compat struct {
		Success bool             `json:"success"`
		Data    []map[string]any `json:"data"`
	}
	require.NoError(t, json.Unmarshal(r.body, &compat))
	require.True(t, compat.Success)
	require.NotEmpty(t, compat.Data)
	require.Less(t, len(compat.Data), 40)
	for i, e := range compat.Data {
		require.Equal(t, want[i], e["id"])
	}
	require.False(t, strings.Contains(string(r.body), "nextCursor"), "the compat shape is unchanged")

	// One event larger than the whole budget is still answered (whole, alone), and the
	// cursor moves past it.
	huge := b.insertBigEvents(pid, 1, 300<<10, time.Now().UTC().Add(time.Hour).Truncate(time.Millisecond))
	r = c.do("GET", "/projects/"+pid+"/events?limit=5", nil)
	require.Equal(t, http.StatusOK, r.status)
	var page struct {
		Data       []map[string]any `json:"data"`
		NextCursor *string          `json:"nextCursor"`
	}
	require.NoError(t, json.Unmarshal(r.body, &page))
	require.Len(t, page.Data, 1)
	require.Equal(t, huge[0], page.Data[0]["id"])
	require.NotNil(t, page.NextCursor)
	r = c.do("GET", "/projects/"+pid+"/events?limit=1&cursor="+url.QueryEscape(*page.NextCursor), nil)
	require.Equal(t, want[0], r.json(t)["data"].([]any)[0].(map[string]any)["id"])
}

// API_MAX_RESPONSE_BYTES is validated.
func TestMaxResponseBytesValidated(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse[api.Config](config.Env{})
	require.NoError(t, err)
	require.Equal(t, int64(4<<20), cfg.MaxResponseBytes)
	for _, v := range []string{"1000", "-1", "2000000000"} {
		cfg, err := config.Parse[api.Config](config.Env{"API_MAX_RESPONSE_BYTES": v})
		require.NoError(t, err)
		require.ErrorContains(t, cfg.Validate(), "API_MAX_RESPONSE_BYTES", v)
	}
}
