package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// labelledRow is an event row with labels, inserted straight into events.
type labelledRow struct {
	id         uuid.UUID
	typ        string
	labels     event.Labels
	receivedAt time.Time
}

// insertLabelled stores n events received one millisecond apart (newest first in the
// returned slice), labelled by label(i); every other one is an error.
func insertLabelled(b *bundle, projectID string, n int, newest time.Time, label func(i int) event.Labels) []labelledRow {
	b.t.Helper()
	rows := make([]labelledRow, n)
	for i := range rows {
		rows[i] = labelledRow{id: uuid.New(), typ: "event", labels: label(i), receivedAt: newest.Add(-time.Duration(i) * time.Millisecond)}
		if i%2 == 0 {
			rows[i].typ = "error"
		}
		var ls [event.NumLabels]*string
		for l := range ls {
			if v := rows[i].labels[l]; v != "" {
				ls[l] = &v
			}
		}
		_, err := b.pool.Exec(context.Background(), `INSERT INTO events
			(id, project_id, type, name, payload, "timestamp", received_at, release, environment, session_id, user_id)
			VALUES ($1, $2, $3, 'n', '{"a": 1}', $4, $4, $5, $6, $7, $8)`,
			rows[i].id, projectID, rows[i].typ, rows[i].receivedAt, ls[0], ls[1], ls[2], ls[3])
		require.NoError(b.t, err)
	}
	return rows
}

// GET /projects/{id}/events and GET /events?apiKey= filter on the labels by equality,
// combined with the other filters and with keyset pages; the event objects carry them.
func TestEventsLabelFilters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Label Filters")
	p := c.createProject("Labelled")
	pid, key := p["id"].(string), p["apiKey"].(string)
	newest := time.Now().UTC().Truncate(time.Millisecond)
	rows := insertLabelled(b, pid, 40, newest, func(i int) event.Labels {
		ls := event.Labels{"1.0", "production", "sess-" + string(rune('a'+i%4)), ""}
		if i%5 == 0 {
			ls[event.LabelRelease] = "2.0"
			ls[event.LabelUserID] = "user-" + string(rune('a'+i%2))
		}
		if i%8 == 0 {
			ls[event.LabelEnvironment] = ""
		}
		return ls
	})
	want := func(match func(r labelledRow) bool) []string {
		var ids []string
		for _, r := range rows {
			if match(r) {
				ids = append(ids, r.id.String())
			}
		}
		return ids
	}
	ids := func(data []any) []string {
		out := []string{}
		for _, e := range data {
			out = append(out, e.(map[string]any)["id"].(string))
		}
		return out
	}
	list := func(query string) []any {
		t.Helper()
		r := c.do("GET", "/projects/"+pid+"/events?limit=1000&"+query, nil)
		require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
		return r.json(t)["data"].([]any)
	}
	require.Equal(t, want(func(r labelledRow) bool { return r.labels[0] == "2.0" }), ids(list("release=2.0")))
	require.Equal(t, want(func(r labelledRow) bool { return r.labels[1] == "production" }), ids(list("environment=production")))
	require.Equal(t, want(func(r labelledRow) bool { return r.labels[2] == "sess-b" }), ids(list("sessionId=sess-b")))
	require.Equal(t, want(func(r labelledRow) bool { return r.labels[3] == "user-b" }), ids(list("userId=user-b")))
	require.Equal(t, want(func(r labelledRow) bool {
		return r.labels[0] == "2.0" && r.labels[2] == "sess-a" && r.typ == "error"
	}), ids(list("release=2.0&sessionId=sess-a&type=error")))
	require.NotEmpty(t, list("release=2.0&sessionId=sess-a&type=error"))
	require.Empty(t, list("userId=nobody"))
	require.Len(t, list("release="), 40, "an empty parameter is no filter")

	// The event object carries the labels that are set, in the canonical encoding.
	first := list("sessionId=" + url.QueryEscape(rows[0].labels[2]) + "&limit=1")[0].(map[string]any)
	require.Equal(t, "2.0", first["release"])
	require.Equal(t, "user-a", first["userId"])
	require.NotContains(t, first, "environment", "an unset label is omitted")
	pID, _ := uuid.Parse(pid)
	ev := event.Event{ID: rows[0].id, ProjectID: pID, Type: rows[0].typ, Name: "n", Payload: []byte(`{"a":1}`),
		Timestamp: rows[0].receivedAt, ReceivedAt: rows[0].receivedAt, Labels: rows[0].labels}
	r := c.do("GET", "/projects/"+pid+"/events?limit=1&userId=user-a", nil)
	require.Equal(t, `{"success":true,"data":[`+string(ev.AppendJSON(nil))+`],"nextCursor":`, string(r.body[:strings.LastIndex(string(r.body), `"nextCursor":`)+len(`"nextCursor":`)]))

	// Keyset pages under a filter: every matching event once, in order.
	var paged []string
	next := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 20)
		path := "/projects/" + pid + "/events?limit=3&environment=production"
		if next != "" {
			path += "&cursor=" + url.QueryEscape(next)
		}
		r := c.do("GET", path, nil)
		require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
		var page struct {
			Data       []json.RawMessage `json:"data"`
			NextCursor *string           `json:"nextCursor"`
		}
		require.NoError(t, json.Unmarshal(r.body, &page))
		for _, raw := range page.Data {
			var e map[string]any
			require.NoError(t, json.Unmarshal(raw, &e))
			require.Equal(t, "production", e["environment"])
			paged = append(paged, e["id"].(string))
		}
		if page.NextCursor == nil {
			break
		}
		next = *page.NextCursor
	}
	require.Equal(t, want(func(r labelledRow) bool { return r.labels[1] == "production" }), paged)

	// The compat route filters too.
	anon := b.client()
	r = anon.do("GET", "/events?apiKey="+url.QueryEscape(key)+"&limit=100&userId=user-a&type=error", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, want(func(r labelledRow) bool { return r.labels[3] == "user-a" && r.typ == "error" }), ids(r.json(t)["data"].([]any)))

	// Values no event can carry are refused, naming the parameter.
	base := "/projects/" + pid + "/events?"
	long := strings.Repeat("x", 201)
	for _, name := range []string{"release", "environment", "sessionId", "userId"} {
		c.do("GET", base+name+"="+long, nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/"+name+" must NOT have more than 200 characters")
		c.do("GET", base+name+"=a%00b", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/"+name+" must be valid UTF-8 without NUL characters")
		c.do("GET", base+name+"=%FF", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/"+name+" must be valid UTF-8 without NUL characters")
		anon.do("GET", "/events?apiKey="+url.QueryEscape(key)+"&"+name+"="+long, nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/"+name+" must NOT have more than 200 characters")
	}
	c.do("GET", base+"sessionId="+strings.Repeat("é", 200), nil)
	require.Len(t, list("sessionId="+url.QueryEscape(strings.Repeat("é", 200))), 0, "200 characters is within the bound")
}
