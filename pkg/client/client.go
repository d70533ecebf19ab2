// Package client sends events to PulseBoard's ingestor (POST /ingest/batch, API.md
// "Ingest") for SDK authors.
//
// Enqueue never blocks: events go into a bounded queue that a background goroutine drains
// into batches, cut by event count (MaxBatchEvents), encoded size (MaxBatchBytes) and time
// (FlushInterval). EnqueueWait is the blocking variant: it waits for room in the queue
// instead of dropping, for producers that prefer backpressure to loss. Up to Concurrency
// requests are in flight at once (default 1, which keeps batches in order).
//
// A batch that fails with 429, 503, another 5xx or a transport error is retried with the
// same body, hence the same event ids, so the server's deduplication makes the retry safe;
// Retry-After is honoured, otherwise the delay is an exponential backoff with jitter. 400,
// 401, 413 and other 4xx answers are never retried.
//
// Options.Compat sends each event alone to POST /ingest with the key in the body, the
// endpoint of the Node.js backend PulseBoard replaced, for servers that only have that one.
// Options.Doer replaces the HTTP stack (a tuned transport, a proxy, another HTTP library).
//
// Every event ends in exactly one of the Stats counters Sent, Rejected, Failed (once
// handed to the sender) or Dropped (queue full), and, when Options.OnResult is set, in
// one Result. Options.OnRequest sees every HTTP attempt, for metrics. Close flushes what
// is queued and stops the goroutines.
package client

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// Limits of the batch endpoint (API.md).
const (
	MaxEventsPerBatch = 1000    // events per request accepted by the server
	MaxWireBytes      = 1 << 20 // request body size accepted by the server
)

// Defaults applied by New to zero Options fields.
const (
	DefaultMaxBatchEvents = 100
	DefaultMaxBatchBytes  = 512 << 10
	DefaultFlushInterval  = time.Second
	DefaultQueueSize      = 10000
	DefaultMaxRetries     = 5
	DefaultRetryBaseDelay = 200 * time.Millisecond
	DefaultRetryMaxDelay  = 30 * time.Second
	DefaultRequestTimeout = 30 * time.Second
	DefaultConcurrency    = 1
)

// Errors returned by the Client.
var (
	ErrQueueFull     = errors.New("pulseboard client: queue full, event dropped")
	ErrClosed        = errors.New("pulseboard client: closed")
	ErrInvalidEvent  = errors.New("pulseboard client: invalid event")
	ErrEventTooLarge = errors.New("pulseboard client: event larger than MaxBatchBytes")
)

// Event types accepted by the server.
const (
	TypeError  = "error"
	TypeEvent  = "event"
	TypeMetric = "metric"
)

// Event is one event to send.
type Event struct {
	Type    string         // "error", "event" or "metric"
	Name    string         // 1 to 200 characters
	Payload map[string]any // a JSON object; nil is sent as {}
	// RawPayload, when not empty, is sent as the payload instead of Payload: a JSON object
	// the application has already encoded (it is checked, not re-encoded).
	RawPayload json.RawMessage
	Context    map[string]any // optional JSON object
	// Timestamp is when the event happened; Enqueue sets it to the current time when zero.
	// It is sent in UTC with millisecond precision (the server's).
	Timestamp time.Time
	// EventID identifies the event for the server's deduplication; Enqueue sets a
	// UUIDv7 when it is zero.
	EventID uuid.UUID
}

// Doer sends one HTTP request; *http.Client implements it. A Doer must return a response
// (whose Body the client reads and closes) or an error, and should honour the request's
// context so that Close can abandon requests in flight.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Options configure a Client. Zero fields take the defaults above.
type Options struct {
	Endpoint       string        // base URL of the ingestor, e.g. http://127.0.0.1:3001 (required)
	APIKey         string        // project API key, sent as X-API-Key (required)
	MaxBatchEvents int           // events per request, default 100, at most 1000
	MaxBatchBytes  int           // uncompressed JSON per request, default 512 KiB, below 1 MiB
	FlushInterval  time.Duration // the longest an event waits in a partial batch, default 1s
	QueueSize      int           // events buffered before Enqueue drops, default 10000
	Gzip           bool          // gzip request bodies
	MaxRetries     int           // retries of one batch after the first attempt, default 5; negative: none
	// HTTPClient sends the requests unless Doer is set. Default: a private client with a
	// 30 s timeout whose transport keeps Concurrency idle connections to the server.
	HTTPClient *http.Client
	// Doer, when set, sends the requests instead of HTTPClient: its timeouts and connection
	// pool are its own, and Close leaves its connections alone.
	Doer Doer
	// Concurrency is the number of requests in flight at once, default 1. With more than
	// one, batches may be answered (and OnResult called) out of order and concurrently.
	Concurrency int
	// Compat sends each event alone to POST /ingest with "apiKey" in the body instead of
	// batches to POST /ingest/batch: the compat endpoint, which the old backend also had.
	// MaxBatchEvents is then 1; the answers are classified the same way.
	Compat bool
	// RetryBaseDelay and RetryMaxDelay bound the exponential backoff used when the server
	// gives no Retry-After (defaults 200 ms and 30 s). Retry-After is honoured as sent.
	RetryBaseDelay time.Duration
	RetryMaxDelay  time.Duration
	// OnResult, when set, is called once for every event that reached a final state other
	// than Dropped, from the goroutine that sent it. It must not block for long nor call
	// Flush or Close.
	OnResult func(Result)
	// OnRequest, when set, is called after every HTTP attempt (first tries and retries),
	// with the same constraints as OnResult: request counts, statuses and latency for
	// metrics.
	OnRequest func(RequestInfo)
}

// Status is the final state of an event.
type Status int

// The statuses of a Result.
const (
	StatusAccepted Status = iota + 1 // the server accepted (or already had) the event
	StatusRejected                   // the server refused this event (e.g. VALIDATION_FAILED); not retried
	StatusFailed                     // the batch could not be delivered (401, 413, retries exhausted, Close deadline)
)

func (s Status) String() string {
	switch s {
	case StatusAccepted:
		return "accepted"
	case StatusRejected:
		return "rejected"
	case StatusFailed:
		return "failed"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Result is the outcome of one event.
type Result struct {
	EventID    uuid.UUID
	Status     Status
	HTTPStatus int    // status of the last response, 0 after a transport error
	Code       string // the server's code, e.g. VALIDATION_FAILED or INVALID_API_KEY
	Message    string // the server's message, or the transport error
	// Attempts is the number of requests that carried the event (1 when it was not
	// retried). A Failed event with Attempts > 1 may have been stored by an earlier attempt
	// whose answer was lost; with Attempts == 1 and a 4xx status it was not.
	Attempts int
}

// RequestInfo describes one HTTP attempt (Options.OnRequest).
type RequestInfo struct {
	Events     int           // events in the request
	Attempt    int           // 1 for the first attempt of a batch, 2 for its first retry, …
	HTTPStatus int           // 0 after a transport error
	Err        error         // the transport error, if any
	Start      time.Time     // just before the request was made
	Duration   time.Duration // until the response body was read
}

// Stats are cumulative event counters.
type Stats struct {
	Enqueued uint64 // accepted by Enqueue
	Sent     uint64 // accepted by the server
	Rejected uint64 // refused one by one by the server (400 or 200 with per-event results)
	Dropped  uint64 // not enqueued because the queue was full
	Failed   uint64 // given up: 401, 413, other non-retryable answers, retries exhausted
	Retries  uint64 // request retries (batches, not events)
}

type queued struct {
	id   uuid.UUID
	json []byte
}

type batch struct {
	events []queued
	size   int
}

type flushReq struct{ done chan struct{} }

// Client batches and sends events. Its methods are safe for concurrent use.
type Client struct {
	opts      Options
	url       string
	doer      Doer
	ownHC     *http.Client // the private client, whose idle connections Close closes
	queue     chan queued
	flushes   chan flushReq
	lead      sync.Mutex // held by the sender that is batching
	batch     *batcher   // guarded by lead
	inflight  sync.WaitGroup
	senders   sync.WaitGroup
	closing   chan struct{} // closed first by Close: wakes EnqueueWait
	stop      chan struct{}
	closeOnce sync.Once
	exited    chan struct{}
	ctx       context.Context // cancelled when Close gives up waiting
	cancel    context.CancelFunc

	mu     sync.RWMutex // guards closed against concurrent Enqueue
	closed bool

	enqueued, sent, rejected, dropped, failed, retries atomic.Uint64
}

// New validates o, applies defaults and starts the batching and sending goroutines; call
// Close to stop them.
func New(o Options) (*Client, error) {
	if o.Endpoint == "" {
		return nil, errors.New("pulseboard client: Endpoint is required")
	}
	if o.APIKey == "" {
		return nil, errors.New("pulseboard client: APIKey is required")
	}
	if o.MaxBatchEvents == 0 {
		o.MaxBatchEvents = DefaultMaxBatchEvents
	}
	if o.MaxBatchEvents < 0 || o.MaxBatchEvents > MaxEventsPerBatch {
		return nil, fmt.Errorf("pulseboard client: MaxBatchEvents must be between 1 and %d", MaxEventsPerBatch)
	}
	if o.Compat {
		o.MaxBatchEvents = 1
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if o.MaxBatchBytes < 0 || o.MaxBatchBytes >= MaxWireBytes {
		return nil, fmt.Errorf("pulseboard client: MaxBatchBytes must be between 1 and %d", MaxWireBytes-1)
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = DefaultMaxRetries
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	if o.RetryBaseDelay <= 0 {
		o.RetryBaseDelay = DefaultRetryBaseDelay
	}
	if o.RetryMaxDelay <= 0 {
		o.RetryMaxDelay = DefaultRetryMaxDelay
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	path := "/ingest/batch"
	if o.Compat {
		path = "/ingest"
	}
	c := &Client{
		opts:    o,
		url:     strings.TrimRight(o.Endpoint, "/") + path,
		queue:   make(chan queued, o.QueueSize),
		flushes: make(chan flushReq),
		closing: make(chan struct{}),
		stop:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	switch {
	case o.Doer != nil:
		c.doer = o.Doer
	case o.HTTPClient != nil:
		c.doer = o.HTTPClient
	default:
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, o.Concurrency)
		tr.MaxIdleConns = max(tr.MaxIdleConns, o.Concurrency)
		c.ownHC = &http.Client{Timeout: DefaultRequestTimeout, Transport: tr}
		c.doer = c.ownHC
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.batch = &batcher{c: c, events: make([]queued, 0, o.MaxBatchEvents), timer: time.NewTimer(time.Hour)}
	c.batch.timer.Stop()
	for range o.Concurrency {
		c.senders.Add(1)
		go c.sender()
	}
	go func() {
		c.senders.Wait()
		close(c.exited)
	}()
	return c, nil
}

// Enqueue encodes ev and queues it without blocking. It returns ErrQueueFull (and counts
// the event as Dropped) when the queue is full, ErrClosed after Close, ErrInvalidEvent
// for a bad type, an empty name or a RawPayload that is not a JSON object,
// ErrEventTooLarge when the event alone exceeds MaxBatchBytes, or the JSON encoding error.
func (c *Client) Enqueue(ev Event) error { return c.enqueue(context.Background(), ev, false) }

// EnqueueWait is Enqueue with backpressure: when the queue is full it waits for room
// instead of dropping the event. It returns ctx.Err() when ctx ends first and ErrClosed
// when Close is called meanwhile; the event is then not queued, and not counted.
func (c *Client) EnqueueWait(ctx context.Context, ev Event) error { return c.enqueue(ctx, ev, true) }

func (c *Client) enqueue(ctx context.Context, ev Event, wait bool) error {
	q, err := c.encode(ev)
	if err != nil {
		return err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	select {
	case c.queue <- q:
		c.enqueued.Add(1)
		return nil
	default:
	}
	if !wait {
		c.dropped.Add(1)
		return ErrQueueFull
	}
	select {
	case c.queue <- q:
		c.enqueued.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closing:
		return ErrClosed
	}
}

// encode validates ev, fills its defaults and encodes it for the wire.
func (c *Client) encode(ev Event) (queued, error) {
	switch ev.Type {
	case TypeError, TypeEvent, TypeMetric:
	default:
		return queued{}, fmt.Errorf("%w: type %q must be error, event or metric", ErrInvalidEvent, ev.Type)
	}
	if ev.Name == "" {
		return queued{}, fmt.Errorf("%w: name is empty", ErrInvalidEvent)
	}
	if ev.EventID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return queued{}, err
		}
		ev.EventID = id
	}
	if ev.Timestamp.IsZero() {
		ev.Timestamp = time.Now()
	}
	key := ""
	if c.opts.Compat {
		key = c.opts.APIKey
	}
	b, err := appendEvent(nil, &ev, key)
	if err != nil {
		return queued{}, err
	}
	if len(b)+2 > c.opts.MaxBatchBytes {
		return queued{}, ErrEventTooLarge
	}
	return queued{id: ev.EventID, json: b}, nil
}

// Flush sends every event queued before the call and waits until each has a final
// state (see Stats and Options.OnResult), or ctx is done. Returns ErrClosed after Close.
func (c *Client) Flush(ctx context.Context) error {
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	req := flushReq{done: make(chan struct{})}
	select {
	case c.flushes <- req:
	case <-c.exited:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-req.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close refuses new events, sends the queued ones and stops the goroutines. When ctx ends
// first, in-flight requests and retries are abandoned, the remaining events are counted
// as Failed, and ctx.Err() is returned. Close may be called more than once.
func (c *Client) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		close(c.closing) // EnqueueWait callers give up and release the read lock
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.stop)
	})
	var err error
	select {
	case <-c.exited:
	case <-ctx.Done():
		err = ctx.Err()
		c.cancel()
		<-c.exited
	}
	c.cancel()
	if c.ownHC != nil {
		c.ownHC.CloseIdleConnections()
	}
	return err
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	return Stats{
		Enqueued: c.enqueued.Load(),
		Sent:     c.sent.Load(),
		Rejected: c.rejected.Load(),
		Dropped:  c.dropped.Load(),
		Failed:   c.failed.Load(),
		Retries:  c.retries.Load(),
	}
}

// The sending goroutines take turns at batching (leader/followers): a goroutine that is
// not sending takes the lead lock, reads the queue until a batch is ready, releases the
// lock and sends that batch itself, while the next free goroutine builds the following
// batch. Batches are therefore filled one at a time, as by a single batcher, without a
// hand-off between a batcher and the senders; and no event leaves the queue while every
// sender is busy, so the queue (what Enqueue sees as full) is where events wait.

// batcher accumulates events until a limit is reached; it is guarded by Client.lead.
type batcher struct {
	c      *Client
	events []queued
	size   int // encoded body size: brackets, commas and events
	timer  *time.Timer
	armed  bool
}

// add adds q and returns a batch that became ready: the previous events when q does not
// fit in their body, or all of them when the count is reached.
func (b *batcher) add(q queued) (batch, bool) {
	var ready batch
	var ok bool
	if len(b.events) > 0 && b.size+1+len(q.json) > b.c.opts.MaxBatchBytes {
		ready, ok = b.take()
	}
	if len(b.events) == 0 {
		b.size = 2
	} else {
		b.size++
	}
	b.events = append(b.events, q)
	b.size += len(q.json)
	if !ok && len(b.events) >= b.c.opts.MaxBatchEvents {
		ready, ok = b.take()
	}
	return ready, ok
}

// take returns the events gathered so far as a batch, counted in flight.
func (b *batcher) take() (batch, bool) {
	if len(b.events) == 0 {
		return batch{}, false
	}
	bt := batch{events: b.events, size: b.size}
	b.events = make([]queued, 0, b.c.opts.MaxBatchEvents)
	b.size = 0
	b.c.inflight.Add(1)
	return bt, true
}

// rearm keeps the flush timer running exactly while a partial batch waits.
func (b *batcher) rearm() {
	if len(b.events) == 0 && b.armed {
		b.timer.Stop()
		b.armed = false
	} else if len(b.events) > 0 && !b.armed {
		b.timer.Reset(b.c.opts.FlushInterval)
		b.armed = true
	}
}

// sendAll sends, one after the other, up to n queued events and the partial batch, then
// waits until no request is in flight (Flush and Close).
func (b *batcher) sendAll(n int) {
	c := b.c
	for range n {
		select {
		case q := <-c.queue:
			if bt, ok := b.add(q); ok {
				c.sendBatch(bt)
			}
			continue
		default:
		}
		break
	}
	if bt, ok := b.take(); ok {
		c.sendBatch(bt)
	}
	b.rearm()
	c.inflight.Wait()
}

// sender is one of the Concurrency sending goroutines.
func (c *Client) sender() {
	defer c.senders.Done()
	for {
		c.lead.Lock()
		bt, ok, stop := c.collect()
		c.lead.Unlock()
		if ok {
			c.sendBatch(bt)
		}
		if stop {
			return
		}
	}
}

func (c *Client) sendBatch(bt batch) {
	c.deliver(bt.events, bt.size)
	c.inflight.Done()
}

// collect runs with the lead lock held: it reads the queue until a batch is ready, serving
// the flush timer, Flush and Close meanwhile. stop is true once the client is closed and
// everything was sent.
func (c *Client) collect() (bt batch, ok, stop bool) {
	b := c.batch
	for {
		var timer <-chan time.Time
		if b.armed {
			timer = b.timer.C
		}
		select {
		case q := <-c.queue:
			bt, ok = b.add(q)
		case <-timer:
			b.armed = false
			bt, ok = b.take()
		case req := <-c.flushes:
			b.sendAll(len(c.queue))
			close(req.done)
		case <-c.stop:
			// closed is set, so the queue only shrinks from here.
			b.sendAll(len(c.queue))
			return batch{}, false, true
		}
		b.rearm()
		if ok {
			return bt, true, false
		}
	}
}

// response is the batch answer, success or error (intake.appendBatchBody, httperr).
type response struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Data    *struct {
		Results []struct {
			Index   int    `json:"index"`
			Status  string `json:"status"`
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"results"`
	} `json:"data"`
}

// deliver sends one batch with retries and records the outcome of every event.
func (c *Client) deliver(events []queued, size int) {
	var body []byte
	if c.opts.Compat {
		body = events[0].json
	} else {
		body = make([]byte, 0, size)
		body = append(body, '[')
		for i, q := range events {
			if i > 0 {
				body = append(body, ',')
			}
			body = append(body, q.json...)
		}
		body = append(body, ']')
	}
	gz := false
	if c.opts.Gzip {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write(body)
		if zw.Close() == nil {
			body, gz = buf.Bytes(), true
		}
	}

	for attempt := 1; ; attempt++ {
		start := time.Now()
		status, hdr, respBody, err := c.post(body, gz)
		if c.opts.OnRequest != nil {
			c.opts.OnRequest(RequestInfo{Events: len(events), Attempt: attempt, HTTPStatus: status, Err: err,
				Start: start, Duration: time.Since(start)})
		}
		var r response
		// A 202 means every event was accepted: its body is not needed.
		if err == nil && status != http.StatusAccepted && len(respBody) > 0 {
			_ = json.Unmarshal(respBody, &r)
		}
		switch {
		case err == nil && (status == http.StatusAccepted || status == http.StatusOK || status == http.StatusBadRequest):
			c.perEvent(events, status, r, attempt)
			return
		case err == nil && !retryable(status):
			c.all(events, StatusFailed, status, r.Code, orStatus(r.Message, status), attempt)
			return
		}
		msg := ""
		if err != nil {
			msg = err.Error()
		} else {
			msg = orStatus(r.Message, status)
		}
		if attempt > c.opts.MaxRetries || c.ctx.Err() != nil {
			c.all(events, StatusFailed, status, r.Code, msg, attempt)
			return
		}
		wait, ok := retryAfter(hdr)
		if !ok {
			wait = c.backoff(attempt - 1)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			c.all(events, StatusFailed, status, r.Code, "closed before retrying: "+msg, attempt)
			return
		}
		c.retries.Add(1)
	}
}

func orStatus(msg string, status int) string {
	if msg != "" {
		return msg
	}
	return "HTTP " + strconv.Itoa(status)
}

func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// post makes one request; err is a transport error.
func (c *Client) post(body []byte, gz bool) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(c.ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if !c.opts.Compat {
		req.Header.Set("X-API-Key", c.opts.APIKey)
	}
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := c.doer.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil && resp.StatusCode != http.StatusAccepted {
		// The status alone is enough for 202; otherwise the results are needed.
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, rb, nil
}

// perEvent records a 202, 200 or 400 answer from its results; events without a result
// count as accepted on 2xx and rejected on 400.
func (c *Client) perEvent(events []queued, status int, r response, attempts int) {
	res := make([]Result, len(events))
	def, code, msg := StatusAccepted, "", ""
	if status == http.StatusBadRequest {
		def, code, msg = StatusRejected, r.Code, orStatus(r.Message, status)
	}
	for i, q := range events {
		res[i] = Result{EventID: q.id, Status: def, HTTPStatus: status, Code: code, Message: msg, Attempts: attempts}
	}
	if r.Data != nil {
		for _, x := range r.Data.Results {
			if x.Index < 0 || x.Index >= len(res) {
				continue
			}
			if x.Status == "accepted" {
				res[x.Index].Status, res[x.Index].Code, res[x.Index].Message = StatusAccepted, "", ""
			} else {
				res[x.Index].Status, res[x.Index].Code, res[x.Index].Message = StatusRejected, x.Code, x.Message
			}
		}
	}
	for _, x := range res {
		c.record(x)
	}
}

func (c *Client) all(events []queued, s Status, httpStatus int, code, msg string, attempts int) {
	for _, q := range events {
		c.record(Result{EventID: q.id, Status: s, HTTPStatus: httpStatus, Code: code, Message: msg, Attempts: attempts})
	}
}

func (c *Client) record(r Result) {
	switch r.Status {
	case StatusAccepted:
		c.sent.Add(1)
	case StatusRejected:
		c.rejected.Add(1)
	default:
		c.failed.Add(1)
	}
	if c.opts.OnResult != nil {
		c.opts.OnResult(r)
	}
}

// retryAfter parses Retry-After in seconds or as an HTTP date.
func retryAfter(h http.Header) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		if int64(s) > math.MaxInt64/int64(time.Second) {
			return math.MaxInt64, true // saturate: a larger value never means a shorter wait
		}
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t)), true
	}
	return 0, false
}

// backoff is base·2^attempt capped at RetryMaxDelay, with jitter in [d/2, d].
func (c *Client) backoff(attempt int) time.Duration {
	d := c.opts.RetryBaseDelay
	for i := 0; i < attempt && d < c.opts.RetryMaxDelay; i++ {
		d *= 2
	}
	d = min(d, c.opts.RetryMaxDelay)
	half := d / 2
	return half + rand.N(half+1)
}
