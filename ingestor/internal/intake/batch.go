package intake

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/pulseboard/pulseboard/ingestor/internal/keycache"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// POST /ingest/batch: a JSON array (or {"events":[…]}) or NDJSON of up to
// Limits.MaxBatchEvents events, keyed by X-API-Key (or Bearer) or by each event's own
// apiKey. batch checks the request, batchReq decodes, validates and encodes its events
// one by one, and finish decides the answer: all or nothing is produced, and each event
// gets its result.

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
	// The request's state lives in its pooled work, so it costs no allocation.
	w := h.getWork()
	defer h.putWork(w)
	b := &w.batch
	*b = batchReq{h: h, ctx: ctx, w: w, guardWait: -1}
	defer func() { *b = batchReq{} }() // holds the body and the decoder: not kept in the pool
	// The key comes from a header (never the URL: it would end up in access logs), or
	// from each event's apiKey when no header is sent.
	if key := headerKey(&ctx.Request.Header); key != "" {
		p, ok := h.resolve(ctx, routeBatch, key)
		if !ok {
			return
		}
		b.header = p
		b.headerProj = &b.header
	}
	// The decoder goes back to its pool as soon as every event is encoded: a parsed
	// 1000-event document is megabytes, and a request waiting for the broker must not
	// hold one (64 concurrent 1000-event batches took the RSS past 500 MiB that way).
	b.d = h.decoder()
	defer b.doneDecoding()
	// A header key's project is charged the decompressed body (see allow). When its bytes
	// bucket cannot hold that now, the request is refused before the work: before
	// decompressing when the body declares its size (declaredSize), else before parsing.
	// Refused requests of a project flooding past its limit then cost next to nothing,
	// and the cores stay with the other projects (issue 16 item 4).
	declared := 0
	if b.headerProj != nil {
		// Past the decompression limit the body is refused as too large (413), not charged.
		declared = min(declaredSize(&ctx.Request), h.limits.MaxBatchDecompressed)
		if !h.bytesFit(ctx, *b.headerProj, declared) {
			return
		}
	}
	b.inBulk = h.enterBulk(&ctx.Request)
	if b.inBulk {
		b.yield.Pause, b.d.YieldPause = bulkPause, bulkPause
	}
	body, release, ok := h.body(ctx, routeBatch, h.limits.MaxBatchDecompressed, &b.yield)
	if !ok {
		return
	}
	defer release()
	if b.headerProj != nil && len(body) > declared && !h.bytesFit(ctx, *b.headerProj, len(body)) {
		return
	}
	b.body = body
	b.now = h.now()
	b.results, b.msgs = w.results[:0], w.msgs[:0]
	defer func() { w.results, w.msgs = b.results, b.msgs }() // keep grown slices for reuse
	// Once handed to the producer, the arena is let go of by the producer too.
	defer func() {
		b.ar.drop()
		if !b.handed {
			b.ar.drop()
		}
	}()
	if !b.decode(mt == "application/x-ndjson") {
		return
	}
	b.doneDecoding() // what follows waits for the broker, not the CPU
	b.finish()
}

// batchReq is one batch request from its decoded body to its answer.
type batchReq struct {
	h          *Handler
	ctx        *fasthttp.RequestCtx
	d          *event.Decoder // nil once released (doneDecoding)
	w          *work
	body       []byte
	now        time.Time
	headerProj *pgstore.KeyProject // nil: each event's own apiKey; else &header
	header     pgstore.KeyProject

	// ar holds every accepted event's Kafka key and value (see encodeEvent): one buffer
	// per request, sized for the canonical encoding of the whole body, taken from a pool
	// once the number of events is known (sized) and returned to it once both this
	// handler and the producer are done with it (handed).
	inBulk bool          // holds a slot of the bulk lane until decoded (enterBulk)
	yield  event.Yielder // decompression and decoding yield through it (paused in the lane)

	ar     *pooledArena
	arena  []byte
	handed bool
	key    keyCache
	keyErr error // a key lookup failed: 503

	results []result
	msgs    []kafka.Message

	// Per-project counts and encoded bytes for the rate limit, only needed without a
	// header key; encodedAll is the sum of encoded.
	projects   map[uuid.UUID]pgstore.KeyProject
	counts     map[uuid.UUID]int
	encoded    map[uuid.UUID]int
	encodedAll int

	// The unknown-key guard (B34) for the events' own keys: the client address is found
	// once, and a refused key refuses the whole request (guardWait >= 0), as a refused
	// header key does.
	addr      netip.Addr
	addrFound bool
	guardWait time.Duration
}

func (b *batchReq) doneDecoding() {
	if b.inBulk {
		b.inBulk = false
		b.h.leaveBulk()
	}
	if b.d != nil {
		b.d.YieldPause = 0 // the decoder goes back to the pool
		b.h.release(b.d)
		b.d = nil
	}
}

// decode validates and encodes every event of the body; false when the request was
// answered already (a body that is not a batch, too many events).
func (b *batchReq) decode(ndjson bool) bool {
	h, d := b.h, b.d
	if ndjson {
		lines := splitLines(b.body)
		if !b.sized(len(lines)) {
			return false
		}
		for _, line := range lines {
			v, _, perr := d.ParseAs(line, h.path(len(b.results)))
			if perr != nil {
				b.reject(perr.Code, perr.Message)
				continue
			}
			b.one(v)
		}
		return true
	}
	if elems, ok := d.SplitBatch(b.body); ok {
		// A clean JSON array (what SDKs send): the raw path, event by event.
		if !b.sized(len(elems)) {
			return false
		}
		for _, el := range elems { // a body is up to megabytes: let small requests run meanwhile
			b.raw(el)
			b.yield.Add(len(el))
		}
		return true
	}
	v, _, perr := d.Parse(b.body)
	if perr != nil {
		h.fail(b.ctx, routeBatch, httperr.Code(perr.Code), perr.Message, 1)
		return false
	}
	if v.Type() == fastjson.TypeObject {
		v = v.Get("events")
	}
	if v == nil || v.Type() != fastjson.TypeArray {
		h.fail(b.ctx, routeBatch, httperr.ValidationFailed, `body must be an array of events or an object {"events":[…]}`, 1)
		return false
	}
	arr, _ := v.Array()
	if !b.sized(len(arr)) {
		return false
	}
	for _, ev := range arr {
		b.one(ev)
	}
	return true
}

// sized checks the number of events and takes the arena for them.
func (b *batchReq) sized(n int) bool {
	if !b.h.checkCount(b.ctx, n) {
		return false
	}
	b.ar = getArena(len(b.body) + n*eventOverhead)
	b.arena = b.ar.buf
	return true
}

func (b *batchReq) reject(code, message string) {
	b.results = append(b.results, result{code: code, message: message})
}

// one validates and encodes a parsed event; values from the parser are only valid until
// the next Parse, so NDJSON lines are handled one at a time.
func (b *batchReq) one(v *fastjson.Value) {
	proj := b.headerProj
	if proj == nil {
		key, _ := event.APIKey(v)
		if proj = b.project(key); proj == nil {
			return
		}
	}
	ev, verr := b.d.Build(v, b.h.path(len(b.results)), proj.ID, b.now)
	if verr != nil {
		b.reject(verr.Code, verr.Message)
		return
	}
	b.add(&ev, proj)
}

// raw is one for an element of SplitBatch: the raw path when it takes the event (the
// same event Build would give), Parse + Build otherwise.
func (b *batchReq) raw(elem []byte) {
	ev, apiKey, _, ok := b.d.BuildRaw(elem, b.now)
	if !ok {
		v, perr := b.d.ParseElement(elem)
		if perr != nil {
			b.reject(perr.Code, perr.Message)
			return
		}
		b.one(v)
		return
	}
	proj := b.headerProj
	if proj == nil {
		if proj = b.project(string(apiKey)); proj == nil {
			return
		}
	}
	ev.ProjectID = proj.ID
	b.add(&ev, proj)
}

// project resolves the project of an event without a header key from its apiKey; on
// failure it records the event's result and returns nil.
func (b *batchReq) project(key string) *pgstore.KeyProject {
	h := b.h
	if h.guarding() {
		if !b.addrFound && h.guard != nil && h.guard.Active() {
			b.addr, b.addrFound = h.clientAddr(b.ctx), true
		}
		if wait, refused := h.keyRefused(b.addr, key); refused {
			b.guardWait = max(b.guardWait, wait)
			b.reject(string(httperr.RateLimited), guardMessage)
			return nil
		}
	}
	p, err := h.keys.Resolve(context.Background(), key)
	switch {
	case errors.Is(err, keycache.ErrUnknownKey):
		h.unknownKey(b.ctx, key)
		b.reject(string(httperr.InvalidAPIKey), "Invalid API key")
		return nil
	case err != nil:
		b.keyErr = err
		b.reject(string(httperr.Unavailable), "API key could not be checked")
		return nil
	}
	return &p
}

// add encodes a valid event of proj and records its result.
func (b *batchReq) add(ev *event.Event, proj *pgstore.KeyProject) {
	h := b.h
	var value []byte
	b.arena, b.key, value = encodeEvent(b.arena, ev, b.key, &b.w.enc)
	if msg, ok := h.sizeOK(len(value), b.d); !ok {
		if !h.shorten(b.d, ev, len(value)) {
			b.reject(string(httperr.PayloadTooLarge), msg)
			return
		}
		b.arena, b.key, value = encodeEvent(b.arena, ev, b.key, &b.w.enc)
		if msg, ok := h.sizeOK(len(value), b.d); !ok {
			b.reject(string(httperr.PayloadTooLarge), msg)
			return
		}
	}
	if b.headerProj == nil {
		if b.projects == nil {
			b.projects, b.counts, b.encoded = map[uuid.UUID]pgstore.KeyProject{}, map[uuid.UUID]int{}, map[uuid.UUID]int{}
		}
		b.projects[proj.ID] = *proj
		b.counts[proj.ID]++
		b.encoded[proj.ID] += len(value)
		b.encodedAll += len(value)
	}
	b.results = append(b.results, result{id: ev.ID})
	b.msgs = append(b.msgs, kafka.Message{Key: b.key.key, Value: value, Time: ev.ReceivedAt})
}

// finish answers the request once every event has its result: refused whole (the
// guard, a key lookup that failed, nothing valid, a project's limit), or produced and
// acknowledged.
func (b *batchReq) finish() {
	h, ctx, w := b.h, b.ctx, b.w
	if b.guardWait >= 0 {
		h.guardRefused(ctx, routeBatch, b.guardWait, len(b.results))
		return
	}
	if b.keyErr != nil {
		h.logger.Warn("API key lookup failed", "err", b.keyErr)
		h.unavailable(ctx, routeBatch, "API keys cannot be checked right now; retry", len(b.results))
		return
	}
	rejected := len(b.results) - len(b.msgs)
	if len(b.msgs) == 0 {
		// A batch without any usable key (none sent, or only in the URL, which is never
		// read) is a 401 like the other routes, not a validation failure (B02, B05).
		code, msg := httperr.InvalidAPIKey, "Invalid API key"
		for _, r := range b.results {
			if r.code != string(httperr.InvalidAPIKey) {
				code, msg = httperr.ValidationFailed, "no event in the batch was accepted"
				break
			}
		}
		h.dropped[cause(code)].Add(float64(rejected))
		w.out = appendBatchBody(w.out[:0], code, msg, b.results, 0)
		h.respond(ctx, code.Status(), w.out)
		return
	}
	if b.headerProj != nil {
		if !h.allow(ctx, routeBatch, *b.headerProj, len(b.msgs), len(b.body)) {
			return
		}
	}
	for id, n := range b.counts {
		if !h.allow(ctx, routeBatch, b.projects[id], n, bodyShare(len(b.body), b.encoded[id], b.encodedAll)) {
			return
		}
	}
	// A body of one project is paced at that project's rate (a body of several is not:
	// the producer paces single-key calls only).
	var pace float64
	switch {
	case b.headerProj != nil:
		pace = h.pace(*b.headerProj)
	case len(b.projects) == 1:
		for _, p := range b.projects {
			pace = h.pace(p)
		}
	}
	b.handed = true
	if err := h.prod.ProducePaced(context.Background(), b.msgs, b.ar.drop, pace); err != nil {
		h.produceFailed(ctx, routeBatch, err, len(b.results))
		return
	}
	h.accepted.Add(float64(len(b.msgs)))
	if rejected > 0 {
		h.dropped[causeInvalid].Add(float64(rejected))
	}
	status := fasthttp.StatusAccepted
	if rejected > 0 {
		status = fasthttp.StatusOK
	}
	w.out = appendBatchBody(w.out[:0], "", "", b.results, len(b.msgs))
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

// bodyShare is the part of a body of size bytes charged to a project whose accepted events
// encode to encoded of the request's encodedAll bytes, rounded up.
func bodyShare(size, encoded, encodedAll int) int {
	if encodedAll <= 0 {
		return size
	}
	return int((int64(size)*int64(encoded) + int64(encodedAll) - 1) / int64(encodedAll))
}

// splitLines returns the non-blank lines of an NDJSON body, trimmed.
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
