// Package client sends events to PulseBoard's ingestor (POST /ingest/batch, docs/api.md
// "Ingest") for SDK authors.
//
// Enqueue never blocks: events go into a bounded queue of batches, cut by event count
// (MaxBatchEvents), encoded size (MaxBatchBytes) and time (FlushInterval), which background
// goroutines send. EnqueueWait is the blocking variant: it waits for room in the queue
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

// Limits of the batch endpoint (docs/api.md).
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
	Endpoint       string        // base URL of the ingestor, e.g. http://127.0.0.1:3002 (required)
	APIKey         string        // project API key, sent as X-API-Key (required)
	MaxBatchEvents int           // events per request, default 100, at most 1000
	MaxBatchBytes  int           // uncompressed JSON per request, default 512 KiB, below 1 MiB
	FlushInterval  time.Duration // the longest an event waits in a partial batch, default 1s
	QueueSize      int           // events buffered before Enqueue drops, default 10000, at least MaxBatchEvents
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

// batch is the request body of some events and their ids, in order. The body is the
// JSON array of the events ("[…]"), or the event alone with Options.Compat.
type batch struct {
	ids  []uuid.UUID
	body *[]byte // from bodies
	seq  uint64  // order of creation, for Flush
}

// bodies recycles request bodies once their batch is done; scratch recycles the buffers
// events are encoded into before they are copied into a body. Neither keeps a buffer
// beyond what one request can take.
var bodies, scratch sync.Pool

// gzipWriters recycles gzip writers: each holds about 800 KB of compressor state, which
// a new writer per request allocated and cleared again.
var gzipWriters sync.Pool

func getBuf(p *sync.Pool) *[]byte {
	if b, ok := p.Get().(*[]byte); ok {
		*b = (*b)[:0]
		return b
	}
	return new([]byte)
}

func putBuf(p *sync.Pool, b *[]byte) {
	if cap(*b) <= MaxWireBytes {
		p.Put(b)
	}
}

// flushWait is a Flush waiting for the batches that existed when it was called.
type flushWait struct {
	seq       uint64 // the last batch it waits for
	remaining int    // of the batches up to seq, those not finished yet
	done      chan struct{}
}

// Client batches and sends events. Its methods are safe for concurrent use.
//
// The queue is a batch being filled plus a FIFO of full batches, under one mutex:
// Enqueue encodes the event outside the lock, then copies it into the body of the batch
// being filled, and cuts that batch into the FIFO when the count or the byte limit is
// reached (the flush timer cuts a partial one); a free sender takes the oldest batch and
// sends its body as it is. So an event costs one short critical section and no
// allocation, and the senders are woken once per batch rather than once per event.
// Events wait in the queue, which QueueSize bounds, until a sender is free to take their
// batch.
type Client struct {
	opts    Options
	url     string
	doer    Doer
	ownHC   *http.Client  // the private client, whose idle connections Close closes
	closing chan struct{} // closed first by Close: wakes EnqueueWait
	exited  chan struct{} // closed when every sender has returned
	senders sync.WaitGroup
	ctx     context.Context // cancelled when Close gives up waiting
	cancel  context.CancelFunc
	timer   *time.Timer // cuts a partial batch FlushInterval after its first event

	mu          sync.Mutex    // guards the fields below
	wake        sync.Cond     // on mu: a batch is ready, or the client closed
	fill        batch         // the batch being filled; its body is nil until its first event
	fillStart   time.Time     // when its first event came
	timerArmed  bool          // a timer callback is due
	ready       []batch       // full batches, oldest first
	queued      int           // events in fill and ready: what QueueSize bounds
	outstanding int           // batches in ready or being sent
	seq         uint64        // of the last batch cut
	room        chan struct{} // closed when events leave a full queue; nil without waiters
	flushWaits  []*flushWait
	closed      bool

	enqueued, sent, rejected, dropped, failed, retries atomic.Uint64
}

// New validates o, applies defaults and starts the sending goroutines; call Close to stop
// them.
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
	// The batch being filled is part of the queue: a smaller queue would never let a
	// batch fill by count, and every batch would wait for FlushInterval.
	o.QueueSize = max(o.QueueSize, o.MaxBatchEvents)
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
		closing: make(chan struct{}),
		exited:  make(chan struct{}),
	}
	c.wake.L = &c.mu
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
	c.timer = time.AfterFunc(time.Hour, c.onTimer)
	c.timer.Stop()
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
	buf := getBuf(&scratch)
	defer putBuf(&scratch, buf)
	id, err := c.encode(buf, ev)
	if err != nil {
		return err
	}
	c.mu.Lock()
	for {
		if c.closed {
			c.mu.Unlock()
			return ErrClosed
		}
		if c.queued < c.opts.QueueSize {
			break
		}
		if !wait {
			c.mu.Unlock()
			c.dropped.Add(1)
			return ErrQueueFull
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closing:
			return ErrClosed
		}
		c.mu.Lock()
	}
	c.enqueued.Add(1) // before a sender can see it: Stats never shows Sent above Enqueued
	c.add(id, *buf)
	c.mu.Unlock()
	return nil
}

// encode validates ev, fills its defaults and encodes it for the wire into buf.
func (c *Client) encode(buf *[]byte, ev Event) (uuid.UUID, error) {
	switch ev.Type {
	case TypeError, TypeEvent, TypeMetric:
	default:
		return uuid.Nil, fmt.Errorf("%w: type %q must be error, event or metric", ErrInvalidEvent, ev.Type)
	}
	if ev.Name == "" {
		return uuid.Nil, fmt.Errorf("%w: name is empty", ErrInvalidEvent)
	}
	if ev.EventID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return uuid.Nil, err
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
	b, err := appendEvent(*buf, &ev, key)
	if err != nil {
		return uuid.Nil, err
	}
	*buf = b
	if len(b)+2 > c.opts.MaxBatchBytes {
		return uuid.Nil, ErrEventTooLarge
	}
	return ev.EventID, nil
}

// Flush sends every event queued before the call and waits until each has a final
// state (see Stats and Options.OnResult), or ctx is done. Returns ErrClosed after Close.
func (c *Client) Flush(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.cut()
	if c.outstanding == 0 {
		c.mu.Unlock()
		return nil
	}
	// Every batch outstanding now was cut before the call, every later one after it.
	fw := &flushWait{seq: c.seq, remaining: c.outstanding, done: make(chan struct{})}
	c.flushWaits = append(c.flushWaits, fw)
	c.mu.Unlock()
	select {
	case <-fw.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close refuses new events, sends the queued ones and stops the goroutines. When ctx ends
// first, in-flight requests and retries are abandoned, the remaining events are counted
// as Failed, and ctx.Err() is returned. Close may be called more than once.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.closing) // EnqueueWait callers give up
		c.cut()
		c.wake.Broadcast() // senders return once ready is empty
	}
	c.mu.Unlock()
	var err error
	select {
	case <-c.exited:
	case <-ctx.Done():
		err = ctx.Err()
		c.cancel()
		<-c.exited
	}
	c.cancel()
	c.timer.Stop()
	if c.ownHC != nil {
		c.ownHC.CloseIdleConnections()
	}
	return err
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	// Outcomes first: an event is counted Enqueued before it can have one, so reading
	// Enqueued last keeps Sent + Rejected + Failed ≤ Enqueued in every snapshot.
	s := Stats{
		Sent:     c.sent.Load(),
		Rejected: c.rejected.Load(),
		Failed:   c.failed.Load(),
		Retries:  c.retries.Load(),
		Dropped:  c.dropped.Load(),
	}
	s.Enqueued = c.enqueued.Load()
	return s
}

// add puts the event in the batch being filled, cutting that batch first when the event
// does not fit in its body (with a comma and the closing bracket), and after when the
// count is reached. c.mu is held.
func (c *Client) add(id uuid.UUID, ev []byte) {
	if len(c.fill.ids) > 0 && len(*c.fill.body)+len(ev)+2 > c.opts.MaxBatchBytes {
		c.cut()
	}
	if len(c.fill.ids) == 0 {
		c.fill.ids = make([]uuid.UUID, 0, c.opts.MaxBatchEvents)
		c.fill.body = getBuf(&bodies)
		if !c.opts.Compat {
			*c.fill.body = append(*c.fill.body, '[')
		}
		c.fillStart = time.Now()
		if !c.timerArmed {
			c.timerArmed = true
			c.timer.Reset(c.opts.FlushInterval)
		}
	} else {
		*c.fill.body = append(*c.fill.body, ',')
	}
	c.fill.ids = append(c.fill.ids, id)
	*c.fill.body = append(*c.fill.body, ev...)
	c.queued++
	if len(c.fill.ids) >= c.opts.MaxBatchEvents {
		c.cut()
	}
}

// cut moves the batch being filled, if any, to ready and wakes a sender. c.mu is held.
func (c *Client) cut() {
	if len(c.fill.ids) == 0 {
		return
	}
	if !c.opts.Compat {
		*c.fill.body = append(*c.fill.body, ']')
	}
	c.seq++
	c.fill.seq = c.seq
	c.ready = append(c.ready, c.fill)
	c.outstanding++
	c.fill = batch{}
	c.wake.Signal()
}

// onTimer cuts the partial batch once its first event has waited FlushInterval. The
// timer is armed while events wait in a partial batch and not re-armed for each batch:
// when it fires early for a batch started since, it is set again for the rest.
func (c *Client) onTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timerArmed = false
	if len(c.fill.ids) == 0 || c.closed {
		return
	}
	if wait := c.opts.FlushInterval - time.Since(c.fillStart); wait > 0 {
		c.timerArmed = true
		c.timer.Reset(wait)
		return
	}
	c.cut()
}

// sender is one of the Concurrency sending goroutines: it takes the oldest ready batch,
// sends it and records its outcome, until the client is closed and nothing is left.
func (c *Client) sender() {
	defer c.senders.Done()
	c.mu.Lock()
	for {
		for len(c.ready) == 0 && !c.closed {
			c.wake.Wait()
		}
		if len(c.ready) == 0 { // closed, and Close cut the last partial batch
			c.mu.Unlock()
			return
		}
		bt := c.ready[0]
		c.ready[0] = batch{}
		c.ready = c.ready[1:]
		if len(c.ready) == 0 {
			c.ready = c.ready[:0:0] // let the backing array go; append starts a new one
		}
		c.queued -= len(bt.ids)
		if c.room != nil {
			close(c.room) // EnqueueWait callers retry
			c.room = nil
		}
		c.mu.Unlock()

		if c.deliver(bt.ids, *bt.body) {
			putBuf(&bodies, bt.body)
		}

		c.mu.Lock()
		c.outstanding--
		c.finished(bt.seq)
	}
}

// finished counts batch seq as done for the Flush calls waiting for it. c.mu is held.
func (c *Client) finished(seq uint64) {
	if len(c.flushWaits) == 0 {
		return
	}
	waits := c.flushWaits[:0]
	for _, fw := range c.flushWaits {
		if seq <= fw.seq {
			if fw.remaining--; fw.remaining == 0 {
				close(fw.done)
				continue
			}
		}
		waits = append(waits, fw)
	}
	clear(c.flushWaits[len(waits):])
	c.flushWaits = waits
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

// deliver sends one batch with retries and records the outcome of every event. It
// reports whether body may be used again: a RoundTripper may read a request body after
// Do returned, until it closes it, so only a body whose every reader was closed is free.
func (c *Client) deliver(events []uuid.UUID, body []byte) (free bool) {
	gz := false
	if c.opts.Gzip {
		var buf bytes.Buffer
		zw, _ := gzipWriters.Get().(*gzip.Writer)
		if zw == nil {
			zw = gzip.NewWriter(&buf)
		} else {
			zw.Reset(&buf)
		}
		_, _ = zw.Write(body)
		if zw.Close() == nil {
			body, gz = buf.Bytes(), true
		}
		gzipWriters.Put(zw)
	}
	var open atomic.Int64 // readers of body not closed yet
	defer func() { free = gz || open.Load() == 0 }()

	for attempt := 1; ; attempt++ {
		start := time.Now()
		status, hdr, respBody, err := c.post(body, gz, &open)
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

// bodyReader is a request body that counts itself open until closed.
type bodyReader struct {
	bytes.Reader
	open   *atomic.Int64
	closed atomic.Bool
}

func newBodyReader(body []byte, open *atomic.Int64) *bodyReader {
	open.Add(1)
	r := &bodyReader{open: open}
	r.Reset(body)
	return r
}

func (r *bodyReader) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.open.Add(-1)
	}
	return nil
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

// post makes one request; err is a transport error. open counts the body's readers that
// the Doer has not closed.
func (c *Client) post(body []byte, gz bool, open *atomic.Int64) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(c.ctx, http.MethodPost, c.url, newBodyReader(body, open))
	if err != nil {
		return 0, nil, nil, err
	}
	req.ContentLength = int64(len(body))
	req.GetBody = func() (io.ReadCloser, error) { return newBodyReader(body, open), nil }
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
func (c *Client) perEvent(events []uuid.UUID, status int, r response, attempts int) {
	def, code, msg := StatusAccepted, "", ""
	if status == http.StatusBadRequest {
		def, code, msg = StatusRejected, r.Code, orStatus(r.Message, status)
	}
	if r.Data == nil || len(r.Data.Results) == 0 {
		// One outcome for all (every 202): no per-event results to merge.
		c.all(events, def, status, code, msg, attempts)
		return
	}
	res := make([]Result, len(events))
	for i, id := range events {
		res[i] = Result{EventID: id, Status: def, HTTPStatus: status, Code: code, Message: msg, Attempts: attempts}
	}
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
	for _, x := range res {
		c.record(x)
	}
}

func (c *Client) all(events []uuid.UUID, s Status, httpStatus int, code, msg string, attempts int) {
	for _, id := range events {
		c.record(Result{EventID: id, Status: s, HTTPStatus: httpStatus, Code: code, Message: msg, Attempts: attempts})
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
