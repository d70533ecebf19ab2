// Package client sends events to PulseBoard's ingestor (POST /ingest/batch, API.md
// "Ingest") for SDK authors.
//
// Enqueue never blocks: events go into a bounded queue that one background goroutine
// drains into batches, cut by event count (MaxBatchEvents), encoded size (MaxBatchBytes)
// and time (FlushInterval). A batch that fails with 429, 503, another 5xx or a transport
// error is retried with the same body, hence the same event ids, so the server's
// deduplication makes the retry safe; Retry-After is honoured, otherwise the delay is an
// exponential backoff with jitter. 400, 401, 413 and other 4xx answers are never retried.
//
// Every event ends in exactly one of the Stats counters Sent, Rejected, Failed (once
// handed to the sender) or Dropped (queue full), and, when Options.OnResult is set, in
// one Result. Close flushes what is queued and stops the goroutine.
package client

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	Context map[string]any // optional JSON object
	// Timestamp is when the event happened; Enqueue sets it to the current time when zero.
	// It is sent in UTC with millisecond precision (the server's).
	Timestamp time.Time
	// EventID identifies the event for the server's deduplication; Enqueue sets a
	// UUIDv7 when it is zero.
	EventID uuid.UUID
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
	HTTPClient     *http.Client  // default: a private client with a 30 s timeout
	// RetryBaseDelay and RetryMaxDelay bound the exponential backoff used when the server
	// gives no Retry-After (defaults 200 ms and 30 s). Retry-After is honoured as sent.
	RetryBaseDelay time.Duration
	RetryMaxDelay  time.Duration
	// OnResult, when set, is called from the sender goroutine once for every event that
	// reached a final state other than Dropped. It must not block for long nor call
	// Flush or Close.
	OnResult func(Result)
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

type flushReq struct{ done chan struct{} }

// Client batches and sends events. Its methods are safe for concurrent use.
type Client struct {
	opts     Options
	url      string
	hc       *http.Client
	ownHC    bool
	queue    chan queued
	flushes  chan flushReq
	stop     chan struct{}
	stopOnce sync.Once
	exited   chan struct{}
	ctx      context.Context // cancelled when Close gives up waiting
	cancel   context.CancelFunc

	mu     sync.RWMutex // guards closed against concurrent Enqueue
	closed bool

	enqueued, sent, rejected, dropped, failed, retries atomic.Uint64
}

// New validates o, applies defaults and starts the sender goroutine; call Close to stop it.
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
	c := &Client{
		opts:    o,
		url:     strings.TrimRight(o.Endpoint, "/") + "/ingest/batch",
		hc:      o.HTTPClient,
		queue:   make(chan queued, o.QueueSize),
		flushes: make(chan flushReq),
		stop:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: DefaultRequestTimeout, Transport: http.DefaultTransport.(*http.Transport).Clone()}
		c.ownHC = true
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.run()
	return c, nil
}

type wireEvent struct {
	Type      string         `json:"type"`
	Name      string         `json:"name"`
	Payload   map[string]any `json:"payload"`
	Timestamp string         `json:"timestamp"`
	Context   map[string]any `json:"context,omitempty"`
	EventID   uuid.UUID      `json:"eventId"`
}

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// Enqueue encodes ev and queues it without blocking. It returns ErrQueueFull (and counts
// the event as Dropped) when the queue is full, ErrClosed after Close, ErrInvalidEvent
// for a bad type or empty name, ErrEventTooLarge when the event alone exceeds
// MaxBatchBytes, or the JSON encoding error.
func (c *Client) Enqueue(ev Event) error {
	switch ev.Type {
	case TypeError, TypeEvent, TypeMetric:
	default:
		return fmt.Errorf("%w: type %q must be error, event or metric", ErrInvalidEvent, ev.Type)
	}
	if ev.Name == "" {
		return fmt.Errorf("%w: name is empty", ErrInvalidEvent)
	}
	if ev.EventID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		ev.EventID = id
	}
	if ev.Timestamp.IsZero() {
		ev.Timestamp = time.Now()
	}
	if ev.Payload == nil {
		ev.Payload = map[string]any{}
	}
	b, err := json.Marshal(wireEvent{
		Type: ev.Type, Name: ev.Name, Payload: ev.Payload, Context: ev.Context,
		Timestamp: ev.Timestamp.UTC().Format(timeLayout), EventID: ev.EventID,
	})
	if err != nil {
		return fmt.Errorf("pulseboard client: encoding event: %w", err)
	}
	if len(b)+2 > c.opts.MaxBatchBytes {
		return ErrEventTooLarge
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	select {
	case c.queue <- queued{id: ev.EventID, json: b}:
		c.enqueued.Add(1)
		return nil
	default:
		c.dropped.Add(1)
		return ErrQueueFull
	}
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

// Close refuses new events, sends the queued ones and stops the sender. When ctx ends
// first, in-flight requests and retries are abandoned, the remaining events are counted
// as Failed, and ctx.Err() is returned. Close may be called more than once.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stopOnce.Do(func() { close(c.stop) })
	var err error
	select {
	case <-c.exited:
	case <-ctx.Done():
		err = ctx.Err()
		c.cancel()
		<-c.exited
	}
	c.cancel()
	if c.ownHC {
		c.hc.CloseIdleConnections()
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

// batcher accumulates events until a limit is reached.
type batcher struct {
	c      *Client
	events []queued
	size   int // encoded body size: brackets, commas and events
}

func (b *batcher) add(q queued) {
	if len(b.events) > 0 && b.size+1+len(q.json) > b.c.opts.MaxBatchBytes {
		b.send()
	}
	if len(b.events) == 0 {
		b.size = 2
	} else {
		b.size++
	}
	b.events = append(b.events, q)
	b.size += len(q.json)
	if len(b.events) >= b.c.opts.MaxBatchEvents {
		b.send()
	}
}

func (b *batcher) send() {
	if len(b.events) == 0 {
		return
	}
	b.c.deliver(b.events, b.size)
	b.events = make([]queued, 0, b.c.opts.MaxBatchEvents)
	b.size = 0
}

// run is the sender goroutine.
func (c *Client) run() {
	defer close(c.exited)
	b := &batcher{c: c}
	timer := time.NewTimer(c.opts.FlushInterval)
	timer.Stop()
	armed := false
	drain := func(n int) {
		for range n {
			select {
			case q := <-c.queue:
				b.add(q)
			default:
				return
			}
		}
	}
	for {
		select {
		case q := <-c.queue:
			b.add(q)
		case <-timer.C:
			armed = false
			b.send()
		case req := <-c.flushes:
			drain(len(c.queue))
			b.send()
			close(req.done)
		case <-c.stop:
			// closed is set, so the queue only shrinks from here.
			drain(len(c.queue))
			b.send()
			timer.Stop()
			return
		}
		if len(b.events) == 0 && armed {
			timer.Stop()
			armed = false
		} else if len(b.events) > 0 && !armed {
			timer.Reset(c.opts.FlushInterval)
			armed = true
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
	body := make([]byte, 0, size)
	body = append(body, '[')
	for i, q := range events {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, q.json...)
	}
	body = append(body, ']')
	gz := false
	if c.opts.Gzip {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write(body)
		if zw.Close() == nil {
			body, gz = buf.Bytes(), true
		}
	}

	for attempt := 0; ; attempt++ {
		status, hdr, respBody, err := c.post(body, gz)
		var r response
		if err == nil && len(respBody) > 0 {
			_ = json.Unmarshal(respBody, &r)
		}
		switch {
		case err == nil && (status == http.StatusAccepted || status == http.StatusOK || status == http.StatusBadRequest):
			c.perEvent(events, status, r)
			return
		case err == nil && !retryable(status):
			c.all(events, StatusFailed, status, r.Code, orStatus(r.Message, status))
			return
		}
		msg := ""
		if err != nil {
			msg = err.Error()
		} else {
			msg = orStatus(r.Message, status)
		}
		if attempt >= c.opts.MaxRetries || c.ctx.Err() != nil {
			c.all(events, StatusFailed, status, r.Code, msg)
			return
		}
		wait, ok := retryAfter(hdr)
		if !ok {
			wait = c.backoff(attempt)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			c.all(events, StatusFailed, status, r.Code, "closed before retrying: "+msg)
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
	req.Header.Set("X-API-Key", c.opts.APIKey)
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := c.hc.Do(req)
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
func (c *Client) perEvent(events []queued, status int, r response) {
	res := make([]Result, len(events))
	def, code, msg := StatusAccepted, "", ""
	if status == http.StatusBadRequest {
		def, code, msg = StatusRejected, r.Code, orStatus(r.Message, status)
	}
	for i, q := range events {
		res[i] = Result{EventID: q.id, Status: def, HTTPStatus: status, Code: code, Message: msg}
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

func (c *Client) all(events []queued, s Status, httpStatus int, code, msg string) {
	for _, q := range events {
		c.record(Result{EventID: q.id, Status: s, HTTPStatus: httpStatus, Code: code, Message: msg})
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
