package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// seedEvents inserts n events received one second apart, newest first in the returned
// slice. Every third is an error named "crash"; every event has a context.
func seedEvents(b *bundle, projectID string, n int, newest time.Time) []eventRow {
	rows := make([]eventRow, n)
	for i := range rows {
		ctx := fmt.Sprintf(`{"app": {"version": "1.%d"}}`, i)
		typ, name := "event", "click"
		if i%3 == 0 {
			typ, name = "error", "crash"
		}
		rows[i] = eventRow{
			id: uuid.New(), typ: typ, name: name,
			// jsonb stores this with its own spacing; the api answers it compacted.
			payload:    fmt.Sprintf(`{"n": %d, "msg": "line\nbreak <b>", "nested": {"ok": true}}`, i),
			context:    &ctx,
			timestamp:  newest.Add(-time.Duration(i)*time.Second - time.Minute),
			receivedAt: newest.Add(-time.Duration(i) * time.Second),
		}
	}
	b.insertEvents(projectID, rows)
	return rows
}

func expectedEventJSON(projectID string, r eventRow) string {
	id, _ := uuid.Parse(projectID)
	var compactCtx []byte
	if r.context != nil {
		var v any
		_ = json.Unmarshal([]byte(*r.context), &v)
		compactCtx, _ = json.Marshal(v)
	}
	var p any
	_ = json.Unmarshal([]byte(r.payload), &p)
	ev := event.Event{ID: r.id, ProjectID: id, Type: r.typ, Name: r.name, Timestamp: r.timestamp, ReceivedAt: r.receivedAt, Context: compactCtx}
	// jsonb orders keys by length, then bytewise; this is what Postgres hands back.
	ev.Payload = []byte(fmt.Sprintf(`{"n":%v,"msg":"line\nbreak <b>","nested":{"ok":true}}`, p.(map[string]any)["n"]))
	return string(ev.AppendJSON(nil))
}

// GET /events?apiKey=… (compat): the project's 20 newest events by receivedAt, in the
// event object shape of pkg/event (acceptance 1).
func TestCompatEventsByAPIKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Events Owner")
	p := c.createProject("Events")
	other := c.createProject("Other")
	pid, key := p["id"].(string), p["apiKey"].(string)
	newest := time.Now().UTC().Truncate(time.Millisecond)
	rows := seedEvents(b, pid, 25, newest)
	seedEvents(b, other["id"].(string), 3, newest.Add(time.Second))

	anon := b.client()
	r := anon.do("GET", "/events?apiKey="+url.QueryEscape(key), nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	want := `{"success":true,"data":[`
	for i := range 20 {
		if i > 0 {
			want += ","
		}
		want += expectedEventJSON(pid, rows[i])
	}
	want += "]}"
	require.Equal(t, want, string(r.body))
	require.Equal(t, "application/json; charset=utf-8", r.header.Get("Content-Type"))

	r = anon.do("GET", "/events?apiKey="+url.QueryEscape(key)+"&limit=5&type=error", nil)
	require.Equal(t, http.StatusOK, r.status)
	data := r.json(t)["data"].([]any)
	require.Len(t, data, 5)
	for i, e := range data {
		require.Equal(t, rows[3*i].id.String(), e.(map[string]any)["id"])
	}
	require.Len(t, anon.do("GET", "/events?apiKey="+url.QueryEscape(key)+"&limit=100", nil).json(t)["data"], 25)

	anon.do("GET", "/events?apiKey="+url.QueryEscape(key)+"&limit=101", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/limit must be <= 100")
	anon.do("GET", "/events?apiKey="+url.QueryEscape(key)+"&type=warn", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/type must be equal to one of the allowed values (error, event, metric)")
	anon.do("GET", "/events", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring must have required property 'apiKey'")
	anon.do("GET", "/events?apiKey=pb_live_00000000000000000000000000000000", nil).requireError(t, 401, "INVALID_API_KEY", "Invalid API key")
	anon.do("GET", "/events?apiKey=x", nil).requireError(t, 401, "INVALID_API_KEY", "Invalid API key")
	// An access token is not an API key (B66).
	anon.do("GET", "/events?apiKey="+c.token, nil).requireError(t, 401, "INVALID_API_KEY", "Invalid API key")
}

// GET /projects/{id}/events: filters and keyset pagination on (receivedAt, id), also
// across rows with the same receivedAt.
func TestProjectEventsPagination(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Pager")
	p := c.createProject("Paged")
	pid := p["id"].(string)
	newest := time.Now().UTC().Truncate(time.Millisecond)
	rows := seedEvents(b, pid, 110, newest)
	// Ten more at the very same instant as rows[50]: only the id orders them.
	var ties []eventRow
	for range 10 {
		ties = append(ties, eventRow{id: uuid.New(), typ: "metric", name: "tie", payload: `{}`, timestamp: newest, receivedAt: rows[50].receivedAt})
	}
	b.insertEvents(pid, ties)

	var got []string
	var receivedAts []string
	next := ""
	pages := 0
	for {
		// 55: the first page ends inside the group of rows that share a receivedAt.
		path := "/projects/" + pid + "/events?limit=55"
		if next != "" {
			path += "&cursor=" + url.QueryEscape(next)
		}
		r := c.do("GET", path, nil)
		require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
		var page struct {
			Success    bool              `json:"success"`
			Data       []json.RawMessage `json:"data"`
			NextCursor *string           `json:"nextCursor"`
		}
		require.NoError(t, json.Unmarshal(r.body, &page))
		pages++
		for _, raw := range page.Data {
			var e map[string]any
			require.NoError(t, json.Unmarshal(raw, &e))
			got = append(got, e["id"].(string))
			receivedAts = append(receivedAts, e["receivedAt"].(string)+" "+e["id"].(string))
		}
		if page.NextCursor == nil {
			require.Contains(t, string(r.body), `"nextCursor":null`)
			break
		}
		next = *page.NextCursor
	}
	require.Equal(t, 3, pages)
	require.Len(t, got, 120)
	seen := map[string]bool{}
	for i, id := range got {
		require.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
		if i > 0 {
			require.Greater(t, receivedAts[i-1], receivedAts[i], "newest first by (receivedAt, id)")
		}
	}

	list := func(query string) []any {
		r := c.do("GET", "/projects/"+pid+"/events?"+query, nil)
		require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
		return r.json(t)["data"].([]any)
	}
	require.Len(t, list(""), 50, "default limit")
	require.Len(t, list("limit=1000"), 120)
	require.Len(t, list("type=error&limit=1000"), 37)
	require.Len(t, list("name=tie&limit=1000"), 10)
	require.Len(t, list("name=crash&type=event"), 0)
	since := url.QueryEscape(rows[9].receivedAt.Format(event.TimeLayout))
	until := url.QueryEscape(rows[4].receivedAt.Format(event.TimeLayout))
	window := list("since=" + since + "&until=" + until)
	require.Len(t, window, 5, "[since, until)")
	require.Equal(t, rows[5].id.String(), window[0].(map[string]any)["id"])
	require.Equal(t, rows[9].id.String(), window[4].(map[string]any)["id"])

	base := "/projects/" + pid + "/events?"
	c.do("GET", base+"limit=1001", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/limit must be <= 1000")
	c.do("GET", base+"limit=0", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/limit must be >= 1")
	c.do("GET", base+"limit=ten", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/limit must be integer")
	c.do("GET", base+"since=yesterday", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/since must be an ISO-8601 date-time")
	c.do("GET", base+"cursor=bm90LWEtY3Vyc29y", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/cursor is not a cursor returned by this endpoint")
}

// GET /projects/{id}/stats: per-type counts from the rollups, every bucket present.
func TestStats(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Statistician")
	p := c.createProject("Stats")
	pid := p["id"].(string)
	hour := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	b.insertRollup(pid, hour.Add(5*time.Minute), "error", 2)
	b.insertRollup(pid, hour.Add(7*time.Minute), "error", 3)
	b.insertRollup(pid, hour.Add(7*time.Minute), "metric", 4)
	b.insertRollup(pid, hour.Add(time.Hour+time.Minute), "event", 10)
	b.insertRollup(pid, hour.Add(-48*time.Hour), "event", 1000) // outside every range asked
	b.insertRollup(c.createProject("Other")["id"].(string), hour.Add(5*time.Minute), "error", 50)

	since := hour.Format(event.TimeLayout)
	until := hour.Add(2 * time.Hour).Format(event.TimeLayout)
	r := c.do("GET", "/projects/"+pid+"/stats?interval=1h&since="+since+"&until="+until, nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, `{"success":true,"data":{"interval":"1h","series":[`+
		`{"bucket":"`+since+`","error":5,"event":0,"metric":4},`+
		`{"bucket":"`+hour.Add(time.Hour).Format(event.TimeLayout)+`","error":0,"event":10,"metric":0}]}}`, string(r.body))

	r = c.do("GET", "/projects/"+pid+"/stats?interval=1m&since="+hour.Add(4*time.Minute+30*time.Second).Format(event.TimeLayout)+"&until="+hour.Add(8*time.Minute).Format(event.TimeLayout), nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	series := r.data(t)["series"].([]any)
	require.Len(t, series, 4, "04, 05, 06, 07: since is rounded down to the interval")
	require.Equal(t, map[string]any{"bucket": hour.Add(5 * time.Minute).Format(event.TimeLayout), "error": 2.0, "event": 0.0, "metric": 0.0}, series[1])
	require.Equal(t, map[string]any{"bucket": hour.Add(7 * time.Minute).Format(event.TimeLayout), "error": 3.0, "event": 0.0, "metric": 4.0}, series[3])

	r = c.do("GET", "/projects/"+pid+"/stats?interval=1d&since="+hour.Add(-72*time.Hour).Format(event.TimeLayout)+"&until="+hour.Add(2*time.Hour).Format(event.TimeLayout), nil)
	require.Equal(t, http.StatusOK, r.status)
	var total float64
	for _, s := range r.data(t)["series"].([]any) {
		m := s.(map[string]any)
		total += m["error"].(float64) + m["event"].(float64) + m["metric"].(float64)
		bucket, err := time.Parse(time.RFC3339, m["bucket"].(string))
		require.NoError(t, err)
		require.Equal(t, bucket.Truncate(24*time.Hour), bucket, "days are UTC days")
	}
	require.Equal(t, 1019.0, total)

	// Defaults: interval 1h over the last 24 h.
	r = c.do("GET", "/projects/"+pid+"/stats", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "1h", r.data(t)["interval"])
	require.Len(t, r.data(t)["series"], 25)

	c.do("GET", "/projects/"+pid+"/stats?interval=5m", nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/interval must be equal to one of the allowed values (1m, 1h, 1d)")
	c.do("GET", "/projects/"+pid+"/stats?interval=1m&since=2020-01-01T00:00:00Z", nil).requireCode(t, 400, "VALIDATION_FAILED")
	c.do("GET", "/projects/"+pid+"/stats?since="+until+"&until="+since, nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/until must be later than querystring/since")
}
