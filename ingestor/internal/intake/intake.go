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
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/pulseboard/pulseboard/ingestor/internal/keycache"
	"github.com/pulseboard/pulseboard/ingestor/internal/producer"
	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/apikey"
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
type Producer interface {
	Produce(ctx context.Context, msgs []kafka.Message, free func()) error
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
	decoders sync.Pool // *event.Decoder
	work     sync.Pool // *work
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
}

// New returns a Handler and registers its metrics.
func New(l Limits, keys KeyResolver, prod Producer, limiter *ratelimit.Limiter, logger *slog.Logger, reg prometheus.Registerer) *Handler {
	h := &Handler{limits: l, keys: keys, prod: prod, limiter: limiter, logger: logger, now: time.Now}
	h.known, _ = keys.(knownKeys)
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

// pooledArena is a batch request's arena (see encodeEvent). It goes back to arenas once
// both the handler and the producer let go of it: the producer may hold the events after
// the request was answered (a batch is retried past the request's deadline). A new arena
// per request was 94 % of the bytes the ingestor allocated under batch load, and the
// garbage collection it caused a tenth of its CPU.
type pooledArena struct {
	buf  []byte
	refs atomic.Int32
}

// arenas pools arenas by size class (bufClasses): the pool of class i holds arenas of at
// least bufClasses[i] bytes, so a 10 MiB batch reuses a 16 MiB arena instead of
// allocating one per request (issue 16 item 4: they were 8 % of the all-in-one's
// allocations while one project flooded). Larger arenas are not pooled.
var arenas [len(bufClasses)]sync.Pool // *pooledArena

// getArena returns an empty arena of at least n bytes, held by two: the handler and the
// producer each call drop once.
func getArena(n int) *pooledArena {
	var a *pooledArena
	if c := sizeClass(n); c >= 0 {
		a, _ = arenas[c].Get().(*pooledArena)
		n = bufClasses[c]
	}
	if a == nil {
		a = &pooledArena{buf: make([]byte, 0, n)}
	}
	a.buf = a.buf[:0]
	a.refs.Store(2)
	return a
}

// drop lets go of a; the last one returns it to the pool of the largest class its
// capacity covers. A nil a is a no-op.
func (a *pooledArena) drop() {
	if a == nil || a.refs.Add(-1) != 0 {
		return
	}
	for c := len(bufClasses) - 1; c >= 0; c-- {
		if cap(a.buf) >= bufClasses[c] {
			if cap(a.buf) <= 2*bufClasses[len(bufClasses)-1] {
				arenas[c].Put(a)
			}
			return
		}
	}
}

// encodeEvent appends the canonical event to arena, a buffer that belongs to the request,
// and returns it with the message's Kafka key (the project id) and value. Keys and values
// are slices of the arena, so a request allocates once for all its events; key is reused
// when it is the previous event's project's. Neither is ever written again after this
// (later appends only add bytes past them, or move to a new array), which the producer
// needs: it keeps them until the broker answered. enc is the request's.
func encodeEvent(arena []byte, ev *event.Event, key keyCache, enc *event.Encoder) (_ []byte, _ keyCache, value []byte) {
	if key.key == nil || key.project != ev.ProjectID {
		start := len(arena)
		arena = event.AppendUUID(arena, ev.ProjectID)
		key = keyCache{project: ev.ProjectID, key: arena[start:len(arena):len(arena)]}
	}
	start := len(arena)
	arena = enc.AppendJSON(arena, ev)
	return arena, key, arena[start:len(arena):len(arena)]
}

// keyCache is the Kafka key of the last project encoded.
type keyCache struct {
	project uuid.UUID
	key     []byte
}

// eventOverhead bounds the canonical encoding's bytes beyond name, payload and context:
// field names, ids, times and the Kafka key.
const eventOverhead = 256

// oneEventRequest checks a one-event request's media type (JSON) and takes its body, a
// decoder and the request's work buffers; done gives them back. On false the answer is
// written.
func (h *Handler) oneEventRequest(ctx *fasthttp.RequestCtx, route string) (body []byte, d *event.Decoder, w *work, done func(), ok bool) {
	if mt := mediaType(ctx.Request.Header.ContentType()); mt != "application/json" {
		h.fail(ctx, route, httperr.UnsupportedMediaType, "Content-Type must be application/json", 1)
		return nil, nil, nil, nil, false
	}
	body, release, ok := h.body(ctx, route, h.limits.MaxSingleDecompressed)
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
	if err := h.prod.Produce(context.Background(), w.msgs, nil); err != nil {
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

type result struct {
	id      uuid.UUID
	code    string
	message string
}

// batch serves POST /ingest/batch.
func (h *Handler) batch(ctx *fasthttp.RequestCtx) {
	mt := mediaType(ctx.Request.Header.ContentType())
	if mt != "application/json" && mt != "application/x-ndjson" {
		h.fail(ctx, routeBatch, httperr.UnsupportedMediaType, "Content-Type must be application/json or application/x-ndjson", 1)
		return
	}
	// The key comes from a header (never the URL: it would end up in access logs), or
	// from each event's apiKey when no header is sent.
	var headerProj *pgstore.KeyProject
	if key := headerKey(&ctx.Request.Header); key != "" {
		p, ok := h.resolve(ctx, routeBatch, key)
		if !ok {
			return
		}
		headerProj = &p
	}
	// The decoder goes back to its pool as soon as every event is encoded: a parsed
	// 1000-event document is megabytes, and a request waiting for the broker must not
	// hold one (64 concurrent 1000-event batches took the RSS past 500 MiB that way).
	d := h.decoder()
	decoding := true
	doneDecoding := func() {
		if decoding {
			decoding = false
			h.release(d)
		}
	}
	defer doneDecoding()
	// A header key's project is charged the decompressed body (see allow). When its bytes
	// bucket cannot hold that now, the request is refused before the work: before
	// decompressing when the body declares its size (declaredSize), else before parsing.
	// Refused requests of a project flooding past its limit then cost next to nothing,
	// and the cores stay with the other projects (issue 16 item 4).
	declared := 0
	if headerProj != nil {
		// Past the decompression limit the body is refused as too large (413), not charged.
		declared = min(declaredSize(&ctx.Request), h.limits.MaxBatchDecompressed)
		if !h.bytesFit(ctx, *headerProj, declared) {
			return
		}
	}
	body, release, ok := h.body(ctx, routeBatch, h.limits.MaxBatchDecompressed)
	if !ok {
		return
	}
	defer release()
	if headerProj != nil && len(body) > declared && !h.bytesFit(ctx, *headerProj, len(body)) {
		return
	}
	w := h.getWork()
	defer h.putWork(w)

	now := h.now()
	var (
		// arena holds every accepted event's Kafka key and value (see encodeEvent): one
		// buffer per request, sized for the canonical encoding of the whole body, taken
		// from a pool once the number of events is known (ar) and returned to it once
		// both this handler and the producer are done with it.
		ar     *pooledArena
		arena  []byte
		key    keyCache
		keyErr error
		// Per-project counts and encoded bytes for the rate limit, only needed without a
		// header key; encodedAll is the sum of encoded.
		projects   map[uuid.UUID]pgstore.KeyProject
		counts     map[uuid.UUID]int
		encoded    map[uuid.UUID]int
		encodedAll int
	)
	results := w.results[:0]
	msgs := w.msgs[:0]
	// The unknown-key guard (B34) for the events' own keys: the client address is found
	// once, and a refused key refuses the whole request (guardWait >= 0), as a refused
	// header key does.
	var (
		addr      netip.Addr
		addrFound bool
		guardWait = time.Duration(-1)
	)
	// project resolves the project of an event without a header key from its apiKey; on
	// failure it records the event's result and returns nil.
	project := func(key string) *pgstore.KeyProject {
		if h.guarding() {
			if !addrFound && h.guard != nil && h.guard.Active() {
				addr, addrFound = h.clientAddr(ctx), true
			}
			if wait, refused := h.keyRefused(addr, key); refused {
				guardWait = max(guardWait, wait)
				results = append(results, result{code: string(httperr.RateLimited), message: guardMessage})
				return nil
			}
		}
		p, err := h.keys.Resolve(context.Background(), key)
		switch {
		case errors.Is(err, keycache.ErrUnknownKey):
			h.unknownKey(ctx, key)
			results = append(results, result{code: string(httperr.InvalidAPIKey), message: "Invalid API key"})
			return nil
		case err != nil:
			keyErr = err
			results = append(results, result{code: string(httperr.Unavailable), message: "API key could not be checked"})
			return nil
		}
		return &p
	}
	// add encodes a valid event of proj and records its result.
	add := func(ev *event.Event, proj *pgstore.KeyProject) {
		var value []byte
		arena, key, value = encodeEvent(arena, ev, key, &w.enc)
		if msg, ok := h.sizeOK(len(value), d); !ok {
			if !h.shorten(d, ev, len(value)) {
				results = append(results, result{code: string(httperr.PayloadTooLarge), message: msg})
				return
			}
			arena, key, value = encodeEvent(arena, ev, key, &w.enc)
			if msg, ok := h.sizeOK(len(value), d); !ok {
				results = append(results, result{code: string(httperr.PayloadTooLarge), message: msg})
				return
			}
		}
		if headerProj == nil {
			if projects == nil {
				projects, counts, encoded = map[uuid.UUID]pgstore.KeyProject{}, map[uuid.UUID]int{}, map[uuid.UUID]int{}
			}
			projects[proj.ID] = *proj
			counts[proj.ID]++
			encoded[proj.ID] += len(value)
			encodedAll += len(value)
		}
		results = append(results, result{id: ev.ID})
		msgs = append(msgs, kafka.Message{Key: key.key, Value: value, Time: ev.ReceivedAt})
	}
	// one validates and encodes the event at index i; values from the parser are only
	// valid until the next Parse, so NDJSON lines are handled one at a time.
	one := func(v *fastjson.Value) {
		proj := headerProj
		if proj == nil {
			key, _ := event.APIKey(v)
			if proj = project(key); proj == nil {
				return
			}
		}
		ev, verr := d.Build(v, h.path(len(results)), proj.ID, now)
		if verr != nil {
			results = append(results, result{code: verr.Code, message: verr.Message})
			return
		}
		add(&ev, proj)
	}
	// raw is one for an element of SplitBatch: the raw path when it takes the event
	// (the same event Build would give), Parse + Build otherwise.
	raw := func(elem []byte) {
		ev, apiKey, _, ok := d.BuildRaw(elem, now)
		if !ok {
			v, perr := d.ParseElement(elem)
			if perr != nil {
				results = append(results, result{code: perr.Code, message: perr.Message})
				return
			}
			one(v)
			return
		}
		proj := headerProj
		if proj == nil {
			if proj = project(string(apiKey)); proj == nil {
				return
			}
		}
		ev.ProjectID = proj.ID
		add(&ev, proj)
	}
	// sized checks the number of events and takes the arena for them.
	sized := func(n int) bool {
		if !h.checkCount(ctx, n) {
			return false
		}
		ar = getArena(len(body) + n*eventOverhead)
		arena = ar.buf
		return true
	}
	defer func() { w.results, w.msgs = results, msgs }() // keep grown slices for reuse
	// Once handed to the producer, ar is let go of by the producer too.
	handed := false
	defer func() {
		ar.drop()
		if !handed {
			ar.drop()
		}
	}()

	if mt == "application/x-ndjson" {
		lines := splitLines(body)
		if !sized(len(lines)) {
			return
		}
		for _, line := range lines {
			v, _, perr := d.ParseAs(line, h.path(len(results)))
			if perr != nil {
				results = append(results, result{code: perr.Code, message: perr.Message})
				continue
			}
			one(v)
		}
	} else if elems, ok := d.SplitBatch(body); ok {
		// A clean JSON array (what SDKs send): the raw path, event by event.
		if !sized(len(elems)) {
			return
		}
		for _, el := range elems {
			raw(el)
		}
	} else {
		v, _, perr := d.Parse(body)
		if perr != nil {
			h.fail(ctx, routeBatch, httperr.Code(perr.Code), perr.Message, 1)
			return
		}
		if v.Type() == fastjson.TypeObject {
			v = v.Get("events")
		}
		if v == nil || v.Type() != fastjson.TypeArray {
			h.fail(ctx, routeBatch, httperr.ValidationFailed, `body must be an array of events or an object {"events":[…]}`, 1)
			return
		}
		arr, _ := v.Array()
		if !sized(len(arr)) {
			return
		}
		for _, ev := range arr {
			one(ev)
		}
	}
	doneDecoding() // what follows waits for the broker, not the CPU
	if guardWait >= 0 {
		h.guardRefused(ctx, routeBatch, guardWait, len(results))
		return
	}
	if keyErr != nil {
		h.logger.Warn("API key lookup failed", "err", keyErr)
		h.unavailable(ctx, routeBatch, "API keys cannot be checked right now; retry", len(results))
		return
	}
	rejected := len(results) - len(msgs)
	if len(msgs) == 0 {
		// A batch without any usable key (none sent, or only in the URL, which is never
		// read) is a 401 like the other routes, not a validation failure (B02, B05).
		code, msg := httperr.InvalidAPIKey, "Invalid API key"
		for _, r := range results {
			if r.code != string(httperr.InvalidAPIKey) {
				code, msg = httperr.ValidationFailed, "no event in the batch was accepted"
				break
			}
		}
		h.dropped[cause(code)].Add(float64(rejected))
		w.out = appendBatchBody(w.out[:0], code, msg, results, 0)
		h.respond(ctx, code.Status(), w.out)
		return
	}
	if headerProj != nil {
		if !h.allow(ctx, routeBatch, *headerProj, len(msgs), len(body)) {
			return
		}
	}
	for id, n := range counts {
		if !h.allow(ctx, routeBatch, projects[id], n, bodyShare(len(body), encoded[id], encodedAll)) {
			return
		}
	}
	handed = true
	if err := h.prod.Produce(context.Background(), msgs, ar.drop); err != nil {
		h.produceFailed(ctx, routeBatch, err, len(results))
		return
	}
	h.accepted.Add(float64(len(msgs)))
	if rejected > 0 {
		h.dropped[causeInvalid].Add(float64(rejected))
	}
	status := fasthttp.StatusAccepted
	if rejected > 0 {
		status = fasthttp.StatusOK
	}
	w.out = appendBatchBody(w.out[:0], "", "", results, len(msgs))
	h.respond(ctx, status, w.out)
}

func (h *Handler) checkCount(ctx *fasthttp.RequestCtx, n int) bool {
	switch {
	case n == 0:
		h.fail(ctx, routeBatch, httperr.ValidationFailed, "body must contain at least 1 event", 1)
		return false
	case n > h.limits.MaxBatchEvents:
		h.fail(ctx, routeBatch, httperr.PayloadTooLarge, "a batch holds at most "+strconv.Itoa(h.limits.MaxBatchEvents)+" events", n)
		return false
	}
	return true
}

// appendBatchBody appends the batch answer: a success, or with a failure code the error
// body plus the per-event results.
func appendBatchBody(dst []byte, failure httperr.Code, failureMsg string, results []result, accepted int) []byte {
	if failure == "" {
		dst = append(dst, `{"success":true,"data":{"accepted":`...)
	} else {
		dst = httperr.AppendBody(dst, failure, failureMsg)
		dst = append(dst[:len(dst)-1], `,"data":{"accepted":`...)
	}
	dst = strconv.AppendInt(dst, int64(accepted), 10)
	dst = append(dst, `,"rejected":`...)
	dst = strconv.AppendInt(dst, int64(len(results)-accepted), 10)
	dst = append(dst, `,"results":[`...)
	for i, r := range results {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"index":`...)
		dst = strconv.AppendInt(dst, int64(i), 10)
		if r.code == "" {
			dst = append(dst, `,"id":"`...)
			dst = event.AppendUUID(dst, r.id)
			dst = append(dst, `","status":"accepted"}`...)
			continue
		}
		dst = append(dst, `,"status":"rejected","code":`...)
		dst = event.AppendString(dst, r.code)
		dst = append(dst, `,"message":`...)
		dst = event.AppendString(dst, r.message)
		dst = append(dst, '}')
	}
	return append(dst, "]}}"...)
}

// body returns the request body decompressed with a cap on the output, and a release
// to call once the body is no longer used (a gzip body is in a pooled buffer, gunzip.go).
func (h *Handler) body(ctx *fasthttp.RequestCtx, route string, maxDecompressed int) ([]byte, func(), bool) {
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
		b, buf, err = gunzip(ctx.PostBody(), declaredSize(&ctx.Request), maxDecompressed)
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

func (h *Handler) resolve(ctx *fasthttp.RequestCtx, route, key string) (pgstore.KeyProject, bool) {
	if h.guarding() {
		var addr netip.Addr // only the address guard needs it
		if h.guard != nil && h.guard.Active() {
			addr = h.clientAddr(ctx)
		}
		if wait, refused := h.keyRefused(addr, key); refused {
			h.guardRefused(ctx, route, wait, 1)
			return pgstore.KeyProject{}, false
		}
	}
	p, err := h.keys.Resolve(context.Background(), key)
	switch {
	case err == nil:
		return p, true
	case errors.Is(err, keycache.ErrUnknownKey):
		h.unknownKey(ctx, key)
		h.fail(ctx, route, httperr.InvalidAPIKey, "Invalid API key", 1)
	default:
		h.logger.Warn("API key lookup failed", "err", err)
		h.unavailable(ctx, route, "API keys cannot be checked right now; retry", 1)
	}
	return p, false
}

// unknownKey counts an unknown key against the client's address (B34) and against the
// key's prefix (issue 16 item 5).
func (h *Handler) unknownKey(ctx *fasthttp.RequestCtx, key string) {
	now := h.now()
	if h.guard != nil {
		addr := h.clientAddr(ctx)
		if h.guard.Failed(addr, now) {
			// The key itself is never logged; the address is what an operator acts on.
			h.logger.Warn("many requests with unknown API keys from one address: possible key enumeration; answering 429 to its keys not known valid",
				"client", addr.String(), "peer", peerAddr(ctx).String())
		}
	}
	if h.prefixes != nil {
		if prefix, first := h.prefixes.Failed(key, now); first {
			// Never the whole key: only its prefix, or, for a key that is its own prefix
			// (shorter than a PulseBoard key's), the prefix's hash.
			attr := slog.String("key_prefix", prefix)
			if len(prefix) >= len(key) {
				attr = slog.String("key_prefix_sha256", apikey.HashOf(prefix).String())
			}
			h.logger.Warn("many requests with unknown API keys sharing one prefix: possible key enumeration or a revoked key in wide use; answering 429 to its keys not known valid",
				attr, "client", h.clientAddr(ctx).String(), "peer", peerAddr(ctx).String())
		}
	}
}

// guarding reports whether the unknown-key guard may refuse anything yet: until some
// address or key prefix was charged an unknown key, nothing is blocked and a request
// needs neither its client address nor any lock.
func (h *Handler) guarding() bool {
	return (h.guard != nil && h.guard.Active()) || (h.prefixes != nil && h.prefixes.Active())
}

// guardMessage answers a key the unknown-key guard refused.
const guardMessage = "Too many requests with invalid API keys from this address or for this key prefix; retry after the Retry-After delay"

// keyRefused is the unknown-key guard's rule (B34, issue 16 item 5): a key presented from
// addr is refused before any lookup when addr has used up its unknown-key attempts, or the
// key's prefix has (ratelimit.PrefixGuard), and the key is not known valid, i.e. it did
// not resolve to a project recently (a local cache entry, no I/O). So other clients' bad
// keys at the same address (a NAT, a proxy nobody configured as trusted) or with the same
// prefix never refuse a valid key in use, while a blocked address or prefix still cannot
// have keys looked up: a guess passes only if it is a key somebody is using, which with
// 190-bit keys is no guess at all. A valid key that this ingestor has not seen in the last
// cache TTLs is still refused from a blocked address, or with a blocked prefix, until the
// bucket refills. addr is unused (may be the zero Addr) while the address guard is not
// Active.
func (h *Handler) keyRefused(addr netip.Addr, key string) (time.Duration, bool) {
	now := h.now()
	var wait time.Duration
	var blocked bool
	if h.guard != nil {
		wait, blocked = h.guard.Blocked(addr, now)
	}
	if h.prefixes != nil {
		if w, b := h.prefixes.Blocked(key, now); b {
			wait, blocked = max(wait, w), true
		}
	}
	if !blocked || (h.known != nil && h.known.Known(key)) {
		return 0, false
	}
	return wait, true
}

// guardRefused answers 429 for a key the guard refused.
func (h *Handler) guardRefused(ctx *fasthttp.RequestCtx, route string, wait time.Duration, n int) {
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(wait))))
	h.fail(ctx, route, httperr.RateLimited, guardMessage, n)
}

// clientAddr is the address the guard keys on: the TCP peer's, or, when the peer is a
// trusted proxy (INGEST_TRUSTED_PROXIES), the client address its X-Forwarded-For or
// Forwarded header reports (pkg/clientip: the right-most entry that is not a trusted
// proxy; a malformed header gives the peer). From any other peer the header is ignored,
// so a client cannot pick the address it is limited by.
func (h *Handler) clientAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	peer := peerAddr(ctx)
	if !h.clientIP.Enabled() || !h.clientIP.Trusted(peer) {
		return peer
	}
	var values []string
	for _, v := range ctx.Request.Header.PeekAll(h.clientIP.Header().String()) {
		values = append(values, string(v))
	}
	return h.clientIP.ClientAddr(peer, values)
}

// peerAddr is the TCP peer's address.
func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	return netip.Addr{}
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

// bodyShare is the part of a body of size bytes charged to a project whose accepted events
// encode to encoded of the request's encodedAll bytes, rounded up.
func bodyShare(size, encoded, encodedAll int) int {
	if encodedAll <= 0 {
		return size
	}
	return int((int64(size)*int64(encoded) + int64(encodedAll) - 1) / int64(encodedAll))
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

func splitLines(b []byte) [][]byte {
	var lines [][]byte
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			lines = append(lines, line)
		}
	}
	return lines
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
