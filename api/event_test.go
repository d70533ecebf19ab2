package api_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// GET /projects/{id}/events/{eventId}: one event, the same object the list answers; an
// unknown, malformed or deleted event is 404 NOT_FOUND, and another user's project is
// 404 PROJECT_NOT_FOUND even for an event id that exists there.
func TestProjectEventByID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Event Reader")
	p := c.createProject("One Event")
	pid := p["id"].(string)
	ctx := `{"device": {"os": "ios"}}`
	now := time.Now().UTC().Truncate(time.Millisecond)
	rows := []eventRow{
		{id: uuid.New(), typ: "error", name: "TypeError", payload: `{"stack": "at x", "n": 1.5}`, context: &ctx, timestamp: now.Add(-time.Second), receivedAt: now},
		{id: uuid.New(), typ: "event", name: "other", payload: `{}`, timestamp: now, receivedAt: now.Add(-time.Hour)},
	}
	b.insertEvents(pid, rows)

	list := c.do("GET", "/projects/"+pid+"/events?limit=10", nil)
	require.Equal(t, http.StatusOK, list.status, "%s", list.body)
	listed := map[string]any{}
	for _, e := range list.json(t)["data"].([]any) {
		listed[e.(map[string]any)["id"].(string)] = e
	}
	for _, r := range rows {
		got := c.do("GET", "/projects/"+pid+"/events/"+r.id.String(), nil)
		require.Equal(t, http.StatusOK, got.status, "%s", got.body)
		require.Equal(t, listed[r.id.String()], got.data(t), "the same object as in the list")
	}
	one := c.do("GET", "/projects/"+pid+"/events/"+rows[0].id.String(), nil).data(t)
	require.Equal(t, "TypeError", one["name"])
	require.Equal(t, map[string]any{"stack": "at x", "n": 1.5}, one["payload"])
	require.Equal(t, map[string]any{"device": map[string]any{"os": "ios"}}, one["context"])

	c.do("GET", "/projects/"+pid+"/events/"+uuid.NewString(), nil).requireError(t, http.StatusNotFound, "NOT_FOUND", "Event not found")
	c.do("GET", "/projects/"+pid+"/events/not-a-uuid", nil).requireError(t, http.StatusNotFound, "NOT_FOUND", "Event not found")

	other, _ := b.newUser("Someone Else")
	other.do("GET", "/projects/"+pid+"/events/"+rows[0].id.String(), nil).requireError(t, http.StatusNotFound, "PROJECT_NOT_FOUND", "Project not found")
	b.client().do("GET", "/projects/"+pid+"/events/"+rows[0].id.String(), nil).requireCode(t, http.StatusUnauthorized, "UNAUTHORIZED")

	// Deleted with the project's events (the dedup gate keeps the id): gone.
	require.Equal(t, http.StatusOK, c.do("DELETE", "/projects/"+pid+"/events", nil).status)
	c.do("GET", "/projects/"+pid+"/events/"+rows[0].id.String(), nil).requireError(t, http.StatusNotFound, "NOT_FOUND", "Event not found")
}

// GET /projects/{id}/stats/errors counts the errors of a range by name, most frequent
// first (ties by name); other types and other ranges do not count; the owner only.
func TestTopErrorNames(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Error Counter")
	pid := c.createProject("Noisy")["id"].(string)
	now := time.Now().UTC().Truncate(time.Millisecond)
	var rows []eventRow
	add := func(typ, name string, n int, at time.Time) {
		for i := 0; i < n; i++ {
			rows = append(rows, eventRow{id: uuid.New(), typ: typ, name: name, payload: `{}`, timestamp: at, receivedAt: at.Add(-time.Duration(i) * time.Millisecond)})
		}
	}
	add("error", "TypeError: x is undefined", 5, now.Add(-time.Minute))
	add("error", "<script>alert(1)</script>", 3, now.Add(-2*time.Minute))
	add("error", "RangeError", 3, now.Add(-3*time.Minute))
	add("event", "TypeError: x is undefined", 9, now.Add(-time.Minute)) // not an error
	add("error", "Old", 7, now.Add(-2*time.Hour))                       // before since below
	b.insertEvents(pid, rows)

	type answer struct {
		Names []struct {
			Name  string
			Count int64
		}
		Counted  int64
		Complete bool
	}
	get := func(query string) answer {
		r := c.do("GET", "/projects/"+pid+"/stats/errors"+query, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		var a struct{ Data answer }
		require.NoError(t, json.Unmarshal(r.body, &a))
		return a.Data
	}
	since := url.QueryEscape(now.Add(-time.Hour).Format(time.RFC3339Nano))
	a := get("?since=" + since)
	require.True(t, a.Complete)
	require.EqualValues(t, 11, a.Counted)
	require.Len(t, a.Names, 3)
	require.Equal(t, "TypeError: x is undefined", a.Names[0].Name)
	require.EqualValues(t, 5, a.Names[0].Count)
	require.Equal(t, "<script>alert(1)</script>", a.Names[1].Name, "ties by name")
	require.Equal(t, "RangeError", a.Names[2].Name)

	a = get("?limit=1") // the last 24 hours: "Old" counts, and leads
	require.Len(t, a.Names, 1)
	require.Equal(t, "Old", a.Names[0].Name)
	require.EqualValues(t, 18, a.Counted)

	c.do("GET", "/projects/"+pid+"/stats/errors?limit=51", nil).requireCode(t, http.StatusBadRequest, "VALIDATION_FAILED")
	c.do("GET", "/projects/"+pid+"/stats/errors?since="+since+"&until="+since, nil).requireCode(t, http.StatusBadRequest, "VALIDATION_FAILED")
	other, _ := b.newUser("Not The Owner")
	other.do("GET", "/projects/"+pid+"/stats/errors", nil).requireCode(t, http.StatusNotFound, "PROJECT_NOT_FOUND")
}
