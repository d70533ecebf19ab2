// Package loadgen drives load at an ingestor (or at a no-op fasthttp server, to measure
// the ceiling of this machine in the same run) through pkg/client, and reports events/s,
// latency percentiles and, optionally, end-to-end latency: ingest → delivered on a live
// stream (SSE or WebSocket) and ingest → stored in Postgres. With a ledger it records
// every event id and its outcome for `pulseboard verify`. Its loops are bounded in time
// and stop by themselves; they only ever target the URLs given, which the bench script
// points at loopback.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/pkg/client"
	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// Options describe one run.
type Options struct {
	URL         string        // ingestor base URL, e.g. http://127.0.0.1:3002
	APIKey      string        // a project key (added in front of Keys)
	Keys        []string      // project keys; events go round-robin over them
	Mode        string        // "single" (POST /ingest, one event per request) or "batch" (POST /ingest/batch)
	BatchSize   int           // events per batch request
	Gzip        bool          // gzip request bodies
	Connections int           // concurrent connections (requests in flight), shared by the keys
	Duration    time.Duration // how long to send
	// Rate is the events/s sent across all keys and connections on an open-loop schedule:
	// event n is due at start + n/Rate whatever happened to the ones before, and its
	// latency is measured from that time, so a stall shows as latency rather than as fewer
	// events sent (no coordinated omission). 0 = as fast as the server answers.
	Rate        float64
	PayloadSize int           // approximate bytes per event
	Linger      time.Duration // the longest an event waits for its batch to fill, default 5 ms
	Retries     int           // retries per request (pkg/client MaxRetries): 0 = its default (5), negative = none
	Transport   string        // "fasthttp" (default) or "net/http": the client.Doer under pkg/client

	Ledger *ledger.Ledger // when set, every event id and its outcome are recorded in it
	// Projects maps API keys to their projects' ids when the caller knows them; the ledger
	// and DB need them. Otherwise they are looked up in DB, else through the api (Live),
	// else, for a Ledger, by sending one probe event per key to POST /ingest, whose answer
	// names the project (the probe is recorded in the ledger like any other event).
	Projects map[string]uuid.UUID

	DB       string  // Postgres URL: samples ingest → stored latency and finds the keys' projects
	DBSample float64 // fraction of acknowledged events whose storing is timed, default 0.01

	Live    LiveOptions
	E2EWait time.Duration // after sending, how long to wait for deliveries and stored samples, default 10 s

	Progress    time.Duration // interval of progress lines; 0 = none
	ProgressOut io.Writer     // where progress lines go (stderr)
}

// Result summarises a run. The JSON names of the first fields are those of the load
// generator before it was built on pkg/client; scripts read them.
type Result struct {
	Mode           string           `json:"mode"`
	Connections    int              `json:"connections"`
	BatchSize      int              `json:"batchSize"`
	Gzip           bool             `json:"gzip"`
	DurationS      float64          `json:"durationSeconds"`
	Requests       int64            `json:"requests"`
	EventsAccepted int64            `json:"eventsAccepted"`
	RequestsPerS   float64          `json:"requestsPerSecond"`
	EventsPerS     float64          `json:"eventsPerSecond"`
	Statuses       map[string]int64 `json:"statuses"`
	TransportErrs  int64            `json:"transportErrors"`
	// LatencyMs is, with a Rate, each event's latency from its scheduled send time to its
	// final answer (queueing, batching and retries included); at maximum throughput, each
	// request's. LatencyFrom says which.
	LatencyMs        Percentiles `json:"latencyMs"`
	LatencyFrom      string      `json:"latencyFrom"`
	RequestLatencyMs Percentiles `json:"requestLatencyMs"`

	ScheduledRate float64 `json:"scheduledRate"` // events/s asked for; 0 = maximum throughput
	// EventsScheduled is rate × duration; when EventsSent is lower the load generator
	// could not hand them all over before drainTimeout after the window.
	EventsScheduled int64 `json:"eventsScheduled,omitempty"`
	Projects        int   `json:"projects"`
	EventsSent      int64 `json:"eventsSent"` // handed to the client
	EventsRejected  int64 `json:"eventsRejected"`
	EventsFailed    int64 `json:"eventsFailed"`
	Retries         int64 `json:"retries"`
	// CPUSeconds is the load generator's own CPU time (user and system) from the first
	// event to the last answer: what it took from a machine it shares with the server,
	// without its start-up and the ledger work after the window. 0 where not measured.
	CPUSeconds float64 `json:"cpuSeconds"`

	Ledger         *LedgerSummary `json:"ledger,omitempty"`
	E2EDeliveredMs *E2E           `json:"e2eDeliveredMs,omitempty"`
	E2EStoredMs    *E2E           `json:"e2eStoredMs,omitempty"`
	Client         ClientInfo     `json:"client"`
}

// LedgerSummary counts the ledger's events by outcome.
type LedgerSummary struct {
	File string `json:"file,omitempty"`
	ledger.Counts
	Probes int `json:"probes,omitempty"` // events sent to find the keys' projects, included in the counts
}

// E2E is an end-to-end latency: percentiles in milliseconds of the events measured, how
// many, and Coverage, the share of the events expected that were measured.
type E2E struct {
	Percentiles
	Count    int64   `json:"count"`
	Coverage float64 `json:"coverage"`
	// Delivered: the live project, protocol, and what the stream reported besides events.
	Project    string `json:"project,omitempty"`
	Protocol   string `json:"protocol,omitempty"`
	Expected   int64  `json:"expected"`
	Resyncs    int64  `json:"resyncs,omitempty"`
	Missed     int64  `json:"missed,omitempty"`
	Reconnects int64  `json:"reconnects,omitempty"`
	// Stored: events sampled, and samples skipped because too many were pending.
	Sampled      int64   `json:"sampled,omitempty"`
	Skipped      int64   `json:"skipped,omitempty"`
	ResolutionMs float64 `json:"resolutionMs,omitempty"`
}

// ClientInfo describes the pkg/client set-up the load went through.
type ClientInfo struct {
	Library         string  `json:"library"`
	Transport       string  `json:"transport"`
	Endpoint        string  `json:"endpoint"`
	Clients         int     `json:"clients"` // one per key
	Concurrency     int     `json:"concurrencyPerClient"`
	QueueSize       int     `json:"queueSize"`
	FlushIntervalMs float64 `json:"flushIntervalMs"`
	MaxRetries      int     `json:"maxRetries"`
	Producers       int     `json:"producers"`
}

const (
	drainTimeout = 30 * time.Second // Close of the clients after the sending window
	reqTimeout   = 30 * time.Second
)

// run is the state of one load run.
type run struct {
	o        Options
	keys     []string
	projects []uuid.UUID // per key; Nil when unknown
	ids      idGen
	start    time.Time
	times    *sendTimes // max-throughput mode with end-to-end measurements
	interval float64    // ns between scheduled events (rate mode)
	limit    uint64     // events scheduled (rate mode)

	sent, acked, rejected, failed, requests, reqErrors, retries atomic.Int64
	ackedPerKey                                                 []atomic.Int64
	statuses                                                    [600]atomic.Int64
	eventLat, reqLat                                            hist

	probes      int // events sent by probeProjects
	api         *apiSession
	liveProject uuid.UUID
	liveKey     int // index of the key of the live project, -1 if none
	sub         *subscriber
	delivered   bitset
	deliverLat  hist
	sampler     *storedSampler
	sampleBelow uint64 // hash threshold of DBSample
}

// Run sends load for o.Duration and returns the summary.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.APIKey != "" {
		o.Keys = append([]string{o.APIKey}, o.Keys...)
	}
	if len(o.Keys) == 0 {
		return Result{}, errors.New("no API key")
	}
	if o.Connections <= 0 {
		o.Connections = 64
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 100
	}
	if o.Mode == "" {
		o.Mode = "single"
	}
	if o.Mode != "single" && o.Mode != "batch" {
		return Result{}, fmt.Errorf("mode %q: want single or batch", o.Mode)
	}
	if o.Mode == "single" {
		o.BatchSize = 1
	}
	if o.Linger <= 0 {
		o.Linger = 5 * time.Millisecond
	}
	if o.DBSample <= 0 {
		o.DBSample = 0.01
	}
	if o.E2EWait <= 0 {
		o.E2EWait = 10 * time.Second
	}
	if o.Transport == "" {
		o.Transport = "fasthttp"
	}
	u, err := url.Parse(o.URL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return Result{}, fmt.Errorf("bad -url %q", o.URL)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	r := &run{o: o, keys: o.Keys, ids: newIDGen(), liveKey: -1, ackedPerKey: make([]atomic.Int64, len(o.Keys))}
	defer func() {
		if r.sampler != nil {
			r.sampler.db.Close()
		}
	}()
	if err := r.prepare(ctx); err != nil {
		return Result{}, err
	}

	var liveDone <-chan error
	if r.sub != nil {
		if liveDone, err = r.sub.subscribe(ctx, r.api, r.liveProject, o.Live.Protocol); err != nil {
			return Result{}, err
		}
	}
	if r.sampler != nil {
		go r.sampler.run(ctx)
	}

	doer, transport, err := r.doer(u)
	if err != nil {
		return Result{}, err
	}
	perClient := max(1, (o.Connections+len(r.keys)-1)/len(r.keys))
	queue := max(2*perClient*o.BatchSize, 1024)
	clients := make([]*client.Client, len(r.keys))
	for i, k := range r.keys {
		c, err := client.New(client.Options{
			Endpoint: o.URL, APIKey: k, Compat: o.Mode == "single",
			MaxBatchEvents: o.BatchSize, MaxBatchBytes: client.MaxWireBytes - 1, FlushInterval: o.Linger,
			QueueSize: queue, Gzip: o.Gzip, MaxRetries: o.Retries, Doer: doer, Concurrency: perClient,
			OnResult: func(res client.Result) { r.onResult(i, res) }, OnRequest: r.onRequest,
		})
		if err != nil {
			for _, c := range clients[:i] {
				_ = c.Close(ctx)
			}
			return Result{}, err
		}
		clients[i] = c
	}
	producers := max(2, runtime.GOMAXPROCS(0))

	cpu0, cpuOK := processCPU()
	r.start = time.Now()
	if o.Rate > 0 {
		r.interval = 1e9 / o.Rate
		r.limit = uint64(math.Ceil(o.Duration.Seconds() * o.Rate))
	} else if r.sub != nil || r.sampler != nil {
		r.times = new(sendTimes)
	}
	if r.sub != nil {
		close(r.sub.ready) // the subscriber may read the fields above from here on
	}
	stopProgress := r.progress()
	var wg sync.WaitGroup
	// Producers stop making events at the end of the window; events already made (in the
	// ledger) still wait for room in a queue until drainTimeout after it.
	sendCtx, sendCancel := context.WithDeadline(ctx, r.start.Add(o.Duration))
	defer sendCancel()
	waitCtx, waitCancel := context.WithDeadline(ctx, r.start.Add(o.Duration+drainTimeout))
	defer waitCancel()
	for p := range producers {
		wg.Go(func() { r.produce(waitCtx, sendCtx, clients, uint64(p), uint64(producers)) })
	}
	wg.Wait()
	closeCtx, closeCancel := context.WithTimeout(ctx, drainTimeout)
	for _, c := range clients {
		_ = c.Close(closeCtx)
	}
	closeCancel()
	elapsed := time.Since(r.start).Seconds()
	cpu1, cpuOK1 := processCPU()
	r.waitE2E(ctx, liveDone)
	stopProgress()
	cancel() // stops the subscriber and the sampler

	res := r.result(elapsed)
	if cpuOK && cpuOK1 {
		res.CPUSeconds = (cpu1 - cpu0).Seconds()
	}
	res.Client = ClientInfo{Library: "pkg/client", Transport: transport, Endpoint: clientEndpoint(o.Mode),
		Clients: len(clients), Concurrency: perClient, QueueSize: queue, FlushIntervalMs: float64(o.Linger.Microseconds()) / 1000,
		MaxRetries: clientRetries(o.Retries), Producers: producers}
	if res.Requests == 0 {
		return res, errors.New("no request was sent")
	}
	return res, nil
}

func clientEndpoint(mode string) string {
	if mode == "single" {
		return "POST /ingest (client.Options.Compat)"
	}
	return "POST /ingest/batch"
}

func clientRetries(n int) int {
	switch {
	case n == 0:
		return client.DefaultMaxRetries
	case n < 0:
		return 0
	}
	return n
}

// prepare resolves the keys' projects and sets up the live subscriber and the sampler.
func (r *run) prepare(ctx context.Context) error {
	o := r.o
	var (
		byKey = o.Projects
		err   error
	)
	if o.DB != "" {
		db, err := pgxpool.New(ctx, o.DB)
		if err != nil {
			return fmt.Errorf("-db: %w", err)
		}
		r.sampler = &storedSampler{db: db}
		r.sampleBelow = uint64(min(o.DBSample, 1) * (1 << 53))
		if byKey == nil {
			if byKey, err = lookupProjects(ctx, db, r.keys); err != nil {
				return err
			}
		}
	}
	if o.Live.URL != "" {
		if r.api, err = apiLogin(ctx, o.Live.URL, o.Live.Email, o.Live.Password); err != nil {
			return err
		}
		fromAPI, err := r.api.projects(ctx)
		if err != nil {
			return err
		}
		if byKey == nil {
			byKey = fromAPI
		}
		r.sub = &subscriber{onEvent: r.onDelivered, ready: make(chan struct{})}
		if o.Live.Project != "" {
			if r.liveProject, err = uuid.Parse(o.Live.Project); err != nil {
				return fmt.Errorf("-live-project %q: %w", o.Live.Project, err)
			}
		} else if r.liveProject = fromAPI[r.keys[0]]; r.liveProject == uuid.Nil {
			return fmt.Errorf("-live-project not given and the first key's project is not one of %s's", o.Live.Email)
		}
	}
	if byKey == nil && o.Ledger != nil {
		if byKey, err = probeProjects(ctx, o.URL, r.keys, o.Ledger); err != nil {
			return err
		}
		r.probes = len(r.keys)
	}
	r.projects = make([]uuid.UUID, len(r.keys))
	for i, k := range r.keys {
		r.projects[i] = byKey[k]
		if r.projects[i] == r.liveProject && r.liveProject != uuid.Nil && r.liveKey < 0 {
			r.liveKey = i
		}
		if r.projects[i] == uuid.Nil && (o.Ledger != nil || r.sampler != nil) {
			return fmt.Errorf("key #%d (%s…) belongs to no project found", i+1, k[:min(len(k), 12)])
		}
	}
	return nil
}

// doer builds the HTTP stack shared by the clients.
func (r *run) doer(u *url.URL) (client.Doer, string, error) {
	switch r.o.Transport {
	case "fasthttp":
		tls, host := u.Scheme == "https", u.Host
		if port := "80"; u.Port() == "" {
			if tls {
				port = "443"
			}
			host = net.JoinHostPort(u.Hostname(), port)
		}
		return newFastDoer(host, tls, r.o.Connections, reqTimeout), "fasthttp", nil
	case "net/http":
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost, tr.MaxIdleConns = r.o.Connections, r.o.Connections, r.o.Connections
		return &http.Client{Transport: tr, Timeout: reqTimeout}, "net/http", nil
	}
	return nil, "", fmt.Errorf("transport %q: want fasthttp or net/http", r.o.Transport)
}

var names = [8]string{"load.0", "load.1", "load.2", "load.3", "load.4", "load.5", "load.6", "load.7"}

// produce makes events p, p+n, p+2n, … and hands them to the clients, round-robin over
// the keys: on the schedule with a Rate (until the last scheduled event), as fast as the
// clients take them otherwise (until sendCtx ends). EnqueueWait gives backpressure: no
// event is dropped, and an event already in the ledger is always handed over unless ctx
// (the whole run) ends.
func (r *run) produce(ctx, sendCtx context.Context, clients []*client.Client, p, n uint64) {
	pad := strings.Repeat("x", max(0, r.o.PayloadSize-60))
	buf := make([]byte, 0, len(pad)+48)
	nkeys := uint64(len(clients))
	for seq := p; ; seq += n {
		var at time.Duration
		if r.o.Rate > 0 {
			if seq >= r.limit {
				return
			}
			at = time.Duration(float64(seq) * r.interval)
			if wait := at - time.Since(r.start); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
			}
		} else {
			if sendCtx.Err() != nil {
				return
			}
			at = time.Since(r.start)
			if r.times != nil {
				r.times.set(seq, int64(at))
			}
		}
		k := seq % nkeys
		t0 := r.start.Add(at)
		buf = append(buf[:0], `{"seq":`...)
		buf = strconv.AppendUint(buf, seq, 10)
		buf = append(buf, `,"data":"`...)
		buf = append(buf, pad...)
		buf = append(buf, `"}`...)
		typ := client.TypeEvent
		if seq%10 == 0 {
			typ = client.TypeError
		}
		ev := client.Event{Type: typ, Name: names[seq%8], RawPayload: buf, Timestamp: t0, EventID: r.ids.id(seq, t0)}
		if r.o.Ledger != nil {
			r.o.Ledger.Sent(r.projects[k], ev.EventID)
		}
		if err := clients[k].EnqueueWait(ctx, ev); err != nil {
			return
		}
		r.sent.Add(1)
	}
}

// t0 is when event seq was scheduled (Rate) or handed to the client, since the start.
func (r *run) t0(seq uint64) (time.Duration, bool) {
	if r.o.Rate > 0 {
		if seq >= r.limit {
			return 0, false
		}
		return time.Duration(float64(seq) * r.interval), true
	}
	if r.times == nil {
		return 0, false
	}
	ns, ok := r.times.get(seq)
	return time.Duration(ns), ok
}

func (r *run) onRequest(ri client.RequestInfo) {
	r.requests.Add(1)
	r.reqLat.add(ri.Duration)
	if ri.Attempt > 1 {
		r.retries.Add(1)
	}
	s := ri.HTTPStatus
	if s < 0 || s >= len(r.statuses) {
		s = len(r.statuses) - 1
	}
	r.statuses[s].Add(1)
	if ri.Err != nil || ri.HTTPStatus/100 != 2 {
		r.reqErrors.Add(1)
	}
}

func (r *run) onResult(key int, res client.Result) {
	now := time.Since(r.start)
	seq, mine := r.ids.seq(res.EventID)
	switch res.Status {
	case client.StatusAccepted:
		r.acked.Add(1)
		r.ackedPerKey[key].Add(1)
	case client.StatusRejected:
		r.rejected.Add(1)
	default:
		r.failed.Add(1)
	}
	if r.o.Ledger != nil {
		r.o.Ledger.Record(r.projects[key], res.EventID, outcome(res))
	}
	if !mine {
		return
	}
	t0, ok := r.t0(seq)
	if !ok {
		return
	}
	if r.o.Rate > 0 {
		r.eventLat.add(now - t0)
	}
	if r.sampler != nil && res.Status == client.StatusAccepted && sampled(seq, r.sampleBelow) {
		r.sampler.add(r.projects[key], res.EventID, r.start.Add(t0))
	}
}

// outcome is what an answer proves for the ledger: a 2xx that the event is durable, a
// 4xx other than 429 on the only attempt that it never will be; anything else (transport
// errors, 5xx, 429, a 4xx after an attempt whose answer was lost) proves nothing.
func outcome(res client.Result) ledger.Outcome {
	switch {
	case res.Status == client.StatusAccepted:
		return ledger.Acked
	case res.Status == client.StatusRejected:
		return ledger.Rejected
	case res.HTTPStatus >= 400 && res.HTTPStatus < 500 && res.HTTPStatus != http.StatusTooManyRequests &&
		res.HTTPStatus != http.StatusRequestTimeout && res.Attempts <= 1:
		return ledger.Rejected
	}
	return ledger.Indeterminate
}

// sampled picks a pseudo-random, reproducible share of the events (by hashing seq, so the
// sample is spread over keys and time).
func sampled(seq, below uint64) bool {
	return (seq*0x9E3779B97F4A7C15)>>11 < below
}

func (r *run) onDelivered(id uuid.UUID, at time.Time) {
	seq, ok := r.ids.seq(id)
	if !ok {
		return
	}
	t0, ok := r.t0(seq)
	if !ok || !r.delivered.set(seq) {
		return
	}
	r.deliverLat.add(at.Sub(r.start) - t0)
}

// waitE2E waits, up to E2EWait, until every acknowledged event of the live project was
// delivered (or reported missed by a resync message) and every stored sample was seen.
func (r *run) waitE2E(ctx context.Context, liveDone <-chan error) {
	if r.sub == nil && r.sampler == nil {
		return
	}
	deadline := time.Now().Add(r.o.E2EWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		liveOK := r.sub == nil || r.liveKey < 0 ||
			r.deliverLat.count()+r.sub.missed.Load() >= r.ackedPerKey[r.liveKey].Load()
		select {
		case <-liveDone:
			liveOK = true // the stream ended; nothing more will come
			liveDone = nil
		default:
		}
		if liveOK && (r.sampler == nil || r.sampler.outstanding() == 0) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// progress prints a line every Progress until the returned function is called.
func (r *run) progress() (stop func()) {
	if r.o.Progress <= 0 || r.o.ProgressOut == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.o.Progress)
		defer t.Stop()
		var lastAcked int64
		last := r.start
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				acked := r.acked.Load()
				rate := float64(acked-lastAcked) / now.Sub(last).Seconds()
				lastAcked, last = acked, now
				inflight := r.sent.Load() - acked - r.rejected.Load() - r.failed.Load()
				line := fmt.Sprintf("[%6.1fs] %9.0f events/s  acked %d  rejected %d  failed %d  request errors %d  in-flight %d",
					now.Sub(r.start).Seconds(), rate, acked, r.rejected.Load(), r.failed.Load(), r.reqErrors.Load(), inflight)
				if r.sub != nil {
					line += fmt.Sprintf("  delivered %d", r.deliverLat.count())
				}
				fmt.Fprintln(r.o.ProgressOut, line)
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func (r *run) result(elapsed float64) Result {
	o := r.o
	res := Result{
		Mode: o.Mode, Connections: o.Connections, BatchSize: o.BatchSize, Gzip: o.Gzip, DurationS: elapsed,
		Requests: r.requests.Load(), EventsAccepted: r.acked.Load(), Statuses: map[string]int64{},
		TransportErrs: r.statuses[0].Load(), RequestLatencyMs: r.reqLat.percentiles(),
		ScheduledRate: o.Rate, EventsScheduled: int64(r.limit), Projects: len(r.keys), EventsSent: r.sent.Load(),
		EventsRejected: r.rejected.Load(), EventsFailed: r.failed.Load(), Retries: r.retries.Load(),
	}
	res.RequestsPerS = float64(res.Requests) / elapsed
	res.EventsPerS = float64(res.EventsAccepted) / elapsed
	for s := 1; s < len(r.statuses); s++ {
		if n := r.statuses[s].Load(); n > 0 {
			res.Statuses[strconv.Itoa(s)] = n
		}
	}
	if o.Rate > 0 {
		res.LatencyMs, res.LatencyFrom = r.eventLat.percentiles(), "scheduled"
	} else {
		res.LatencyMs, res.LatencyFrom = res.RequestLatencyMs, "request"
	}
	if o.Ledger != nil {
		res.Ledger = &LedgerSummary{Counts: o.Ledger.Counts(), Probes: r.probes}
	}
	if r.sub != nil {
		e := &E2E{Percentiles: r.deliverLat.percentiles(), Count: r.deliverLat.count(), Project: r.liveProject.String(),
			Protocol: orDefault(o.Live.Protocol, "sse"), Resyncs: r.sub.resyncs.Load(), Missed: r.sub.missed.Load(),
			Reconnects: r.sub.reconnects.Load()}
		if r.liveKey >= 0 {
			e.Expected = r.ackedPerKey[r.liveKey].Load()
		}
		if e.Expected > 0 {
			e.Coverage = float64(e.Count) / float64(e.Expected)
		}
		res.E2EDeliveredMs = e
	}
	if s := r.sampler; s != nil {
		s.mu.Lock()
		e := &E2E{Percentiles: s.lat.percentiles(), Count: s.lat.count(), Sampled: s.sampled, Skipped: s.skipped,
			Expected: s.sampled, ResolutionMs: float64(storedPoll.Microseconds()) / 1000}
		s.mu.Unlock()
		if e.Expected > 0 {
			e.Coverage = float64(e.Count) / float64(e.Expected)
		}
		res.E2EStoredMs = e
	}
	return res
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Print writes the human summary.
func (r Result) Print(w io.Writer) {
	rate := "max"
	if r.ScheduledRate > 0 {
		rate = strconv.FormatFloat(r.ScheduledRate, 'f', -1, 64) + " events/s"
	}
	fmt.Fprintf(w, "%-6s conns=%-4d batch=%-4d gzip=%-5v  %9.0f events/s  %8.0f req/s  latency ms p50=%.2f p90=%.2f p99=%.2f max=%.2f  statuses=%v transportErrors=%d\n",
		r.Mode, r.Connections, r.BatchSize, r.Gzip, r.EventsPerS, r.RequestsPerS,
		r.LatencyMs.P50, r.LatencyMs.P90, r.LatencyMs.P99, r.LatencyMs.Max, r.statusString(), r.TransportErrs)
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "  %-22s "+format+"\n", append([]any{k}, a...)...) }
	row("rate", "%s over %d project(s), %.1f s", rate, r.Projects, r.DurationS)
	if r.EventsScheduled > r.EventsSent {
		row("behind schedule", "%d of %d scheduled events never sent", r.EventsScheduled-r.EventsSent, r.EventsScheduled)
	}
	row("events", "sent %d  accepted %d  rejected %d  failed %d  (retried requests %d)",
		r.EventsSent, r.EventsAccepted, r.EventsRejected, r.EventsFailed, r.Retries)
	row("latency from "+r.LatencyFrom, "%s", r.LatencyMs)
	row("request latency", "%s", r.RequestLatencyMs)
	if e := r.E2EDeliveredMs; e != nil {
		row("ingest → delivered", "%s  count %d of %d (coverage %.1f %%) via %s; resyncs %d (missed %d), reconnects %d",
			e.Percentiles, e.Count, e.Expected, 100*e.Coverage, e.Protocol, e.Resyncs, e.Missed, e.Reconnects)
	}
	if e := r.E2EStoredMs; e != nil {
		row("ingest → stored", "%s  count %d of %d sampled (coverage %.1f %%, skipped %d; ±%g ms)",
			e.Percentiles, e.Count, e.Sampled, 100*e.Coverage, e.Skipped, e.ResolutionMs)
	}
	if l := r.Ledger; l != nil {
		row("ledger", "sent %d  acked %d  rejected %d  indeterminate %d  (probes %d)  %s", l.Sent, l.Acked, l.Rejected, l.Indeterminate, l.Probes, l.File)
	}
	c := r.Client
	row("client", "%s over %s, %s; %d client(s) × %d in flight, queue %d, linger %g ms, retries %d",
		c.Library, c.Transport, c.Endpoint, c.Clients, c.Concurrency, c.QueueSize, c.FlushIntervalMs, c.MaxRetries)
}

func (p Percentiles) String() string {
	return fmt.Sprintf("ms p50=%.2f p90=%.2f p99=%.2f max=%.2f", p.P50, p.P90, p.P99, p.Max)
}

func (r Result) statusString() string {
	keys := make([]string, 0, len(r.Statuses))
	for k := range r.Statuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("map[")
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%d", k, r.Statuses[k])
	}
	b.WriteByte(']')
	return b.String()
}

// JSON encodes the result.
func (r Result) JSON() []byte { b, _ := json.Marshal(r); return b }

// ServeNoop serves a fasthttp handler that answers every request with a fixed 202 body
// and does no other work: the ceiling an ingest request can approach on this machine.
func ServeNoop(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	body := []byte(`{"success":true,"message":"Event accepted","data":{}}`)
	srv := &fasthttp.Server{
		Handler: func(c *fasthttp.RequestCtx) {
			c.SetStatusCode(fasthttp.StatusAccepted)
			c.SetContentType("application/json; charset=utf-8")
			c.SetBody(body)
		},
		NoDefaultServerHeader: true,
		ReadTimeout:           10 * time.Second,
		IdleTimeout:           60 * time.Second,
		MaxRequestBodySize:    1 << 20,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown()
	}()
	return srv.Serve(ln)
}
