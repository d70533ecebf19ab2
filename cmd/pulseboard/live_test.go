package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"github.com/tmaxmax/go-sse"
)

// Issue 3, acceptance 4, end to end: events ingested through the ingestor reach two
// WebSocket clients (coder/websocket, not the server's library) and one SSE client
// (tmaxmax/go-sse) on the same project, in order; closing one client never affects the
// others.
func TestAllInOneLiveStreamsDeliverIngestedEvents(t *testing.T) {
	t.Parallel()
	in := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A dashboard user: register, create a project (its key is for the SDK).
	var reg struct {
		Data struct {
			AccessToken string `json:"accessToken"`
		} `json:"data"`
	}
	postJSON(t, in.api+"/auth/register", "", `{"name":"Live User","email":"live@example.com","password":"correct horse battery"}`, http.StatusCreated, &reg)
	token := reg.Data.AccessToken
	require.NotEmpty(t, token)
	var proj struct {
		Data struct {
			ID     string `json:"id"`
			APIKey string `json:"apiKey"`
		} `json:"data"`
	}
	postJSON(t, in.api+"/projects", token, `{"name":"live"}`, http.StatusCreated, &proj)

	wsURL := strings.Replace(in.api, "http://", "ws://", 1) + "/realtime/" + proj.Data.ID + "?token=" + token
	dial := func() *websocket.Conn {
		c, _, err := websocket.Dial(ctx, wsURL, nil)
		require.NoError(t, err)
		_, msg, err := c.Read(ctx)
		require.NoError(t, err)
		require.JSONEq(t, `{"type":"connected","projectId":"`+proj.Data.ID+`"}`, string(msg))
		return c
	}
	ws1, ws2 := dial(), dial()
	defer ws2.CloseNow()

	// SSE through go-sse, an EventSource-style client (it checks the content type and
	// would reconnect with Last-Event-ID like a browser).
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.api+"/realtime/"+proj.Data.ID+"/sse", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	sseConn := sse.NewConnection(req)
	sseEvents := make(chan string, 100)
	sseConn.SubscribeMessages(func(ev sse.Event) { sseEvents <- ev.Data })
	sseDone := make(chan error, 1)
	go func() { sseDone <- sseConn.Connect() }()
	sseNext := func() string {
		select {
		case data := <-sseEvents:
			return data
		case err := <-sseDone:
			t.Fatalf("SSE connection ended: %v", err)
		case <-ctx.Done():
			t.Fatal("SSE: timed out")
		}
		return ""
	}
	require.Contains(t, sseNext(), `"type":"connected"`)

	ingest := func(from, n int) {
		var evs []string
		for i := from; i < from+n; i++ {
			evs = append(evs, fmt.Sprintf(`{"type":"event","name":"live-%02d","payload":{"i":%d}}`, i, i))
		}
		r, _ := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader("["+strings.Join(evs, ",")+"]"))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("X-API-Key", proj.Data.APIKey)
		resp, err := http.DefaultClient.Do(r)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}
	name := func(raw []byte) string {
		var ev struct {
			Name, ProjectID string
		}
		require.NoError(t, json.Unmarshal(raw, &ev), "%s", raw)
		require.Equal(t, proj.Data.ID, ev.ProjectID)
		return ev.Name
	}
	readWS := func(c *websocket.Conn, from, n int) {
		for i := from; i < from+n; i++ {
			_, msg, err := c.Read(ctx)
			require.NoError(t, err)
			require.Equal(t, fmt.Sprintf("live-%02d", i), name(msg), "in order, none missing")
		}
	}
	readSSE := func(from, n int) {
		for i := from; i < from+n; i++ {
			require.Equal(t, fmt.Sprintf("live-%02d", i), name([]byte(sseNext())))
		}
	}

	ingest(0, 20)
	readWS(ws1, 0, 20)
	readWS(ws2, 0, 20)
	readSSE(0, 20)

	// One client leaves; the others keep receiving (the old backend unsubscribed all).
	require.NoError(t, ws1.Close(websocket.StatusNormalClosure, "bye"))
	ingest(20, 5)
	readWS(ws2, 20, 5)
	readSSE(20, 5)
}

func postJSON(t *testing.T, url, bearer, body string, want int, out any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, want, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(out))
}
