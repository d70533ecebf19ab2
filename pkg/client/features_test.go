package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// The hand-written encoder gives exactly what encoding/json gives the same struct,
// including the escaping of HTML characters, control characters and invalid UTF-8.
func TestWireEncodingMatchesEncodingJSON(t *testing.T) {
	type wire struct {
		Type      string         `json:"type"`
		Name      string         `json:"name"`
		Payload   map[string]any `json:"payload"`
		Timestamp string         `json:"timestamp"`
		Context   map[string]any `json:"context,omitempty"`
		EventID   uuid.UUID      `json:"eventId"`
	}
	ts := time.Date(2026, 3, 4, 5, 6, 7, 890_123_456, time.FixedZone("y", -7200))
	for _, name := range []string{"plain", `quote " and \ back`, "<b>&amp;</b>", "tab\tnewline\n\x00nul",
		"ünïcødé ✓ 🚀", "bad utf8 \xff\xfe", "line\u2028sep\u2029", ""} {
		for _, ctx := range []map[string]any{nil, {}, {"k": name}} {
			ev := Event{Type: TypeError, Name: name, Payload: map[string]any{"z": 1, "a": []any{name, 2.5, nil}},
				Context: ctx, Timestamp: ts, EventID: uuid.Must(uuid.NewV7())}
			got, err := appendEvent(nil, &ev, "")
			require.NoError(t, err)
			want, err := json.Marshal(wire{Type: ev.Type, Name: ev.Name, Payload: ev.Payload, Context: ev.Context,
				Timestamp: ts.UTC().Format(timeLayout), EventID: ev.EventID})
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got), "name %q context %v", name, ctx)
		}
	}
}

func TestTimestampEncoding(t *testing.T) {
	times := []time.Time{time.Unix(0, 0), time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 2, 3, 4, 5, 6, 7_000_000, time.FixedZone("z", 5*3600+1800))}
	for i := range 1000 {
		times = append(times, time.Unix(int64(i)*7_777_777_777%253402300799, int64(i)*999_983%1e9))
	}
	for _, ts := range times {
		assert.Equal(t, ts.UTC().Format(timeLayout), string(appendTimestamp(nil, ts)))
	}
}

func TestRawPayload(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{})
	require.NoError(t, c.Enqueue(Event{Type: TypeEvent, Name: "raw", RawPayload: json.RawMessage(` {"pre":"encoded","n":[1,2]} `),
		Payload: map[string]any{"ignored": true}}))
	flush(t, c)
	r := in.next()
	require.Len(t, r.evs, 1)
	assert.Equal(t, map[string]any{"pre": "encoded", "n": []any{1.0, 2.0}}, r.evs[0]["payload"])

	for _, bad := range []string{`[1]`, `"s"`, `{"open":`, `   `, `{"a":1,"a":2}`, `{"a":{"b":1,"\u0062":2}}`} {
		assert.ErrorIs(t, c.Enqueue(Event{Type: TypeEvent, Name: "raw", RawPayload: json.RawMessage(bad)}), ErrInvalidEvent, bad)
	}
	err := c.Enqueue(Event{Type: TypeEvent, Name: "raw", RawPayload: json.RawMessage(`{"a":{"b":1,"b":2}}`)})
	assert.EqualError(t, err, `pulseboard client: invalid event: RawPayload/a must NOT have duplicate keys ("b" appears more than once)`)
	assert.Equal(t, uint64(1), c.Stats().Enqueued)
}

// compatServer is a fake of the compat POST /ingest: one event per request, the key in
// the body; 202 with the event, 400 for a bad name, 401 for a wrong key, unless answer
// overrides.
type compatServer struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []map[string]any
	hdrs   []http.Header
	answer func(n int) (int, bool)
}

func newCompatServer(t *testing.T, answer func(n int) (int, bool)) *compatServer {
	s := &compatServer{answer: answer}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ingest" {
			writeJSON(w, http.StatusNotFound, errBody("NOT_FOUND", "no route"))
			return
		}
		var ev map[string]any
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &ev); err != nil {
			writeJSON(w, http.StatusBadRequest, errBody("INVALID_JSON", err.Error()))
			return
		}
		s.mu.Lock()
		n := len(s.bodies)
		s.bodies = append(s.bodies, ev)
		s.hdrs = append(s.hdrs, r.Header.Clone())
		s.mu.Unlock()
		if s.answer != nil {
			if status, ok := s.answer(n); ok {
				writeJSON(w, status, errBody("UNAVAILABLE", "scripted"))
				return
			}
		}
		switch {
		case ev["apiKey"] != testKey:
			writeJSON(w, http.StatusUnauthorized, errBody("INVALID_API_KEY", "Invalid API key"))
		case ev["name"] == "bad":
			writeJSON(w, http.StatusBadRequest, errBody("VALIDATION_FAILED", "body/name is bad"))
		default:
			b, _ := json.Marshal(map[string]any{"success": true, "message": "Event accepted", "data": map[string]any{"id": ev["eventId"]}})
			writeJSON(w, http.StatusAccepted, b)
		}
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// Compat: each event alone, to POST /ingest, the key in the body; the answers are
// classified like the batch endpoint's (202 accepted, 400 rejected, 401 failed, 503 retried).
func TestCompatSendsEachEventAloneToIngest(t *testing.T) {
	s := newCompatServer(t, func(n int) (int, bool) { return http.StatusServiceUnavailable, n == 0 })
	var mu sync.Mutex
	results := map[uuid.UUID]Result{}
	c, err := New(Options{Endpoint: s.srv.URL, APIKey: testKey, Compat: true, MaxBatchEvents: 50, FlushInterval: time.Hour,
		RetryBaseDelay: time.Millisecond, RetryMaxDelay: time.Millisecond,
		OnResult: func(r Result) { mu.Lock(); results[r.EventID] = r; mu.Unlock() }})
	require.NoError(t, err)
	good := Event{Type: TypeEvent, Name: "good", Payload: map[string]any{"i": 1}, EventID: uuid.Must(uuid.NewV7())}
	bad := Event{Type: TypeEvent, Name: "bad", EventID: uuid.Must(uuid.NewV7())}
	third := Event{Type: TypeMetric, Name: "third", EventID: uuid.Must(uuid.NewV7())}
	for _, e := range []Event{good, bad, third} {
		require.NoError(t, c.Enqueue(e))
	}
	require.NoError(t, c.Close(context.Background()))

	s.mu.Lock()
	defer s.mu.Unlock()
	require.Len(t, s.bodies, 4, "one request per event, plus the retry of the first")
	assert.Equal(t, s.bodies[0], s.bodies[1], "the retry is the same body")
	for i, b := range s.bodies {
		assert.Equal(t, testKey, b["apiKey"], "key in the body")
		assert.Empty(t, s.hdrs[i].Get("X-API-Key"), "no batch-style key header")
	}
	assert.Equal(t, good.EventID.String(), s.bodies[0]["eventId"])
	assert.Equal(t, map[string]any{"i": 1.0}, s.bodies[0]["payload"])
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, Result{EventID: good.EventID, Status: StatusAccepted, HTTPStatus: 202, Attempts: 2}, results[good.EventID])
	assert.Equal(t, Result{EventID: bad.EventID, Status: StatusRejected, HTTPStatus: 400, Code: "VALIDATION_FAILED",
		Message: "body/name is bad", Attempts: 1}, results[bad.EventID])
	assert.Equal(t, StatusAccepted, results[third.EventID].Status)
	assert.Equal(t, Stats{Enqueued: 3, Sent: 2, Rejected: 1, Retries: 1}, c.Stats())
}

func TestCompatWrongKeyFails(t *testing.T) {
	s := newCompatServer(t, nil)
	c, err := New(Options{Endpoint: s.srv.URL, APIKey: "wrong", Compat: true})
	require.NoError(t, err)
	require.NoError(t, c.Enqueue(ev("x")))
	require.NoError(t, c.Close(context.Background()))
	assert.Equal(t, Stats{Enqueued: 1, Failed: 1}, c.Stats())
}

// Concurrency: that many requests are in flight at once, and Flush still waits for all.
func TestConcurrencyRequestsInFlight(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	c := newClient(t, in, Options{Concurrency: 4, MaxBatchEvents: 2})
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(in.block) }) })
	ids := enqueue(t, c, 9)
	seen := map[uuid.UUID]bool{}
	for range 4 { // four requests arrive while none has been answered
		for _, id := range in.next().ids {
			seen[id] = true
		}
	}
	assert.Len(t, seen, 8)
	flushed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		flushed <- c.Flush(ctx)
	}()
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned (%v) while requests were in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	unblock.Do(func() { close(in.block) })
	require.NoError(t, <-flushed)
	for _, id := range in.next().ids {
		seen[id] = true
	}
	for _, id := range ids {
		assert.True(t, seen[id])
	}
	assert.Equal(t, Stats{Enqueued: 9, Sent: 9}, c.Stats())
}

// Concurrency: no event leaves the queue while every slot is busy, so the queue bound
// (and Dropped) mean what they say.
func TestConcurrencyQueueBoundHolds(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	c := newClient(t, in, Options{Concurrency: 2, MaxBatchEvents: 1, QueueSize: 3})
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(in.block) }) })
	enqueue(t, c, 2)
	in.next()
	in.next() // both slots busy
	enqueue(t, c, 3)
	assert.ErrorIs(t, c.Enqueue(ev("overflow")), ErrQueueFull)
	unblock.Do(func() { close(in.block) })
	require.NoError(t, c.Close(context.Background()))
	assert.Equal(t, Stats{Enqueued: 5, Sent: 5, Dropped: 1}, c.Stats())
}

// EnqueueWait waits for room instead of dropping; it gives up with its context or Close.
func TestEnqueueWaitBackpressure(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	c := newClient(t, in, Options{MaxBatchEvents: 1, QueueSize: 1})
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(in.block) }) })
	bg := context.Background()
	require.NoError(t, c.EnqueueWait(bg, ev("a")))
	in.next()                                      // the sender is stuck in the request
	require.NoError(t, c.EnqueueWait(bg, ev("b"))) // fills the queue

	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, c.EnqueueWait(ctx, ev("c")), context.DeadlineExceeded)

	done := make(chan error, 1)
	go func() { done <- c.EnqueueWait(bg, ev("d")) }()
	select {
	case err := <-done:
		t.Fatalf("EnqueueWait returned %v with a full queue", err)
	case <-time.After(50 * time.Millisecond):
	}
	unblock.Do(func() { close(in.block) })
	require.NoError(t, <-done)
	require.NoError(t, c.Close(bg))
	assert.Equal(t, Stats{Enqueued: 3, Sent: 3}, c.Stats(), "nothing dropped, the timed-out event not counted")
	assert.ErrorIs(t, c.EnqueueWait(bg, ev("late")), ErrClosed)
}

func TestCloseWakesEnqueueWait(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	c := newClient(t, in, Options{MaxBatchEvents: 1, QueueSize: 1})
	bg := context.Background()
	require.NoError(t, c.EnqueueWait(bg, ev("a")))
	in.next()
	require.NoError(t, c.EnqueueWait(bg, ev("b")))
	waiting := make(chan error, 1)
	go func() { waiting <- c.EnqueueWait(bg, ev("c")) }()
	time.Sleep(20 * time.Millisecond) // let it block (if it has not, it still must not succeed)
	closed := make(chan error, 1)
	go func() { closed <- c.Close(bg) }()
	assert.ErrorIs(t, <-waiting, ErrClosed)
	close(in.block)
	require.NoError(t, <-closed)
	assert.Equal(t, Stats{Enqueued: 2, Sent: 2}, c.Stats())
}

// countingDoer wraps an *http.Client and counts the requests it carried.
type countingDoer struct {
	hc *http.Client
	n  atomic.Int64
}

func (d *countingDoer) Do(r *http.Request) (*http.Response, error) {
	d.n.Add(1)
	return d.hc.Do(r)
}

func TestDoerCarriesRequests(t *testing.T) {
	in := newIngestor(t, nil)
	d := &countingDoer{hc: &http.Client{}}
	t.Cleanup(d.hc.CloseIdleConnections)
	c := newClient(t, in, Options{Doer: d, HTTPClient: &http.Client{Transport: failingTransport{}}, MaxBatchEvents: 2})
	enqueue(t, c, 5)
	flush(t, c)
	assert.EqualValues(t, 3, d.n.Load(), "Doer takes precedence over HTTPClient")
	assert.Equal(t, uint64(5), c.Stats().Sent)
}

type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("must not be used")
}

// OnRequest sees every attempt, its status and duration; Result.Attempts counts them.
func TestOnRequestAndAttempts(t *testing.T) {
	in := newIngestor(t, func(n int, _ request) (int, http.Header, []byte, bool) {
		if n < 2 {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"0"}}, errBody("UNAVAILABLE", "retry"), true
		}
		return 0, nil, nil, false
	})
	var mu sync.Mutex
	var reqs []RequestInfo
	var results []Result
	c := newClient(t, in, Options{
		OnRequest: func(r RequestInfo) { mu.Lock(); reqs = append(reqs, r); mu.Unlock() },
		OnResult:  func(r Result) { mu.Lock(); results = append(results, r); mu.Unlock() },
	})
	enqueue(t, c, 3)
	flush(t, c)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, reqs, 3)
	for i, r := range reqs {
		assert.Equal(t, i+1, r.Attempt)
		assert.Equal(t, 3, r.Events)
		assert.NoError(t, r.Err)
		assert.False(t, r.Start.IsZero())
		assert.Positive(t, r.Duration)
	}
	assert.Equal(t, []int{503, 503, 202}, []int{reqs[0].HTTPStatus, reqs[1].HTTPStatus, reqs[2].HTTPStatus})
	require.Len(t, results, 3)
	for _, r := range results {
		assert.Equal(t, 3, r.Attempts)
	}
}

func TestOnRequestTransportError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens any more
	var mu sync.Mutex
	var reqs []RequestInfo
	var results []Result
	c, err := New(Options{Endpoint: url, APIKey: testKey, MaxRetries: 1, RetryBaseDelay: time.Millisecond, RetryMaxDelay: time.Millisecond,
		OnRequest: func(r RequestInfo) { mu.Lock(); reqs = append(reqs, r); mu.Unlock() },
		OnResult:  func(r Result) { mu.Lock(); results = append(results, r); mu.Unlock() }})
	require.NoError(t, err)
	require.NoError(t, c.Enqueue(ev("x")))
	require.NoError(t, c.Close(context.Background()))
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, reqs, 2)
	for _, r := range reqs {
		assert.Error(t, r.Err)
		assert.Zero(t, r.HTTPStatus)
	}
	require.Len(t, results, 1)
	assert.Equal(t, StatusFailed, results[0].Status)
	assert.Equal(t, 2, results[0].Attempts)
	assert.Zero(t, results[0].HTTPStatus)
}

// The private client keeps Concurrency idle connections: after a burst of concurrent
// requests, the next burst reuses them instead of dialling again (http.DefaultTransport
// keeps only 2 per host).
func TestPrivateClientKeepsConcurrencyConnections(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	var dials atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(in.serve))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(Options{Endpoint: srv.URL, APIKey: testKey, Concurrency: 8, MaxBatchEvents: 1, FlushInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	burst := func() {
		enqueue(t, c, 8)
		for range 8 {
			in.next() // eight requests in flight at once, so eight connections
		}
		for range 8 {
			in.block <- struct{}{}
		}
		flush(t, c)
	}
	burst()
	assert.EqualValues(t, 8, dials.Load())
	burst()
	assert.EqualValues(t, 8, dials.Load(), "no new connection for the second burst")
	assert.Equal(t, uint64(16), c.Stats().Sent)
}

// lateReader is a Doer that answers 202 at once and reads each request body only later,
// as a RoundTripper may until it closes the body.
type lateReader struct {
	mu     sync.Mutex
	bodies []io.ReadCloser
	sizes  []int64
}

func (d *lateReader) Do(r *http.Request) (*http.Response, error) {
	d.mu.Lock()
	d.bodies = append(d.bodies, r.Body)
	d.sizes = append(d.sizes, r.ContentLength)
	d.mu.Unlock()
	return &http.Response{StatusCode: http.StatusAccepted, Body: http.NoBody, Request: r}, nil
}

// A body the Doer has not closed is never reused for a later batch: what the Doer reads
// late is still the batch it was given. Bodies that were closed are reused (no
// allocation per batch), which the Flush in between makes likely here.
func TestBodyNotReusedWhileDoerHoldsIt(t *testing.T) {
	d := &lateReader{}
	c, err := New(Options{Endpoint: "http://late.invalid", APIKey: testKey, MaxBatchEvents: 3, Doer: d, FlushInterval: time.Hour})
	require.NoError(t, err)
	var ids [][]uuid.UUID
	for range 4 {
		ids = append(ids, enqueue(t, c, 3))
		flush(t, c)
	}
	require.NoError(t, c.Close(context.Background()))
	require.Len(t, d.bodies, 4)
	for i, b := range d.bodies {
		raw, err := io.ReadAll(b)
		require.NoError(t, err)
		require.EqualValues(t, d.sizes[i], len(raw), "ContentLength of request %d", i)
		var got []struct {
			EventID uuid.UUID `json:"eventId"`
		}
		require.NoError(t, json.Unmarshal(raw, &got), "request %d: %s", i, raw)
		require.Len(t, got, 3)
		for j, e := range got {
			assert.Equal(t, ids[i][j], e.EventID, "request %d event %d", i, j)
		}
		require.NoError(t, b.Close())
	}
}
