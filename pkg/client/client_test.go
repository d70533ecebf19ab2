package client

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

const testKey = "pb_test_key"

// request is what the fake ingestor saw in one request.
type request struct {
	gzip bool
	raw  []byte // body as received on the wire
	ids  []uuid.UUID
	evs  []map[string]any
}

// reply scripts the answer to request n (0-based); nil means the default contract answer.
type reply func(n int, r request) (status int, header http.Header, body []byte, ok bool)

// ingestor is a fake POST /ingest/batch following intake.go: it checks the key, decodes
// a (possibly gzipped) JSON array, validates each event, deduplicates by eventId and
// answers 202, 200 with per-event results, or 400, unless script overrides the answer.
type ingestor struct {
	t      *testing.T
	srv    *httptest.Server
	script reply
	block  chan struct{} // when set, requests wait on it before answering
	reqs   chan request  // every decoded request, in order (buffered)

	mu     sync.Mutex
	stored map[uuid.UUID]int // accepted ids → how many times the ingestor saw them
	n      int
}

func newIngestor(t *testing.T, script reply) *ingestor {
	in := &ingestor{t: t, script: script, reqs: make(chan request, 1000), stored: map[uuid.UUID]int{}}
	in.srv = httptest.NewServer(http.HandlerFunc(in.serve))
	t.Cleanup(in.srv.Close)
	return in
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func errBody(code, msg string) []byte {
	b, _ := json.Marshal(map[string]any{"success": false, "code": code, "message": msg})
	return b
}

func (in *ingestor) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/ingest/batch" {
		writeJSON(w, http.StatusNotFound, errBody("NOT_FOUND", "no route"))
		return
	}
	if r.Header.Get("Content-Type") != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, errBody("UNSUPPORTED_MEDIA_TYPE", "json only"))
		return
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var req request
	req.raw = raw
	body := raw
	if r.Header.Get("Content-Encoding") == "gzip" {
		req.gzip = true
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err == nil {
			body, err = io.ReadAll(zr)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errBody("BAD_REQUEST", "body could not be decompressed as gzip"))
			return
		}
	}
	if err := json.Unmarshal(body, &req.evs); err != nil {
		writeJSON(w, http.StatusBadRequest, errBody("INVALID_JSON", err.Error()))
		return
	}
	for _, ev := range req.evs {
		id, _ := uuid.Parse(fmt.Sprint(ev["eventId"]))
		req.ids = append(req.ids, id)
	}
	in.mu.Lock()
	n := in.n
	in.n++
	in.mu.Unlock()
	in.reqs <- req
	if in.block != nil {
		<-in.block
	}
	if in.script != nil {
		if status, hdr, b, ok := in.script(n, req); ok {
			for k, v := range hdr {
				w.Header()[k] = v
			}
			writeJSON(w, status, b)
			return
		}
	}
	if r.Header.Get("X-API-Key") != testKey {
		writeJSON(w, http.StatusUnauthorized, errBody("INVALID_API_KEY", "Invalid API key"))
		return
	}
	type result struct {
		Index   int    `json:"index"`
		ID      string `json:"id,omitempty"`
		Status  string `json:"status"`
		Code    string `json:"code,omitempty"`
		Message string `json:"message,omitempty"`
	}
	var results []result
	accepted := 0
	in.mu.Lock()
	for i, ev := range req.evs {
		_, payloadOK := ev["payload"].(map[string]any)
		_, tsErr := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["timestamp"]))
		name, _ := ev["name"].(string)
		switch {
		case ev["type"] != "error" && ev["type"] != "event" && ev["type"] != "metric",
			name == "" || name == "bad", !payloadOK, tsErr != nil, req.ids[i] == uuid.Nil:
			results = append(results, result{Index: i, Status: "rejected", Code: "VALIDATION_FAILED", Message: "events/" + strconv.Itoa(i) + " is invalid"})
		default:
			in.stored[req.ids[i]]++
			accepted++
			results = append(results, result{Index: i, ID: req.ids[i].String(), Status: "accepted"})
		}
	}
	in.mu.Unlock()
	data := map[string]any{"accepted": accepted, "rejected": len(results) - accepted, "results": results}
	status := http.StatusAccepted
	out := map[string]any{"success": true, "data": data}
	switch {
	case accepted == 0:
		status = http.StatusBadRequest
		out = map[string]any{"success": false, "code": "VALIDATION_FAILED", "message": "no event in the batch was accepted", "data": data}
	case accepted < len(results):
		status = http.StatusOK
	}
	b, _ := json.Marshal(out)
	writeJSON(w, status, b)
}

// next returns the next request the ingestor saw, failing after a generous timeout.
func (in *ingestor) next() request {
	in.t.Helper()
	select {
	case r := <-in.reqs:
		return r
	case <-time.After(10 * time.Second):
		in.t.Fatal("timed out waiting for a request")
		return request{}
	}
}

func (in *ingestor) requests() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.n
}

func (in *ingestor) storedCount() (ids, seen int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, n := range in.stored {
		ids++
		seen += n
	}
	return ids, seen
}

func newClient(t *testing.T, in *ingestor, o Options) *Client {
	t.Helper()
	o.Endpoint = in.srv.URL
	if o.APIKey == "" {
		o.APIKey = testKey
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = time.Hour // tests flush explicitly unless they test the interval
	}
	if o.RetryBaseDelay == 0 {
		o.RetryBaseDelay = time.Millisecond
		o.RetryMaxDelay = 5 * time.Millisecond
	}
	c, err := New(o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func ev(name string) Event {
	return Event{Type: TypeEvent, Name: name, Payload: map[string]any{"n": name}}
}

func enqueue(t *testing.T, c *Client, n int) []uuid.UUID {
	t.Helper()
	ids := make([]uuid.UUID, n)
	for i := range ids {
		e := ev("e" + strconv.Itoa(i))
		e.EventID = uuid.Must(uuid.NewV7())
		ids[i] = e.EventID
		require.NoError(t, c.Enqueue(e))
	}
	return ids
}

func flush(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, c.Flush(ctx))
}

func TestBatchesByCount(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{MaxBatchEvents: 10})
	ids := enqueue(t, c, 25)
	// Two full batches leave without any flush or timer (FlushInterval is an hour).
	r1, r2 := in.next(), in.next()
	assert.Equal(t, ids[:10], r1.ids)
	assert.Equal(t, ids[10:20], r2.ids)
	flush(t, c)
	assert.Equal(t, ids[20:], in.next().ids)
	assert.Equal(t, Stats{Enqueued: 25, Sent: 25}, c.Stats())
	assert.Equal(t, 3, in.requests())
}

func TestBatchesByBytes(t *testing.T) {
	in := newIngestor(t, nil)
	// Each encoded event is about 250 bytes, so at most 2 fit in 600.
	c := newClient(t, in, Options{MaxBatchBytes: 600})
	for i := range 5 {
		e := ev("e" + strconv.Itoa(i))
		e.Payload["pad"] = string(bytes.Repeat([]byte("x"), 100))
		require.NoError(t, c.Enqueue(e))
	}
	flush(t, c)
	total := 0
	for range in.requests() {
		r := in.next()
		assert.LessOrEqual(t, len(r.raw), 600)
		assert.LessOrEqual(t, len(r.ids), 2)
		total += len(r.ids)
	}
	assert.Equal(t, 5, total)
	assert.GreaterOrEqual(t, in.requests(), 3)
	assert.Equal(t, uint64(5), c.Stats().Sent)
}

func TestBatchesByInterval(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{FlushInterval: 20 * time.Millisecond})
	ids := enqueue(t, c, 3)
	// No Flush: the interval alone sends the partial batch.
	assert.Equal(t, ids, in.next().ids)
	ids = enqueue(t, c, 2)
	assert.Equal(t, ids, in.next().ids)
}

func TestGzipBody(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{Gzip: true})
	ids := enqueue(t, c, 4)
	flush(t, c)
	r := in.next()
	assert.True(t, r.gzip, "Content-Encoding: gzip")
	require.GreaterOrEqual(t, len(r.raw), 2)
	assert.Equal(t, []byte{0x1f, 0x8b}, r.raw[:2], "gzip magic on the wire")
	assert.Equal(t, ids, r.ids)
	assert.Equal(t, uint64(4), c.Stats().Sent)
}

func TestWireFormat(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{})
	ts := time.Date(2026, 1, 2, 3, 4, 5, 678_900_000, time.FixedZone("x", 3600))
	require.NoError(t, c.Enqueue(Event{Type: TypeMetric, Name: "m", Payload: map[string]any{"v": 1.5},
		Context: map[string]any{"env": "test"}, Timestamp: ts}))
	require.NoError(t, c.Enqueue(Event{Type: TypeError, Name: "e"}))
	flush(t, c)
	r := in.next()
	require.Len(t, r.evs, 2)
	assert.Equal(t, "2026-01-02T02:04:05.678Z", r.evs[0]["timestamp"])
	assert.Equal(t, map[string]any{"env": "test"}, r.evs[0]["context"])
	assert.Equal(t, map[string]any{"v": 1.5}, r.evs[0]["payload"])
	assert.Equal(t, map[string]any{}, r.evs[1]["payload"])
	assert.NotContains(t, r.evs[1], "context")
	assert.Equal(t, uuid.Version(7), r.ids[1].Version(), "generated ids are UUIDv7")
	assert.Equal(t, uint64(2), c.Stats().Sent)
}

func TestRetryAfter503KeepsEventIDs(t *testing.T) {
	in := newIngestor(t, func(n int, _ request) (int, http.Header, []byte, bool) {
		if n == 0 {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}},
				errBody("UNAVAILABLE", "events could not be stored durably in time; retry with the same event ids"), true
		}
		return 0, nil, nil, false
	})
	var mu sync.Mutex
	var results []Result
	c := newClient(t, in, Options{OnResult: func(r Result) { mu.Lock(); results = append(results, r); mu.Unlock() }})
	ids := enqueue(t, c, 5)
	start := time.Now()
	flush(t, c)
	assert.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "Retry-After: 1 honoured")
	first, second := in.next(), in.next()
	assert.Equal(t, ids, first.ids)
	assert.Equal(t, first.ids, second.ids, "the retry carries the same event ids")
	ids2, seen := in.storedCount()
	assert.Equal(t, 5, ids2)
	assert.Equal(t, 5, seen)
	assert.Equal(t, Stats{Enqueued: 5, Sent: 5, Retries: 1}, c.Stats())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, results, 5)
	for i, r := range results {
		assert.Equal(t, ids[i], r.EventID)
		assert.Equal(t, StatusAccepted, r.Status)
	}
}

// TestRetryDedup: the first attempt is stored but its answer lost (503), so the retry
// is a duplicate the server counts once.
func TestRetryDedup(t *testing.T) {
	var in *ingestor
	in = newIngestor(t, func(n int, r request) (int, http.Header, []byte, bool) {
		in.mu.Lock()
		defer in.mu.Unlock()
		for _, id := range r.ids {
			in.stored[id]++ // stored by Kafka, then the 503 (lost acknowledgement)
		}
		if n == 0 {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"0"}}, errBody("UNAVAILABLE", "retry"), true
		}
		b, _ := json.Marshal(map[string]any{"success": true, "data": map[string]any{"accepted": len(r.ids), "rejected": 0}})
		return http.StatusAccepted, nil, b, true
	})
	c := newClient(t, in, Options{})
	enqueue(t, c, 3)
	flush(t, c)
	ids, seen := in.storedCount()
	assert.Equal(t, 3, ids, "same ids: deduplicated to 3 events")
	assert.Equal(t, 6, seen, "each id arrived twice")
	assert.Equal(t, Stats{Enqueued: 3, Sent: 3, Retries: 1}, c.Stats())
}

func TestRateLimited429Honoured(t *testing.T) {
	in := newIngestor(t, func(n int, _ request) (int, http.Header, []byte, bool) {
		if n == 0 {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}, "Ratelimit-Remaining": {"0"}},
				errBody("RATE_LIMITED", "Rate limit exceeded for this project; retry after the Retry-After delay"), true
		}
		return 0, nil, nil, false
	})
	c := newClient(t, in, Options{})
	ids := enqueue(t, c, 2)
	start := time.Now()
	flush(t, c)
	assert.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "Retry-After: 1 honoured")
	assert.Equal(t, ids, in.next().ids)
	assert.Equal(t, ids, in.next().ids)
	assert.Equal(t, Stats{Enqueued: 2, Sent: 2, Retries: 1}, c.Stats())
}

func TestBackoffWithoutRetryAfterThenGiveUp(t *testing.T) {
	in := newIngestor(t, func(int, request) (int, http.Header, []byte, bool) {
		return http.StatusBadGateway, nil, []byte("bad gateway"), true
	})
	var failed []Result
	c := newClient(t, in, Options{MaxRetries: 3, OnResult: func(r Result) { failed = append(failed, r) }})
	enqueue(t, c, 4)
	flush(t, c)
	assert.Equal(t, 4, in.requests(), "first attempt + 3 retries")
	assert.Equal(t, Stats{Enqueued: 4, Failed: 4, Retries: 3}, c.Stats())
	require.Len(t, failed, 4)
	assert.Equal(t, StatusFailed, failed[0].Status)
	assert.Equal(t, http.StatusBadGateway, failed[0].HTTPStatus)
}

func TestTransportErrorRetried(t *testing.T) {
	in := newIngestor(t, nil)
	var once sync.Once
	// A server that kills the first connection without answering, then proxies to the ingestor.
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hijacked := false
		once.Do(func() {
			_, _ = io.ReadAll(r.Body)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = conn.Close()
				hijacked = true
			}
		})
		if !hijacked {
			in.serve(w, r)
		}
	}))
	t.Cleanup(flaky.Close)
	c, err := New(Options{Endpoint: flaky.URL, APIKey: testKey, FlushInterval: time.Hour,
		RetryBaseDelay: time.Millisecond, RetryMaxDelay: 2 * time.Millisecond})
	require.NoError(t, err)
	ids := enqueue(t, c, 3)
	require.NoError(t, c.Close(context.Background()))
	assert.Equal(t, ids, in.next().ids)
	assert.Equal(t, Stats{Enqueued: 3, Sent: 3, Retries: 1}, c.Stats())
}

func TestPartialAndInvalidCountedRejectedNotRetried(t *testing.T) {
	in := newIngestor(t, nil)
	var mu sync.Mutex
	rejected := map[uuid.UUID]Result{}
	c := newClient(t, in, Options{OnResult: func(r Result) {
		mu.Lock()
		defer mu.Unlock()
		if r.Status == StatusRejected {
			rejected[r.EventID] = r
		}
	}})
	good := enqueue(t, c, 2)
	bad := ev("bad")
	bad.EventID = uuid.Must(uuid.NewV7())
	require.NoError(t, c.Enqueue(bad))
	flush(t, c) // 200 partial
	require.NoError(t, c.Enqueue(ev("bad")))
	require.NoError(t, c.Enqueue(ev("bad")))
	flush(t, c) // 400, none valid
	assert.Equal(t, 2, in.requests(), "neither the 200 nor the 400 is retried")
	assert.Equal(t, Stats{Enqueued: 5, Sent: 2, Rejected: 3}, c.Stats())
	ids, _ := in.storedCount()
	assert.Equal(t, 2, ids)
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, rejected, 3)
	assert.NotContains(t, rejected, good[0])
	require.Contains(t, rejected, bad.EventID)
	assert.Equal(t, "VALIDATION_FAILED", rejected[bad.EventID].Code)
	assert.Equal(t, http.StatusOK, rejected[bad.EventID].HTTPStatus)
}

func TestUnauthorizedFailsWithoutRetry(t *testing.T) {
	in := newIngestor(t, nil)
	var mu sync.Mutex
	var results []Result
	c := newClient(t, in, Options{APIKey: "wrong", OnResult: func(r Result) { mu.Lock(); results = append(results, r); mu.Unlock() }})
	enqueue(t, c, 3)
	flush(t, c)
	assert.Equal(t, 1, in.requests())
	assert.Equal(t, Stats{Enqueued: 3, Failed: 3}, c.Stats())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, results, 3)
	assert.Equal(t, Result{EventID: results[0].EventID, Status: StatusFailed, HTTPStatus: 401,
		Code: "INVALID_API_KEY", Message: "Invalid API key", Attempts: 1}, results[0])
}

func TestPayloadTooLargeNotRetried(t *testing.T) {
	in := newIngestor(t, func(int, request) (int, http.Header, []byte, bool) {
		return http.StatusRequestEntityTooLarge, nil, errBody("PAYLOAD_TOO_LARGE", "body is larger than the limit"), true
	})
	c := newClient(t, in, Options{})
	enqueue(t, c, 2)
	flush(t, c)
	assert.Equal(t, 1, in.requests())
	assert.Equal(t, Stats{Enqueued: 2, Failed: 2}, c.Stats())
}

func TestQueueFullDrops(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	c := newClient(t, in, Options{MaxBatchEvents: 1, QueueSize: 2})
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(in.block) }) }) // runs before the client's Close
	first := enqueue(t, c, 1)
	assert.Equal(t, first, in.next().ids) // the sender is now stuck in the request
	enqueue(t, c, 2)                      // fills the queue
	err := c.Enqueue(ev("overflow"))
	assert.ErrorIs(t, err, ErrQueueFull)
	assert.ErrorIs(t, c.Enqueue(ev("overflow")), ErrQueueFull)
	unblock.Do(func() { close(in.block) })
	require.NoError(t, c.Close(context.Background()))
	assert.Equal(t, Stats{Enqueued: 3, Sent: 3, Dropped: 2}, c.Stats())
}

func TestCloseFlushesPending(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{MaxBatchEvents: 4})
	ids := enqueue(t, c, 6)
	require.NoError(t, c.Close(context.Background()))
	var got []uuid.UUID
	for range in.requests() {
		got = append(got, in.next().ids...)
	}
	assert.Equal(t, ids, got)
	assert.Equal(t, Stats{Enqueued: 6, Sent: 6}, c.Stats())
	assert.ErrorIs(t, c.Enqueue(ev("late")), ErrClosed)
	assert.ErrorIs(t, c.Flush(context.Background()), ErrClosed)
	require.NoError(t, c.Close(context.Background()), "Close twice")
}

func TestCloseDeadlineAbandonsRetries(t *testing.T) {
	in := newIngestor(t, func(int, request) (int, http.Header, []byte, bool) {
		return http.StatusServiceUnavailable, http.Header{"Retry-After": {"3600"}}, errBody("UNAVAILABLE", "retry"), true
	})
	c := newClient(t, in, Options{})
	enqueue(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, c.Close(ctx), context.DeadlineExceeded)
	assert.Equal(t, Stats{Enqueued: 2, Failed: 2}, c.Stats())
}

func TestEnqueueValidation(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{MaxBatchBytes: 300})
	assert.ErrorIs(t, c.Enqueue(Event{Type: "log", Name: "x"}), ErrInvalidEvent)
	assert.ErrorIs(t, c.Enqueue(Event{Type: TypeEvent}), ErrInvalidEvent)
	assert.ErrorIs(t, c.Enqueue(Event{Type: TypeEvent, Name: "big", Payload: map[string]any{"s": string(make([]byte, 400))}}), ErrEventTooLarge)
	err := c.Enqueue(Event{Type: TypeEvent, Name: "x", Payload: map[string]any{"f": func() {}}})
	assert.Error(t, err)
	assert.Equal(t, Stats{}, c.Stats())
}

func TestNewValidation(t *testing.T) {
	for _, o := range []Options{
		{APIKey: "k"},
		{Endpoint: "http://x"},
		{Endpoint: "http://x", APIKey: "k", MaxBatchEvents: 1001},
		{Endpoint: "http://x", APIKey: "k", MaxBatchBytes: 1 << 20},
	} {
		_, err := New(o)
		assert.Error(t, err, "%+v", o)
	}
}

func TestFlushContextCancelled(t *testing.T) {
	in := newIngestor(t, nil)
	in.block = make(chan struct{})
	c := newClient(t, in, Options{})
	enqueue(t, c, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := c.Flush(ctx)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	close(in.block)
	require.NoError(t, c.Close(context.Background()))
	assert.Equal(t, uint64(1), c.Stats().Sent)
}

// TestCloseReleasesConnections: after Close no goroutine of the client remains, including
// its private transport's keep-alive connections, while the server is still up.
func TestCloseReleasesConnections(t *testing.T) {
	in := newIngestor(t, nil)
	before := goroutines()
	c, err := New(Options{Endpoint: in.srv.URL, APIKey: testKey, FlushInterval: time.Hour})
	require.NoError(t, err)
	enqueue(t, c, 3)
	flush(t, c)
	require.NoError(t, c.Close(context.Background()))
	verifyNone(t, before)
	assert.Equal(t, uint64(3), c.Stats().Sent)
}

// The batch being filled counts against QueueSize, so the queue always holds a full
// batch: with QueueSize below MaxBatchEvents a batch still fills by count and goes at
// once, rather than waiting for FlushInterval (an hour here) with the queue full.
func TestQueueHoldsAFullBatch(t *testing.T) {
	in := newIngestor(t, nil)
	c := newClient(t, in, Options{MaxBatchEvents: 10, QueueSize: 4})
	ids := enqueue(t, c, 10) // Enqueue never blocks: it would fail with ErrQueueFull
	assert.Equal(t, ids, in.next().ids, "sent by count, without a Flush")
	assert.NoError(t, c.Flush(context.Background()))
	assert.Equal(t, Stats{Enqueued: 10, Sent: 10}, c.Stats())
}
