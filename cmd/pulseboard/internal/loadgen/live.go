package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	sse "github.com/tmaxmax/go-sse"
)

// LiveOptions describe the live-stream subscriber that measures ingest → delivered.
type LiveOptions struct {
	URL      string // api base URL, e.g. http://127.0.0.1:3000; empty: no subscriber
	Email    string // a dashboard user owning Project
	Password string
	Project  string // project id; empty: the project of the first key
	Protocol string // "sse" (default) or "ws"
}

// apiSession is a logged-in dashboard user (docs/api.md "Auth").
type apiSession struct {
	base  string
	token string
	hc    *http.Client
}

func apiLogin(ctx context.Context, base, email, password string) (*apiSession, error) {
	s := &apiSession{base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: 30 * time.Second}}
	body, _ := json.Marshal(map[string]string{"email": email, "password": password})
	var out struct {
		Data struct {
			AccessToken string `json:"accessToken"`
		} `json:"data"`
	}
	if err := s.call(ctx, http.MethodPost, "/auth/login", body, &out); err != nil {
		return nil, fmt.Errorf("logging in to the api as %s: %w", email, err)
	}
	if out.Data.AccessToken == "" {
		return nil, errors.New("logging in to the api: no access token in the answer")
	}
	s.token = out.Data.AccessToken
	return s, nil
}

// projects maps the API keys of the user's projects to their ids (GET /projects).
func (s *apiSession) projects(ctx context.Context) (map[string]uuid.UUID, error) {
	var out struct {
		Data []struct {
			ID     uuid.UUID `json:"id"`
			APIKey string    `json:"apiKey"`
		} `json:"data"`
	}
	if err := s.call(ctx, http.MethodGet, "/projects", nil, &out); err != nil {
		return nil, fmt.Errorf("listing the user's projects: %w", err)
	}
	m := make(map[string]uuid.UUID, len(out.Data))
	for _, p := range out.Data {
		m[p.APIKey] = p.ID
	}
	return m, nil
}

func (s *apiSession) call(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, out)
}

// subscriber receives one project's live stream and hands every event id to onEvent with
// the time it arrived; control messages are counted.
type subscriber struct {
	onEvent func(id uuid.UUID, at time.Time)
	// ready is closed when the run has started (its start time and schedule are set);
	// events before that cannot be the run's and are not handed on.
	ready      chan struct{}
	resyncs    atomic.Int64 // {"type":"resync"} messages
	missed     atomic.Int64 // events the server said it dropped for this client
	reconnects atomic.Int64
	other      atomic.Int64 // messages that were neither events nor known control messages
}

// handle classifies one message of the stream.
func (s *subscriber) handle(msg []byte, at time.Time) {
	select {
	case <-s.ready:
	default:
		return
	}
	// Events start with {"id":"…" (the compat field order); anything else is decoded.
	const prefix = `{"id":"`
	if len(msg) >= len(prefix)+36 && string(msg[:len(prefix)]) == prefix {
		if id, err := uuid.ParseBytes(msg[len(prefix) : len(prefix)+36]); err == nil {
			s.onEvent(id, at)
			return
		}
	}
	var m struct {
		ID     uuid.UUID `json:"id"`
		Type   string    `json:"type"`
		Missed int64     `json:"missed"`
	}
	if json.Unmarshal(msg, &m) != nil {
		s.other.Add(1)
		return
	}
	switch {
	case m.Type == "resync":
		s.resyncs.Add(1)
		s.missed.Add(m.Missed)
	case m.Type == "connected":
	case m.ID != uuid.Nil:
		s.onEvent(m.ID, at)
	default:
		s.other.Add(1)
	}
}

// subscribe connects to the project's stream and returns once the server said
// "connected", so that no event sent afterwards is missed; the stream is read until ctx
// ends. done receives the reason it stopped.
func (s *subscriber) subscribe(ctx context.Context, api *apiSession, project uuid.UUID, protocol string) (done <-chan error, err error) {
	switch protocol {
	case "", "sse":
		return s.sse(ctx, api, project)
	case "ws":
		return s.ws(ctx, api, project)
	}
	return nil, fmt.Errorf("live protocol %q: want sse or ws", protocol)
}

func (s *subscriber) ws(ctx context.Context, api *apiSession, project uuid.UUID) (<-chan error, error) {
	u := strings.Replace(strings.Replace(api.base, "https://", "wss://", 1), "http://", "ws://", 1) +
		"/realtime/" + project.String() + "?token=" + url.QueryEscape(api.token)
	c, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		return nil, fmt.Errorf("live WebSocket: %w", err)
	}
	c.SetReadLimit(1 << 20)
	_, first, err := c.Read(ctx)
	if err != nil || !bytes.Contains(first, []byte(`"connected"`)) {
		c.CloseNow()
		return nil, fmt.Errorf("live WebSocket: no connected message (%q, %v)", first, err)
	}
	done := make(chan error, 1)
	go func() {
		defer c.CloseNow()
		for {
			_, msg, err := c.Read(ctx)
			if err != nil {
				done <- err
				return
			}
			s.handle(msg, time.Now())
		}
	}()
	return done, nil
}

func (s *subscriber) sse(ctx context.Context, api *apiSession, project uuid.UUID) (<-chan error, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api.base+"/realtime/"+project.String()+"/sse", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+api.token)
	// Reconnects resume with Last-Event-ID, which the server replays from Postgres.
	cl := &sse.Client{OnRetry: func(error, time.Duration) { s.reconnects.Add(1) }}
	conn := cl.NewConnection(req)
	conn.Buffer(nil, 1<<20)
	connected := make(chan struct{})
	var once atomic.Bool
	conn.SubscribeMessages(func(ev sse.Event) {
		msg := []byte(ev.Data)
		if !once.Load() && bytes.Contains(msg, []byte(`"connected"`)) {
			once.Store(true)
			close(connected)
			return
		}
		s.handle(msg, time.Now())
	})
	done := make(chan error, 1)
	go func() { done <- conn.Connect() }()
	select {
	case <-connected:
		return done, nil
	case err := <-done:
		return nil, fmt.Errorf("live SSE: %w", err)
	case <-time.After(30 * time.Second):
		return nil, errors.New("live SSE: no connected message within 30s")
	}
}
