package loadgen

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/client"
	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// seen is one event as the fake ingestor received it.
type seen struct {
	path     string
	key      string // X-API-Key, or apiKey in the body
	keyInHdr bool
	gzip     bool
	id       uuid.UUID
	seq      int
	ts       time.Time // the event's timestamp: its scheduled send time
	at       time.Time // when the request arrived
}

// fakeIngestor answers POST /ingest and /ingest/batch like the ingestor's contract: the
// answer for each event comes from answer(seq) (202 when nil); a status of -1 closes the
// connection without an answer (a transport error).
type fakeIngestor struct {
	t       *testing.T
	srv     *httptest.Server
	answer  func(seq int) int
	project uuid.UUID // in the data of /ingest answers, when set
	mu      sync.Mutex
	events  []seen
}

func newFakeIngestor(t *testing.T, answer func(seq int) int) *fakeIngestor {
	f := &fakeIngestor{t: t, answer: answer}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

type wireEvent struct {
	APIKey    string    `json:"apiKey"`
	EventID   uuid.UUID `json:"eventId"`
	Timestamp time.Time `json:"timestamp"`
	Payload   struct {
		Seq int `json:"seq"`
	} `json:"payload"`
}

func (f *fakeIngestor) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	gz := r.Header.Get("Content-Encoding") == "gzip"
	if gz {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			http.Error(w, "bad gzip", http.StatusBadRequest)
			return
		}
		raw, _ = io.ReadAll(zr)
	}
	var evs []wireEvent
	switch r.URL.Path {
	case "/ingest":
		var ev wireEvent
		err = json.Unmarshal(raw, &ev)
		evs = []wireEvent{ev}
	case "/ingest/batch":
		err = json.Unmarshal(raw, &evs)
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	status := http.StatusAccepted
	f.mu.Lock()
	for _, ev := range evs {
		s := seen{path: r.URL.Path, key: r.Header.Get("X-API-Key"), keyInHdr: true, gzip: gz, id: ev.EventID,
			seq: ev.Payload.Seq, ts: ev.Timestamp, at: at}
		if s.key == "" {
			s.key, s.keyInHdr = ev.APIKey, false
		}
		f.events = append(f.events, s)
		if f.answer != nil {
			status = f.answer(ev.Payload.Seq) // one event per request where answers differ
		}
	}
	f.mu.Unlock()
	if status == -1 {
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			_ = conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "0")
	}
	w.WriteHeader(status)
	if status == http.StatusAccepted {
		_, _ = fmt.Fprintf(w, `{"success":true,"message":"Event accepted","data":{"projectId":%q}}`, f.project)
		return
	}
	_, _ = fmt.Fprintf(w, `{"success":false,"code":"CODE_%d","message":"scripted %d"}`, status, status)
}

func (f *fakeIngestor) seen() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

func mustRun(t *testing.T, o Options) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Run(ctx, o)
	require.NoError(t, err)
	return r
}

// With -rate the schedule is open-loop and honest: exactly rate × duration events, none
// sent before its scheduled time (the timestamp it carries), the last one no earlier than
// the end of the window, and the latency measured from the schedule.
func TestRateIsAnOpenLoopSchedule(t *testing.T) {
	f := newFakeIngestor(t, nil)
	start := time.Now()
	r := mustRun(t, Options{URL: f.srv.URL, Keys: []string{"k"}, Mode: "batch", BatchSize: 20, Connections: 4,
		Rate: 1000, Duration: 1500 * time.Millisecond})
	evs := f.seen()
	require.Len(t, evs, 1500)
	assert.EqualValues(t, 1500, r.EventsSent)
	assert.EqualValues(t, 1500, r.EventsScheduled)
	assert.EqualValues(t, 1500, r.EventsAccepted)
	assert.Equal(t, "scheduled", r.LatencyFrom)
	assert.Equal(t, 1000.0, r.ScheduledRate)
	last := time.Time{}
	for _, e := range evs {
		// Timestamps have millisecond precision: allow that much.
		assert.False(t, e.at.Before(e.ts.Add(-time.Millisecond)), "event %d arrived %s before its schedule", e.seq, e.ts.Sub(e.at))
		if e.at.After(last) {
			last = e.at
		}
	}
	assert.GreaterOrEqual(t, last.Sub(start), 1400*time.Millisecond, "the schedule spans the window")
	assert.Positive(t, r.LatencyMs.P50)
	assert.GreaterOrEqual(t, r.LatencyMs.Max, r.LatencyMs.P99)
}

// Without -rate the load generator sends as fast as the server answers, and the
// backpressure of EnqueueWait means every event made is sent: nothing dropped.
func TestMaxThroughputSendsEverythingItMakes(t *testing.T) {
	f := newFakeIngestor(t, nil)
	r := mustRun(t, Options{URL: f.srv.URL, Keys: []string{"k"}, Mode: "batch", BatchSize: 50, Connections: 8, Duration: 300 * time.Millisecond})
	assert.Positive(t, r.EventsSent)
	assert.Equal(t, r.EventsSent, r.EventsAccepted)
	assert.Len(t, f.seen(), int(r.EventsSent))
	assert.Equal(t, "request", r.LatencyFrom)
	assert.Equal(t, r.Requests, r.Statuses["202"])
	assert.Positive(t, r.EventsPerS)
}

// Single mode is the compat endpoint, one event per request with the key in the body;
// batch mode is /ingest/batch with X-API-Key, gzipped on request; both on both transports.
func TestSingleAndBatchEndpoints(t *testing.T) {
	for _, transport := range []string{"fasthttp", "net/http"} {
		t.Run(transport, func(t *testing.T) {
			f := newFakeIngestor(t, nil)
			r := mustRun(t, Options{URL: f.srv.URL, Keys: []string{"single-key"}, Mode: "single", Connections: 2, Rate: 200,
				Duration: 100 * time.Millisecond, Transport: transport})
			assert.EqualValues(t, 20, r.Requests)
			assert.Equal(t, 1, r.BatchSize)
			for _, e := range f.seen() {
				assert.Equal(t, "/ingest", e.path)
				assert.Equal(t, "single-key", e.key)
				assert.False(t, e.keyInHdr, "the key is in the body")
			}

			f = newFakeIngestor(t, nil)
			r = mustRun(t, Options{URL: f.srv.URL, Keys: []string{"batch-key"}, Mode: "batch", BatchSize: 10, Gzip: true,
				Connections: 2, Rate: 1000, Duration: 100 * time.Millisecond, Linger: time.Second, Transport: transport})
			assert.EqualValues(t, 100, r.EventsAccepted)
			assert.EqualValues(t, 10, r.Requests, "full batches of 10 (the linger is longer than the run)")
			for _, e := range f.seen() {
				assert.Equal(t, "/ingest/batch", e.path)
				assert.Equal(t, "batch-key", e.key)
				assert.True(t, e.keyInHdr)
				assert.True(t, e.gzip)
			}
			assert.Equal(t, transport, r.Client.Transport)
		})
	}
}

// Events go round-robin over the keys, one client each.
func TestKeysRoundRobin(t *testing.T) {
	f := newFakeIngestor(t, nil)
	r := mustRun(t, Options{URL: f.srv.URL, APIKey: "a", Keys: []string{"b", "c"}, Mode: "batch", Connections: 6, Rate: 3000,
		Duration: 100 * time.Millisecond})
	perKey := map[string]int{}
	for _, e := range f.seen() {
		perKey[e.key]++
		assert.Equal(t, []string{"a", "b", "c"}[e.seq%3], e.key, "event %d", e.seq)
	}
	assert.Equal(t, map[string]int{"a": 100, "b": 100, "c": 100}, perKey)
	assert.Equal(t, 3, r.Projects)
	assert.Equal(t, 3, r.Client.Clients)
	assert.Equal(t, 2, r.Client.Concurrency, "the connections are shared by the keys")
}

// The ledger records every event before its first attempt and then what the answer
// proves: 2xx acked, 400 and 401 rejected (never stored), 503 and a dropped connection
// indeterminate (maybe stored).
func TestLedgerOutcomes(t *testing.T) {
	answers := []int{http.StatusAccepted, http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable, -1}
	f := newFakeIngestor(t, func(seq int) int { return answers[seq%len(answers)] })
	l := ledger.New()
	project := uuid.Must(uuid.NewV7())
	r := mustRun(t, Options{URL: f.srv.URL, Keys: []string{"k"}, Mode: "single", Connections: 4, Rate: 500,
		Duration: 200 * time.Millisecond, Retries: -1, Ledger: l, Projects: map[string]uuid.UUID{"k": project}})
	require.EqualValues(t, 100, r.EventsSent)
	assert.Equal(t, ledger.Counts{Sent: 100, Acked: 20, Rejected: 40, Indeterminate: 40}, l.Counts())
	assert.Equal(t, []uuid.UUID{project}, l.Projects())
	assert.Equal(t, &LedgerSummary{Counts: l.Counts()}, r.Ledger)
	assert.Equal(t, map[string]int64{"202": 20, "400": 20, "401": 20, "503": 20}, r.Statuses)
	assert.EqualValues(t, 20, r.TransportErrs)
	assert.EqualValues(t, 20, r.EventsAccepted)
	assert.EqualValues(t, 20, r.EventsRejected, "400: rejected one by one")
	assert.EqualValues(t, 60, r.EventsFailed, "401, 503 and transport errors: failed")

	// The saved ledger says the same per event.
	var buf bytes.Buffer
	require.NoError(t, l.Save(&buf))
	want := []ledger.Outcome{ledger.Acked, ledger.Rejected, ledger.Rejected, ledger.Indeterminate, ledger.Indeterminate}
	bySeq := map[uuid.UUID]int{}
	for _, e := range f.seen() {
		bySeq[e.id] = e.seq
	}
	dec := json.NewDecoder(&buf)
	n := 0
	for dec.More() {
		var ln struct {
			ID      uuid.UUID      `json:"id"`
			Outcome ledger.Outcome `json:"outcome"`
		}
		require.NoError(t, dec.Decode(&ln))
		seq, ok := bySeq[ln.ID]
		require.True(t, ok, "every ledger id was sent")
		assert.Equal(t, want[seq%len(want)], ln.Outcome, "event %d", seq)
		n++
	}
	assert.Equal(t, 100, n)
}

// Retried events keep their id; a 503 that later succeeds is acked.
func TestRetriedEventsAreAcked(t *testing.T) {
	var mu sync.Mutex
	tries := map[int]int{}
	f := newFakeIngestor(t, func(seq int) int {
		mu.Lock()
		defer mu.Unlock()
		tries[seq]++
		if tries[seq] == 1 && seq%2 == 0 {
			return http.StatusServiceUnavailable
		}
		return http.StatusAccepted
	})
	l := ledger.New()
	r := mustRun(t, Options{URL: f.srv.URL, Keys: []string{"k"}, Mode: "single", Connections: 2, Rate: 200,
		Duration: 100 * time.Millisecond, Ledger: l, Projects: map[string]uuid.UUID{"k": uuid.Must(uuid.NewV7())}})
	assert.Equal(t, ledger.Counts{Sent: 20, Acked: 20}, l.Counts())
	assert.EqualValues(t, 10, r.Retries)
	assert.EqualValues(t, 30, r.Requests)
	ids := map[int]map[uuid.UUID]bool{}
	for _, e := range f.seen() {
		if ids[e.seq] == nil {
			ids[e.seq] = map[uuid.UUID]bool{}
		}
		ids[e.seq][e.id] = true
	}
	for seq, s := range ids {
		assert.Len(t, s, 1, "event %d kept its id across attempts", seq)
	}
}

func TestOutcome(t *testing.T) {
	for _, c := range []struct {
		res  client.Result
		want ledger.Outcome
	}{
		{client.Result{Status: client.StatusAccepted, HTTPStatus: 202, Attempts: 3}, ledger.Acked},
		{client.Result{Status: client.StatusRejected, HTTPStatus: 200, Attempts: 1}, ledger.Rejected},
		{client.Result{Status: client.StatusFailed, HTTPStatus: 401, Attempts: 1}, ledger.Rejected},
		{client.Result{Status: client.StatusFailed, HTTPStatus: 413, Attempts: 1}, ledger.Rejected},
		{client.Result{Status: client.StatusFailed, HTTPStatus: 401, Attempts: 2}, ledger.Indeterminate},
		{client.Result{Status: client.StatusFailed, HTTPStatus: 429, Attempts: 1}, ledger.Indeterminate},
		{client.Result{Status: client.StatusFailed, HTTPStatus: 503, Attempts: 6}, ledger.Indeterminate},
		{client.Result{Status: client.StatusFailed, HTTPStatus: 0, Attempts: 1}, ledger.Indeterminate},
	} {
		assert.Equal(t, c.want, outcome(c.res), "%+v", c.res)
	}
}

// Without Projects, DB or Live, the ledger learns each key's project from the answer to
// one probe event per key, which it records like the others.
func TestLedgerProbesProjects(t *testing.T) {
	f := newFakeIngestor(t, nil)
	f.project = uuid.Must(uuid.NewV7())
	l := ledger.New()
	r := mustRun(t, Options{URL: f.srv.URL, Keys: []string{"k1", "k2"}, Mode: "batch", Rate: 100, Duration: 100 * time.Millisecond, Ledger: l})
	assert.Equal(t, ledger.Counts{Sent: 12, Acked: 12}, l.Counts(), "10 events and 2 probes")
	assert.Equal(t, 2, r.Ledger.Probes)
	assert.Equal(t, []uuid.UUID{f.project}, l.Projects())
	assert.Len(t, f.seen(), 12)

	// The no-op server names no project: the run stops before sending.
	f = newFakeIngestor(t, nil)
	_, err := Run(context.Background(), Options{URL: f.srv.URL, Keys: []string{"k"}, Duration: time.Millisecond, Ledger: ledger.New()})
	assert.ErrorContains(t, err, "project")
	assert.Len(t, f.seen(), 1, "only the probe")
}

// The no-op server answers 202 to anything, and the load generator measures it.
func TestAgainstNoopServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeNoop(ctx, addr) }()
	t.Cleanup(func() { cancel(); <-served })
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	r := mustRun(t, Options{URL: "http://" + addr, Keys: []string{"x"}, Mode: "single", Connections: 8, Duration: 200 * time.Millisecond})
	assert.Positive(t, r.Requests)
	assert.Equal(t, r.Requests, r.Statuses["202"])
	assert.Zero(t, r.TransportErrs)
	var out map[string]any
	require.NoError(t, json.Unmarshal(r.JSON(), &out))
	for _, k := range []string{"requestsPerSecond", "eventsPerSecond", "eventsAccepted", "latencyMs", "statuses", "transportErrors",
		"scheduledRate", "client", "mode", "connections", "batchSize", "gzip", "durationSeconds", "requests"} {
		assert.Contains(t, out, k)
	}
	for _, k := range []string{"p50", "p90", "p99", "max"} {
		assert.Contains(t, out["latencyMs"], k)
	}
	var human bytes.Buffer
	r.Print(&human)
	assert.Contains(t, human.String(), "events/s")
	assert.Contains(t, human.String(), "pkg/client over fasthttp")
}

func TestIDsCarryTheirSequence(t *testing.T) {
	g, other := newIDGen(), newIDGen()
	now := time.Now()
	for _, seq := range []uint64{0, 1, 2, 1 << 20, 1<<48 - 1, rand.Uint64N(1 << 40)} {
		id := g.id(seq, now)
		assert.Equal(t, uuid.Version(7), id.Version())
		assert.Equal(t, uuid.RFC4122, id.Variant())
		sec, nsec := id.Time().UnixTime()
		assert.Equal(t, now.UnixMilli(), sec*1000+nsec/1e6, "the UUIDv7 time is the creation time")
		got, ok := g.seq(id)
		assert.True(t, ok)
		assert.Equal(t, seq, got)
		_, ok = other.seq(id)
		assert.False(t, ok, "another run's id")
	}
	_, ok := g.seq(uuid.Must(uuid.NewV7()))
	assert.False(t, ok)
}

func TestHistPercentiles(t *testing.T) {
	var h hist
	var exact []time.Duration
	for range 20000 {
		d := time.Duration(rand.ExpFloat64() * float64(3*time.Millisecond))
		h.add(d)
		exact = append(exact, d)
	}
	slices.Sort(exact)
	at := func(q float64) float64 { return float64(exact[int(q*float64(len(exact)-1))].Microseconds()) / 1000 }
	p := h.percentiles()
	for _, c := range [][2]float64{{p.P50, at(.5)}, {p.P90, at(.9)}, {p.P99, at(.99)}} {
		assert.InEpsilon(t, c[1], c[0], 0.002, "within the histogram's precision")
	}
	assert.Equal(t, float64(exact[len(exact)-1].Microseconds())/1000, p.Max)
	assert.EqualValues(t, 20000, h.count())
	var empty hist
	assert.Equal(t, Percentiles{}, empty.percentiles())
	for _, us := range []int64{0, 1, 2047, 2048, 4095, 4096, 1e6, 1e9, 1 << 50} {
		v := histValue(histIndex(us))
		assert.LessOrEqual(t, v, us)
		assert.GreaterOrEqual(t, float64(v), float64(us)*(1-1.0/1024)-1, "bucket of %d", us)
	}
}

// The subscriber counts events by the id at the front of the compat event object, and
// understands the control messages.
func TestSubscriberMessages(t *testing.T) {
	var got []uuid.UUID
	s := &subscriber{onEvent: func(id uuid.UUID, _ time.Time) { got = append(got, id) }, ready: make(chan struct{})}
	a, b := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	now := time.Now()
	s.handle([]byte(`{"id":"`+a.String()+`"}`), now) // before the run started: ignored
	close(s.ready)
	s.handle([]byte(`{"type":"connected","projectId":"x"}`), now)
	s.handle([]byte(`{"id":"`+a.String()+`","projectId":"p","type":"event","name":"n","payload":{}}`), now)
	s.handle([]byte(`{"projectId":"p","id":"`+b.String()+`"}`), now)
	s.handle([]byte(`{"type":"resync","missed":7}`), now)
	s.handle([]byte(`not json`), now)
	assert.Equal(t, []uuid.UUID{a, b}, got)
	assert.EqualValues(t, 1, s.resyncs.Load())
	assert.EqualValues(t, 7, s.missed.Load())
	assert.EqualValues(t, 1, s.other.Load())
}
