// Package intake is the ingestor's HTTP surface (fasthttp): POST /ingest (the old
// backend's body, apiKey inside) and POST /ingest/batch, exactly as docs/api.md describes.
//
// A request goes through, in order: route and method, content type, decompression with a
// cap on the output (never fasthttp's unlimited BodyGunzip, docs/reliability.md H3), sanitising
// and strict JSON parsing (pkg/event), API key resolution, validation of every event,
// the per-project rate limit, and finally one produce call that returns only after Kafka
// acknowledged every event with acks=all. Nothing is produced unless the whole request
// got that far, and nothing the handler hands to Kafka aliases fasthttp's request buffers
// (H5/K7): every message value is a freshly encoded canonical event.
package intake

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/pulseboard/pulseboard/ingestor/internal/producer"
	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/clientip"
	"github.com/pulseboard/pulseboard/pkg/connlimit"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Limits bound a request.
type Limits struct {
	MaxBodyBytes          int // on the wire (fasthttp's MaxRequestBodySize), 1 MiB
	MaxSingleDecompressed int // /ingest after decompression, 1 MiB
	MaxBatchDecompressed  int // /ingest/batch after decompression, 10 MiB
	MaxBatchEvents        int // 1000
	Event                 event.Limits
}

// DefaultLimits are docs/api.md's.
func DefaultLimits() Limits {
	return Limits{
		MaxBodyBytes:          1 << 20,
		MaxSingleDecompressed: 1 << 20,
		MaxBatchDecompressed:  10 << 20,
		MaxBatchEvents:        1000,
		Event:                 event.DefaultLimits(),
	}
}

// KeyResolver resolves API keys (keycache.Resolver).
type KeyResolver interface {
	Resolve(ctx context.Context, key string) (pgstore.KeyProject, error)
}

// knownKeys is implemented by a KeyResolver that can tell, without I/O, that a key
// resolved to a project recently (keycache.Resolver.Known).
type knownKeys interface {
	Known(key string) bool
}

// Producer writes to Kafka and waits for acks (producer.Producer). It may keep the
// messages' Key and Value after returning, never the msgs slice itself (the handler reuses
// it). free, when not nil, is called once it holds none of them any more; it need not be
// called at all (the memory is then left to the garbage collector).
//
// pace, when not 0, is the bytes/s at which a big body's events are released to the
// broker (producer.ProducePaced; see Handler.pace).
type Producer interface {
	ProducePaced(ctx context.Context, msgs []kafka.Message, free func(), pace float64) error
}

// Handler serves the ingest routes.
type Handler struct {
	limits   Limits
	keys     KeyResolver
	prod     Producer
	limiter  *ratelimit.Limiter
	guard    *ratelimit.KeyGuard    // nil: no per-address limit on unknown keys
	prefixes *ratelimit.PrefixGuard // nil: no per-key-prefix limit on unknown keys
	known    knownKeys              // nil: no key counts as known valid to the guard
	clientIP *clientip.Resolver     // nil: the client is the TCP peer
	logger   *slog.Logger
	draining atomic.Bool
	decoders sync.Pool     // *event.Decoder
	bulk     chan struct{} // the bulk lane's slots (enterBulk)
	work     sync.Pool     // *work
	now      func() time.Time
	paths    []string // "events/0", "events/1", … for validation messages

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	accepted prometheus.Counter
	rejected *prometheus.CounterVec
	routes   [4]routeMetrics // routeSingle, routeBatch, routeOther, routeAnalytics
	dropped  [numCauses]prometheus.Counter
	// Requests refused by the per-project limits, by the bucket that refused them.
	limitedEvents, limitedBytes prometheus.Counter
	// Events over the event limit accepted with their longest strings shortened.
	truncated prometheus.Counter
}

// work is one request's reusable memory: the slices a request fills.
type work struct {
	results []result
	msgs    []kafka.Message
	out     []byte
	enc     event.Encoder // formats a request's shared project id and receive time once
	batch   batchReq      // a batch request's state (batch.go), zeroed after each
}

// New returns a Handler and registers its metrics.
func New(l Limits, keys KeyResolver, prod Producer, limiter *ratelimit.Limiter, logger *slog.Logger, reg prometheus.Registerer) *Handler {
	h := &Handler{limits: l, keys: keys, prod: prod, limiter: limiter, logger: logger, now: time.Now}
	h.known, _ = keys.(knownKeys)
	h.bulk = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))
	h.decoders.New = func() any { return event.NewDecoder(l.Event) }
	h.work.New = func() any { return new(work) }
	h.paths = make([]string, min(l.MaxBatchEvents, 10_000))
	for i := range h.paths {
		h.paths[i] = "events/" + strconv.Itoa(i)
	}
	f := promauto.With(reg)
	h.requests = f.NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_ingest_requests_total",
		Help: "Ingest HTTP requests by route and status code.",
	}, []string{"route", "code"})
	h.duration = f.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pulseboard_ingest_request_duration_seconds",
		Help:    "Ingest request latency by route, including the wait for Kafka's acknowledgement.",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"route"})
	h.accepted = f.NewCounter(prometheus.CounterOpts{
		Name: "pulseboard_ingest_events_accepted_total",
		Help: "Events acknowledged by Kafka and answered with 2xx.",
	})
	h.rejected = f.NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_ingest_events_dropped_total",
		Help: "Events refused, by cause (invalid, too_large, unauthorized, rate_limited, unavailable).",
	}, []string{"cause"})
	for c, name := range causeNames {
		h.dropped[c] = h.rejected.WithLabelValues(name)
	}
	for i, route := range []string{routeSingle, routeBatch, routeOther, routeAnalytics} {
		h.routes[i].init(route, h.requests, h.duration)
	}
	limited := f.NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_ingest_rate_limited_requests_total",
		Help: "Requests refused with 429 by a project's rate limit, by the bucket that refused them (events, bytes).",
	}, []string{"reason"})
	h.limitedEvents = limited.WithLabelValues(ratelimit.ReasonEvents)
	h.limitedBytes = limited.WithLabelValues(ratelimit.ReasonBytes)
	h.truncated = f.NewCounter(prometheus.CounterOpts{
		Name: "pulseboard_ingest_events_truncated_total",
		Help: "Events over the event size limit accepted with their longest strings shortened (each ending with a \"...[truncated N bytes]\" marker).",
	})
	return h
}

// routeMetrics caches one route's metric children: looking a child up by its labels on
// every request hashes the label values and takes a lock. Children are created on first
// use, as WithLabelValues would, so the exported series do not change.
type routeMetrics struct {
	route    string
	requests *prometheus.CounterVec
	durVec   *prometheus.HistogramVec
	duration atomic.Pointer[prometheus.Observer]
	codes    [600]atomic.Pointer[prometheus.Counter] // by status code
}

func (m *routeMetrics) init(route string, requests *prometheus.CounterVec, duration *prometheus.HistogramVec) {
	m.route, m.requests, m.durVec = route, requests, duration
}

func (m *routeMetrics) request(code int) prometheus.Counter {
	if code < 0 || code >= len(m.codes) {
		return m.requests.WithLabelValues(m.route, strconv.Itoa(code))
	}
	if c := m.codes[code].Load(); c != nil {
		return *c
	}
	c := m.requests.WithLabelValues(m.route, strconv.Itoa(code))
	m.codes[code].Store(&c)
	return c
}

func (m *routeMetrics) observer() prometheus.Observer {
	if o := m.duration.Load(); o != nil {
		return *o
	}
	o := m.durVec.WithLabelValues(m.route)
	m.duration.Store(&o)
	return o
}

// SetKeyGuard limits unknown-key attempts per client address (B34); nil disables it.
func (h *Handler) SetKeyGuard(g *ratelimit.KeyGuard) { h.guard = g }

// SetPrefixGuard limits unknown-key attempts per key prefix as well (issue 16 item 5);
// nil disables it.
func (h *Handler) SetPrefixGuard(g *ratelimit.PrefixGuard) { h.prefixes = g }

// SetClientIP makes the guard key on the client address that trusted proxies report
// (pkg/clientip) instead of the TCP peer's; nil trusts no proxy.
func (h *Handler) SetClientIP(r *clientip.Resolver) { h.clientIP = r }

// SetDraining makes every new request answer 503 and close its connection: the first
// step of a graceful shutdown, before the listener closes.
func (h *Handler) SetDraining() { h.draining.Store(true) }

const (
	routeSingle = "ingest"
	routeBatch  = "batch"
	routeOther  = "other"
)

// routeIndex is route's index in Handler.routes.
func routeIndex(route string) int {
	switch route {
	case routeSingle:
		return 0
	case routeBatch:
		return 1
	case routeAnalytics:
		return 3
	}
	return 2
}

// ServeFastHTTP routes a request.
func (h *Handler) ServeFastHTTP(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	var route string
	switch string(ctx.Path()) {
	case "/ingest":
		route = routeSingle
	case "/ingest/batch":
		route = routeBatch
	case pathCrash, pathSession, pathScreenView, pathAPICall: // analytics.go
		route = routeAnalytics
	default:
		h.fail(ctx, routeOther, httperr.NotFound, "Route "+string(ctx.Method())+":"+string(ctx.Path())+" not found", 0)
		h.routes[routeIndex(routeOther)].request(ctx.Response.StatusCode()).Inc()
		return
	}
	defer func() {
		m := &h.routes[routeIndex(route)]
		m.request(ctx.Response.StatusCode()).Inc()
		m.observer().Observe(time.Since(start).Seconds())
	}()
	// Browser SDKs may post cross-origin; ingest is authenticated by key, not cookies, so
	// any origin may call it, never with credentials (docs/reliability.md B68).
	ctx.Response.Header.SetCanonical(headerAllowOrigin, anyOrigin)
	switch {
	case ctx.IsOptions():
		ctx.Response.Header.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
		ctx.Response.Header.Set("Access-Control-Allow-Headers", "Content-Type, Content-Encoding, X-API-Key, Authorization")
		ctx.Response.Header.Set("Access-Control-Max-Age", "600")
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		return
	case !ctx.IsPost():
		ctx.Response.Header.Set("Allow", "POST, OPTIONS")
		h.fail(ctx, route, httperr.MethodNotAllowed, "Method "+string(ctx.Method())+" is not allowed on "+string(ctx.Path()), 0)
		return
	}
	if h.draining.Load() {
		ctx.SetConnectionClose()
		h.unavailable(ctx, route, "the ingestor is shutting down; retry", 1)
		return
	}
	switch route {
	case routeSingle:
		h.single(ctx)
	case routeAnalytics:
		h.analytics(ctx)
	default:
		h.batch(ctx)
	}
}

func (h *Handler) decoder() *event.Decoder { return h.decoders.Get().(*event.Decoder) }

// release recycles d unless a large request grew it (a 10 MiB batch), so pools do not
// keep that memory forever.
func (h *Handler) release(d *event.Decoder) {
	if d.Retained() <= 4<<20 {
		h.decoders.Put(d)
	}
}

func (h *Handler) getWork() *work { return h.work.Get().(*work) }

// putWork recycles w unless a large request grew it. The slices are cleared: they
// reference event bytes that the producer may still hold, and nothing must write to those.
func (h *Handler) putWork(w *work) {
	clear(w.results)
	clear(w.msgs)
	w.results, w.msgs, w.out = w.results[:0], w.msgs[:0], w.out[:0]
	if cap(w.out) <= 4<<20 && cap(w.msgs) <= 4*h.limits.MaxBatchEvents {
		h.work.Put(w)
	}
}

// path is the validation-message prefix of the batch event at index i.
func (h *Handler) path(i int) string {
	if i < len(h.paths) {
		return h.paths[i]
	}
	return "events/" + strconv.Itoa(i)
}

// oneEventRequest checks a one-event request's media type (JSON) and takes its body, a
// decoder and the request's work buffers; done gives them back. On false the answer is
// written.
func (h *Handler) oneEventRequest(ctx *fasthttp.RequestCtx, route string) (body []byte, d *event.Decoder, w *work, done func(), ok bool) {
	if mt := mediaType(ctx.Request.Header.ContentType()); mt != "application/json" {
		h.fail(ctx, route, httperr.UnsupportedMediaType, "Content-Type must be application/json", 1)
		return nil, nil, nil, nil, false
	}
	body, release, ok := h.body(ctx, route, h.limits.MaxSingleDecompressed, nil)
	if !ok {
		return nil, nil, nil, nil, false
	}
	d, w = h.decoder(), h.getWork()
	return body, d, w, func() { h.putWork(w); h.release(d); release() }, true
}

// single serves the compat POST /ingest.
func (h *Handler) single(ctx *fasthttp.RequestCtx) {
	body, d, w, done, ok := h.oneEventRequest(ctx, routeSingle)
	if !ok {
		return
	}
	defer done()
	ev, proj, ok := h.decodeSingle(ctx, d, body)
	if !ok {
		return
	}
	value, ok := h.produceOne(ctx, routeSingle, d, w, &ev, proj, len(body))
	if !ok {
		return
	}
	out := append(w.out, `{"success":true,"message":"Event accepted","data":`...)
	out = append(out, value...)
	w.out = append(out, '}')
	h.respond(ctx, fasthttp.StatusAccepted, w.out)
}

// produceOne encodes one event of proj (shortened to fit when it is too large), charges
// it to the project's limits (bodyBytes of request body) and produces it, answering the
// failure itself; on success it counts the event and returns its encoding (valid until w
// is put back).
func (h *Handler) produceOne(ctx *fasthttp.RequestCtx, route string, d *event.Decoder, w *work, ev *event.Event, proj pgstore.KeyProject, bodyBytes int) ([]byte, bool) {
	_, msgKey, value := encodeEvent(make([]byte, 0, eventOverhead+2*len(ev.Name)+len(ev.Payload)+len(ev.Context)), ev, keyCache{}, &w.enc)
	if msg, ok := h.sizeOK(len(value), d); !ok {
		if !h.shorten(d, ev, len(value)) {
			h.fail(ctx, route, httperr.PayloadTooLarge, msg, 1)
			return nil, false
		}
		_, msgKey, value = encodeEvent(nil, ev, keyCache{}, &w.enc)
		if msg, ok := h.sizeOK(len(value), d); !ok {
			h.fail(ctx, route, httperr.PayloadTooLarge, msg, 1)
			return nil, false
		}
	}
	if !h.allow(ctx, route, proj, 1, bodyBytes) {
		return nil, false
	}
	w.msgs = append(w.msgs, kafka.Message{Key: msgKey.key, Value: value, Time: ev.ReceivedAt})
	// Not the RequestCtx: its Done closes when the server shuts down, and a request in
	// flight must still get its acknowledgement. The producer applies its own deadline.
	if err := h.prod.ProducePaced(context.Background(), w.msgs, nil, 0); err != nil {
		h.produceFailed(ctx, route, err, 1)
		return nil, false
	}
	h.accepted.Inc()
	return value, true
}

// decodeSingle validates the body of POST /ingest and resolves its apiKey, answering the
// request itself when it fails: the raw path when it takes the event, Parse + Build
// otherwise (the key is resolved before validation there, as it always was; the raw path
// only takes valid events, so the answers are the same).
func (h *Handler) decodeSingle(ctx *fasthttp.RequestCtx, d *event.Decoder, body []byte) (event.Event, pgstore.KeyProject, bool) {
	if obj, ok := d.SplitObject(body); ok {
		if ev, key, _, ok := d.BuildRaw(obj, h.now()); ok {
			proj, ok := h.resolve(ctx, routeSingle, string(key))
			ev.ProjectID = proj.ID
			return ev, proj, ok
		}
	}
	v, _, perr := d.Parse(body)
	if perr != nil {
		h.fail(ctx, routeSingle, httperr.Code(perr.Code), perr.Message, 1)
		return event.Event{}, pgstore.KeyProject{}, false
	}
	if v.Type() != fastjson.TypeObject {
		h.fail(ctx, routeSingle, httperr.ValidationFailed, "body must be object", 1)
		return event.Event{}, pgstore.KeyProject{}, false
	}
	key, _ := event.APIKey(v)
	proj, ok := h.resolve(ctx, routeSingle, key)
	if !ok {
		return event.Event{}, pgstore.KeyProject{}, false
	}
	ev, verr := d.Build(v, "body", proj.ID, h.now())
	if verr != nil {
		h.fail(ctx, routeSingle, httperr.Code(verr.Code), verr.Message, 1)
		return event.Event{}, pgstore.KeyProject{}, false
	}
	return ev, proj, true
}

// body returns the request body decompressed with a cap on the output, and a release
// to call once the body is no longer used (a gzip body is in a pooled buffer, gunzip.go).
//
// y, when not nil, is how decompression yields (the bulk lane's pauses).
func (h *Handler) body(ctx *fasthttp.RequestCtx, route string, maxDecompressed int, y *event.Yielder) ([]byte, func(), bool) {
	ce := bytes.TrimSpace(ctx.Request.Header.ContentEncoding())
	if len(ce) > 0 && !bytes.EqualFold(ce, []byte("identity")) {
		ce = bytes.ToLower(ce)
	} else {
		ce = nil
	}
	var (
		b   []byte
		buf gzipBuf
		err error
	)
	switch string(ce) {
	case "":
		b = ctx.PostBody()
		if len(b) > maxDecompressed {
			err = fasthttp.ErrBodyTooLarge
		}
	case "gzip", "x-gzip":
		b, buf, err = gunzip(ctx.PostBody(), declaredSize(&ctx.Request), maxDecompressed, y)
	case "zstd":
		b, err = ctx.Request.BodyUnzstdWithLimit(maxDecompressed)
	default:
		h.fail(ctx, route, httperr.UnsupportedEncoding, "Content-Encoding must be gzip, zstd or absent", 1)
		return nil, nil, false
	}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		h.fail(ctx, route, httperr.PayloadTooLarge, "body is larger than "+strconv.Itoa(maxDecompressed)+" bytes after decompression", 1)
		return nil, nil, false
	case err != nil:
		h.fail(ctx, route, httperr.BadRequest, "body could not be decompressed as "+string(ce), 1)
		return nil, nil, false
	case len(b) == 0:
		buf.release()
		h.fail(ctx, route, httperr.InvalidJSON, "body is empty", 1)
		return nil, nil, false
	}
	return b, buf.release, true
}

// allow takes n events and size bytes from the project's buckets (issue 16 item 4), or
// answers 429 and returns false. The bytes charged are the request body's after
// decompression: what the ingestor had to inflate and parse, which gzip cannot hide (15 KB
// on the wire can be 10 MiB of events) and whitespace or rejected events cannot dodge. The
// canonical encoding sent to Kafka differs from it by at most a bounded overhead per event
// (ids, times), which the events bucket bounds. A batch whose events carry the keys of
// several projects is shared among them in proportion to their accepted events' encoded
// bytes (bodyShare).
//
// The RateLimit-Limit, -Remaining and -Reset headers describe one bucket (the draft they
// follow has one set of fields per response): the one that refused the request, or on
// success the one closest to exhaustion; the unit (events or bytes) is in the message of
// a 429. Retry-After is when the refused request would fit both buckets.
func (h *Handler) allow(ctx *fasthttp.RequestCtx, route string, p pgstore.KeyProject, n, size int) bool {
	return h.rateLimit(ctx, route, h.limiter.Allow(p.ID, p.RateLimit, n, size, h.now()), n)
}

// Pacing of big bodies (issue 16 item 4; producer/pace.go has the why): a project's body
// larger than a produce batch is released to the broker at paceFactor times its byte
// limit, and at least fast enough that a maximal body takes paceFloor.
const (
	paceFactor = 3
	paceFloor  = 2 * time.Second
)

// pace is the bytes/s at which a big body of p is released to the broker; 0 (not paced)
// for a project without a byte limit, which nothing else holds back either.
func (h *Handler) pace(p pgstore.KeyProject) float64 {
	r := h.limiter.ByteRate(p.RateLimit)
	if r <= 0 {
		return 0
	}
	return max(paceFactor*r, float64(h.limits.MaxBatchDecompressed)/paceFloor.Seconds())
}

// The bulk lane (issue 16 item 4). Decompressing and decoding a body of megabytes is
// milliseconds of CPU, yielding as it goes (event.Yielder). But a goroutine that yields is
// run again before the runtime looks at the network (it polls only when nothing is
// runnable, or every 10 ms): with a big body on each of two cores, a neighbour's request
// that just arrived waited up to 10 ms to be read. So big bodies are decoded at most
// half the processors at a time (one of two), and the other half always has time for the
// network; the others wait their turn, which only their own senders notice. In the lane
// the work pauses for bulkPause every event.YieldBytes rather than only yielding
// (event.Yielder says why).
const bulkBodyBytes = 1 << 20

// bulkPause is a var for the tests, which lengthen it to see it.
var bulkPause = 200 * time.Microsecond

// enterBulk takes a slot of the bulk lane when the body (its declared size after
// decompression, or its size on the wire) is bigger than bulkBodyBytes, and reports
// whether it did: the caller calls leaveBulk once the body is decoded.
func (h *Handler) enterBulk(req *fasthttp.Request) bool {
	if max(declaredSize(req), len(req.Body())) <= bulkBodyBytes {
		return false
	}
	h.bulk <- struct{}{}
	return true
}

func (h *Handler) leaveBulk() { <-h.bulk }

// bytesFit answers 429 and returns false when the project's bytes bucket cannot take size
// bytes now, taking nothing either way.
func (h *Handler) bytesFit(ctx *fasthttp.RequestCtx, p pgstore.KeyProject, size int) bool {
	return h.rateLimit(ctx, routeBatch, h.limiter.Fits(p.ID, p.RateLimit, size, h.now()), 1)
}

// declaredSize is a lower bound of the request body's size after decompression, read
// without decompressing: its length without Content-Encoding; for gzip, the ISIZE
// trailer (RFC 1952: the size of the last member, mod 2^32, all of it for the usual
// single member); for zstd, the first frame's Frame_Content_Size when the header has one.
// A body whose declared size is false fails its checksum when decompressed (400), so it
// gains nothing from refusing on a declared size it would not have; 0 when unknown.
func declaredSize(req *fasthttp.Request) int {
	b := req.Body()
	switch ce := bytes.TrimSpace(req.Header.ContentEncoding()); {
	case len(ce) == 0 || bytes.EqualFold(ce, []byte("identity")):
		return len(b)
	case bytes.EqualFold(ce, []byte("gzip")) || bytes.EqualFold(ce, []byte("x-gzip")):
		if len(b) >= 18 && b[0] == 0x1f && b[1] == 0x8b {
			return int(binary.LittleEndian.Uint32(b[len(b)-4:]))
		}
	case bytes.EqualFold(ce, []byte("zstd")):
		var hd zstd.Header
		if hd.Decode(b) == nil && hd.HasFCS && hd.FrameContentSize <= math.MaxInt32 {
			return int(hd.FrameContentSize)
		}
	}
	return 0
}

// rateLimit writes d's headers and, when d refused the request, answers 429 for n events.
func (h *Handler) rateLimit(ctx *fasthttp.RequestCtx, route string, d ratelimit.Decision, n int) bool {
	if d.Limit > 0 {
		ctx.Response.Header.Set("RateLimit-Limit", strconv.FormatInt(d.Limit, 10))
		ctx.Response.Header.Set("RateLimit-Remaining", strconv.FormatInt(d.Remaining, 10))
		ctx.Response.Header.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(d.Reset)))
	}
	if d.Allowed {
		return true
	}
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(d.RetryAfter))))
	msg := "Rate limit exceeded for this project; retry after the Retry-After delay"
	if d.Reason == ratelimit.ReasonBytes {
		h.limitedBytes.Inc()
		msg = "Rate limit of decompressed bytes per second exceeded for this project; retry after the Retry-After delay"
	} else {
		h.limitedEvents.Inc()
	}
	h.fail(ctx, route, httperr.RateLimited, msg, n)
	return false
}

func (h *Handler) produceFailed(ctx *fasthttp.RequestCtx, route string, err error, n int) {
	if errors.Is(err, producer.ErrOverloaded) {
		h.unavailable(ctx, route, "the ingestor is overloaded; retry", n)
		return
	}
	h.logger.Warn("produce failed", "route", route, "events", n, "err", err)
	h.unavailable(ctx, route, "events could not be stored durably in time; retry with the same event ids", n)
}

func (h *Handler) unavailable(ctx *fasthttp.RequestCtx, route, msg string, n int) {
	ctx.Response.Header.Set("Retry-After", "1")
	h.fail(ctx, route, httperr.Unavailable, msg, n)
}

// fail answers with the JSON error body and counts n dropped events.
func (h *Handler) fail(ctx *fasthttp.RequestCtx, route string, code httperr.Code, msg string, n int) {
	if n > 0 {
		h.dropped[cause(code)].Add(float64(n))
	}
	h.respond(ctx, code.Status(), httperr.AppendBody(nil, code, msg))
	_ = route
}

// Causes of dropped events (the cause label of pulseboard_ingest_events_dropped_total).
const (
	causeInvalid = iota
	causeTooLarge
	causeUnauthorized
	causeRateLimited
	causeUnavailable
	numCauses
)

var causeNames = [numCauses]string{"invalid", "too_large", "unauthorized", "rate_limited", "unavailable"}

func cause(c httperr.Code) int {
	switch c {
	case httperr.PayloadTooLarge:
		return causeTooLarge
	case httperr.InvalidAPIKey:
		return causeUnauthorized
	case httperr.RateLimited:
		return causeRateLimited
	case httperr.Unavailable:
		return causeUnavailable
	default:
		return causeInvalid
	}
}

// Headers of every response, set in canonical form: Header.Set normalises a key's case on
// every call (BenchmarkServe/single: 5.56 → 5.13 µs per request, medians of six).
var (
	headerAllowOrigin = []byte("Access-Control-Allow-Origin")
	anyOrigin         = []byte("*")
	headerNoSniff     = []byte("X-Content-Type-Options")
	noSniff           = []byte("nosniff")
	contentTypeJSON   = []byte("application/json; charset=utf-8")
)

func (h *Handler) respond(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentTypeBytes(contentTypeJSON)
	ctx.Response.Header.SetCanonical(headerNoSniff, noSniff)
	ctx.SetBody(body)
}

// ErrorHandler answers errors fasthttp hits before the handler runs. Its default answers
// 400 for an oversized body (docs/reliability.md H2); these are the documented statuses.
func ErrorHandler(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	code, msg := httperr.BadRequest, "malformed HTTP request"
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		code, msg = httperr.PayloadTooLarge, "body is larger than the limit"
		// fasthttp closes the connection after this answer with the rest of the body
		// unread: the kernel would reset it, and a client that writes its whole body
		// before reading (Node's fetch) would see ECONNRESET, not the 413 (issue 16
		// item 9). Drain the rest at close instead, unless the declared body is larger
		// than the drain bound (then close as before).
		if n := ctx.Request.Header.ContentLength(); n <= connlimit.DrainMaxBytes {
			if n < 0 { // chunked: unknown
				n = connlimit.DrainMaxBytes
			}
			connlimit.DrainOnClose(ctx.Conn(), int64(n), connlimit.DrainTimeout)
		}
	case errors.As(err, &small):
		code, msg = httperr.HeadersTooLarge, "request headers are too large"
	case errors.As(err, &ne) && ne.Timeout():
		code, msg = httperr.RequestTimeout, "request was not received in time"
	}
	ctx.SetConnectionClose()
	ctx.Response.Reset()
	ctx.SetStatusCode(code.Status())
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
	ctx.SetBody(httperr.AppendBody(nil, code, msg))
}

// mediaType is the Content-Type without parameters, lower-cased. The media types this
// service accepts are returned as constants, so the usual request allocates nothing.
func mediaType(ct []byte) string {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	for _, known := range [...]string{"application/json", "application/x-ndjson"} {
		if bytes.EqualFold(ct, []byte(known)) {
			return known
		}
	}
	return string(bytes.ToLower(ct))
}

func headerKey(hdr *fasthttp.RequestHeader) string {
	if k := hdr.Peek("X-API-Key"); len(k) > 0 {
		return string(k)
	}
	auth := hdr.Peek("Authorization")
	if len(auth) > 7 && bytes.EqualFold(auth[:7], []byte("Bearer ")) {
		return string(bytes.TrimSpace(auth[7:]))
	}
	return ""
}

// shorten makes an event whose encoding (size bytes) is over the event limit fit, if it
// can, by shortening its longest strings (event.Decoder.Fit: a long stack trace is cut,
// with a marker, rather than the error lost, issue 17 item 4); the caller encodes it
// again and checks it again. d built the event last.
func (h *Handler) shorten(d *event.Decoder, ev *event.Event, size int) bool {
	if _, ok := d.Fit(ev, size+d.NumberGrowth(), h.limits.Event.MaxEventBytes); !ok {
		return false
	}
	h.truncated.Inc()
	return true
}

func tooLargeMessage(n int) string {
	return "event is larger than " + strconv.Itoa(n) + " bytes once encoded"
}

// sizeOK checks an event's encoded size, and that size with its numbers as PostgreSQL
// writes them out (d.NumberGrowth: 1e300 is read back as 301 digits), against the
// per-event limit, so that reading events back is as bounded as accepting them. d built
// the event last.
func (h *Handler) sizeOK(encoded int, d *event.Decoder) (string, bool) {
	limit := h.limits.Event.MaxEventBytes
	switch {
	case encoded > limit:
		return tooLargeMessage(limit), false
	case encoded+d.NumberGrowth() > limit:
		return "event is larger than " + strconv.Itoa(limit) + " bytes once stored: its numbers are read back written out in full (1e300 is 301 digits)", false
	}
	return "", true
}

func ceilSeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}
