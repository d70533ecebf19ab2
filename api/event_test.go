package api_test

import (
	"net/http"
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
