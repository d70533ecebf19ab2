package main_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// Issue 19 item 1, end to end: events posted over HTTP with labels at the top level, in
// the React Native SDK's context and on an analytics route are answered, stored, read
// back filtered through GET /projects/{id}/events and delivered only when they match to
// a filtered live WebSocket subscription; a label of the wrong type is a 400.
func TestAllInOneEventLabelsAreFilterableEndToEnd(t *testing.T) {
	t.Parallel()
	in := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	u := newWebUser(t, in)
	u.session("/auth/register", `{"name":"Label User","email":"labels@example.com","password":"correct horse battery"}`, http.StatusCreated)
	token := u.token
	projectID, key := u.project("labels")

	ws, _, err := websocket.Dial(ctx, strings.Replace(in.api, "http://", "ws://", 1)+"/realtime/"+projectID+
		"?token="+token+"&sessionId=sess-A&environment=production", nil)
	require.NoError(t, err)
	defer ws.CloseNow()
	_, msg, err := ws.Read(ctx)
	require.NoError(t, err)
	require.JSONEq(t, `{"type":"connected","projectId":"`+projectID+`"}`, string(msg))

	post := func(path, body string, want int) map[string]any {
		t.Helper()
		resp, err := http.Post(in.api+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, "%s", raw)
		var r map[string]any
		require.NoError(t, json.Unmarshal(raw, &r), "%s", raw)
		return r
	}
	rnContext := func(env, session, user string) string {
		return `{"app":{"appVersion":"2.0.0","environment":"` + env + `"},"device":{"appVersion":"1.9.0","os":"iOS"},` +
			`"session":{"sessionId":"` + session + `","startedAt":"2026-12-01T10:00:00.000Z"},"user":{"userId":"` + user + `"}}`
	}
	// Matches: labels at the top level.
	post("/ingest", `{"apiKey":"`+key+`","type":"event","name":"top","payload":{},"release":"1.0.0","environment":"production","sessionId":"sess-A","userId":"u-1"}`, http.StatusAccepted)
	// Matches: labels from the React Native SDK's context; the answer carries them.
	r := post("/ingest", `{"apiKey":"`+key+`","type":"error","name":"ctx","payload":{},"context":`+rnContext("production", "sess-A", "u-2")+`}`, http.StatusAccepted)
	answer := r["data"].(map[string]any)
	require.Equal(t, "2.0.0", answer["release"])
	require.Equal(t, "production", answer["environment"])
	require.Equal(t, "sess-A", answer["sessionId"])
	require.Equal(t, "u-2", answer["userId"])
	// Do not match: another session; another environment (the top level wins over the context).
	post("/ingest", `{"apiKey":"`+key+`","type":"event","name":"other-session","payload":{},"environment":"production","sessionId":"sess-B"}`, http.StatusAccepted)
	post("/ingest", `{"apiKey":"`+key+`","type":"event","name":"staging","payload":{},"environment":"staging","context":`+rnContext("production", "sess-A", "u-3")+`}`, http.StatusAccepted)
	// Matches: the analytics route's sessionId, the environment from the context.
	post("/analytics/screen-view", `{"apiKey":"`+key+`","screenName":"Home","sessionId":"sess-A","context":{"app":{"environment":"production"}}}`, http.StatusCreated)
	post("/ingest/batch", `[{"apiKey":"`+key+`","type":"event","name":"last","payload":{},"environment":"production","context":{"sessionId":"sess-A"}}]`, http.StatusAccepted)
	// A label of the wrong type is refused, naming it.
	bad := post("/ingest", `{"apiKey":"`+key+`","type":"event","name":"bad","payload":{},"sessionId":42}`, http.StatusBadRequest)
	require.Equal(t, "VALIDATION_FAILED", bad["code"])
	require.Contains(t, bad["message"], "sessionId must be string")

	// The filtered stream gets only the matching events, in order.
	var live []string
	for len(live) == 0 || live[len(live)-1] != "last" {
		_, msg, err := ws.Read(ctx)
		require.NoError(t, err)
		var ev map[string]any
		require.NoError(t, json.Unmarshal(msg, &ev))
		require.Equal(t, "sess-A", ev["sessionId"], "%s", msg)
		require.Equal(t, "production", ev["environment"], "%s", msg)
		live = append(live, ev["name"].(string))
	}
	require.Equal(t, []string{"top", "ctx", "screen_view", "last"}, live)

	// Stored and filterable through the events API (stored before published).
	list := func(query string) []map[string]any {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.api+"/projects/"+projectID+"/events?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var page struct{ Data []map[string]any }
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
		return page.Data
	}
	names := func(evs []map[string]any) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e["name"].(string))
		}
		return out
	}
	require.Equal(t, []string{"last", "screen_view", "ctx", "top"}, names(list("sessionId=sess-A&environment=production")))
	require.Equal(t, []string{"ctx"}, names(list("userId=u-2")))
	require.Equal(t, []string{"staging"}, names(list("environment=staging")))
	require.Equal(t, []string{"ctx"}, names(list("release="+url.QueryEscape("2.0.0")+"&type=error")))
	require.Len(t, list(""), 6)
}
