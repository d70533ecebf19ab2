package intake

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/keycache"
	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// FuzzIngest drives the real handler (routing, content type, decompression with its
// cap, sanitising and parsing, key resolution, validation, the event-count limit and the
// per-event results) in process, with an in-memory key resolver and producer, and
// checks every answer:
//
//   - it is JSON; a failure has success=false, a known code whose status is the
//     answer's, and produced nothing; a 503 carries Retry-After;
//   - a success produced exactly the accepted events, in order, under their project's
//     key; each one re-validates with the consumer's strict decoder, re-encodes to the
//     same bytes and is within the per-event size limit;
//   - the body stages follow an independent model: content type (415), header key
//     (401/503), Content-Encoding (415), decompression with stdlib gzip / klauspost zstd
//     as references (400 when they fail, 413 when the output exceeds the cap: no zip
//     bomb gets through), the empty body (400) and the event count (400/413);
//   - a compressed body is answered exactly like the same bytes sent uncompressed.
//
// The limits are small so that the fuzzer reaches every boundary with small inputs;
// the body is repeated (repeat+1) times so that bombs are cheap to express.
func FuzzIngest(f *testing.F) {
	for _, s := range ingestSeeds() {
		f.Add(s.mode, s.repeat, []byte(s.body))
	}
	fx := newIngestFixture()
	f.Fuzz(func(t *testing.T, mode uint16, repeat uint8, body []byte) {
		req := decodeIngestMode(mode, repeat, body)
		res := fx.serve(req)
		fx.check(t, req, res)
	})
}

// Fuzzing limits (DefaultLimits are far larger).
var fuzzLimits = Limits{
	MaxBodyBytes:          8 << 10,
	MaxSingleDecompressed: 8 << 10,
	MaxBatchDecompressed:  32 << 10,
	MaxBatchEvents:        16,
	Event:                 event.Limits{MaxNameChars: event.DefaultMaxNameChars, MaxEventBytes: 2048, MaxDepth: event.DefaultMaxDepth},
}

// API keys the fake resolver knows.
const (
	fuzzKeyA    = "pb_live_fuzzProjectA00000000000000000"
	fuzzKeyB    = "pb_live_fuzzProjectB00000000000000000"
	fuzzKeyDown = "pb_live_fuzzKeyStoreIsDown000000000000"
)

var (
	fuzzProjectA = uuid.MustParse("0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b")
	fuzzProjectB = uuid.MustParse("0190a6b2-7c3e-7d4f-8a1b-000000000002")
	fuzzNow      = time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.UTC)
)

type fuzzKeys struct{}

func (fuzzKeys) Resolve(_ context.Context, key string) (pgstore.KeyProject, error) {
	unlimited := 0
	switch key {
	case fuzzKeyA:
		return pgstore.KeyProject{ID: fuzzProjectA, RateLimit: &unlimited}, nil
	case fuzzKeyB:
		return pgstore.KeyProject{ID: fuzzProjectB, RateLimit: &unlimited}, nil
	case fuzzKeyDown:
		return pgstore.KeyProject{}, errors.New("key store unavailable")
	}
	return pgstore.KeyProject{}, keycache.ErrUnknownKey
}

// fuzzProducer records what was acknowledged; fail makes every produce fail.
type fuzzProducer struct {
	mu     sync.Mutex
	fail   bool
	called bool
	acked  []kafka.Message
}

func (p *fuzzProducer) ProducePaced(_ context.Context, msgs []kafka.Message, free func(), _ float64) error {
	if free != nil {
		defer free()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.called = true
	if p.fail {
		return errors.New("broker unavailable")
	}
	for _, m := range msgs {
		p.acked = append(p.acked, kafka.Message{Key: bytes.Clone(m.Key), Value: bytes.Clone(m.Value), Time: m.Time})
	}
	return nil
}

type ingestFixture struct {
	h    *Handler
	prod *fuzzProducer
	dec  *event.Decoder
}

func newIngestFixture() *ingestFixture {
	prod := &fuzzProducer{}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := New(fuzzLimits, fuzzKeys{}, prod, ratelimit.New(0, fuzzLimits.MaxBatchEvents), logger, prometheus.NewRegistry())
	h.now = func() time.Time { return fuzzNow }
	return &ingestFixture{h: h, prod: prod, dec: event.NewDecoder(fuzzLimits.Event)}
}

// ingestRequest is one request the fuzzer describes.
type ingestRequest struct {
	single      bool
	contentType string
	// encoding is the Content-Encoding header ("" for none); compress, when set, is
	// applied by the harness to plain (gzip or zstd), otherwise wire is plain as is.
	encoding string
	compress string
	plain    []byte // the body before the harness compressed it
	wire     []byte // what is sent
	header   [2]string
	prodFail bool
}

var (
	fuzzContentTypes = []string{"application/json", "application/x-ndjson", "Application/JSON; charset=utf-8", "text/plain"}
	// Content-Encoding header, and what the harness compresses with ("" = send as is).
	fuzzEncodings = [][2]string{{"", ""}, {"identity", ""}, {"gzip", "gzip"}, {"zstd", "zstd"}, {"gzip", ""}, {"zstd", ""}, {"deflate", ""}, {" X-GZIP ", "gzip"}}
	fuzzHeaders   = [][2]string{{}, {"X-API-Key", fuzzKeyA}, {"Authorization", "Bearer " + fuzzKeyB}, {"X-API-Key", "pb_live_unknown0000000000000000000000"},
		{"X-API-Key", fuzzKeyDown}, {"Authorization", "Basic " + fuzzKeyA}, {}, {}}
)

// decodeIngestMode: bit 0 route, bits 1-2 content type, bits 3-5 encoding, bits 6-8
// header key, bit 9 the producer fails.
func decodeIngestMode(mode uint16, repeat uint8, body []byte) ingestRequest {
	enc := fuzzEncodings[mode>>3&7]
	r := ingestRequest{
		single:      mode&1 == 1,
		contentType: fuzzContentTypes[mode>>1&3],
		encoding:    enc[0],
		compress:    enc[1],
		header:      fuzzHeaders[mode>>6&7],
		prodFail:    mode>>9&1 == 1,
	}
	r.plain = bytes.Repeat(body, int(repeat)+1)
	switch r.compress {
	case "gzip":
		r.wire = gzipBytes(r.plain)
	case "zstd":
		r.wire = zstdEncoder.EncodeAll(r.plain, nil)
	default:
		r.wire = r.plain
	}
	return r
}

// Encoders are costly to build; these are reused (fuzz inputs run one at a time).
var (
	gzipWriter     = gzip.NewWriter(io.Discard)
	zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
)

func gzipBytes(b []byte) []byte {
	var out bytes.Buffer
	gzipWriter.Reset(&out)
	_, _ = gzipWriter.Write(b)
	_ = gzipWriter.Close()
	return out.Bytes()
}

// ingestResult is what the handler answered and what reached the producer.
type ingestResult struct {
	status     int
	retryAfter string
	body       []byte
	acked      []kafka.Message
	produced   bool
}

func (fx *ingestFixture) serve(r ingestRequest) ingestResult {
	fx.prod.mu.Lock()
	fx.prod.fail, fx.prod.called, fx.prod.acked = r.prodFail, false, nil
	fx.prod.mu.Unlock()

	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(fasthttp.MethodPost)
	if r.single {
		ctx.Request.SetRequestURI("/ingest")
	} else {
		ctx.Request.SetRequestURI("/ingest/batch")
	}
	ctx.Request.Header.SetContentType(r.contentType)
	if r.encoding != "" {
		ctx.Request.Header.Set(fasthttp.HeaderContentEncoding, r.encoding)
	}
	if r.header[0] != "" {
		ctx.Request.Header.Set(r.header[0], r.header[1])
	}
	ctx.Request.SetBody(r.wire)
	fx.h.ServeFastHTTP(&ctx)

	fx.prod.mu.Lock()
	defer fx.prod.mu.Unlock()
	return ingestResult{
		status:     ctx.Response.StatusCode(),
		retryAfter: string(ctx.Response.Header.Peek("Retry-After")),
		body:       bytes.Clone(ctx.Response.Body()),
		acked:      fx.prod.acked,
		produced:   fx.prod.called,
	}
}

type ingestAnswer struct {
	Success *bool           `json:"success"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

type batchData struct {
	Accepted *int `json:"accepted"`
	Rejected *int `json:"rejected"`
	Results  []struct {
		Index   int    `json:"index"`
		ID      string `json:"id"`
		Status  string `json:"status"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"results"`
}

var knownCodes = map[httperr.Code]bool{
	httperr.ValidationFailed: true, httperr.InvalidJSON: true, httperr.InvalidTimestamp: true,
	httperr.InvalidAPIKey: true, httperr.PayloadTooLarge: true, httperr.UnsupportedMediaType: true,
	httperr.UnsupportedEncoding: true, httperr.BadRequest: true, httperr.Unavailable: true,
}

func (fx *ingestFixture) check(t *testing.T, r ingestRequest, res ingestResult) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\nrequest: single=%v ct=%q ce=%q header=%q prodFail=%v wire=%q\nanswer %d: %s",
			append(args, r.single, r.contentType, r.encoding, r.header, r.prodFail, trunc(r.wire), res.status, trunc(res.body))...)
	}
	var a ingestAnswer
	if err := json.Unmarshal(res.body, &a); err != nil || a.Success == nil {
		fail("the answer is not a JSON object with success: %v", err)
	}
	if (res.status == 503) != (res.retryAfter != "") {
		fail("Retry-After must come with 503 and only then")
	}
	if res.produced && r.prodFail && res.status != 503 {
		fail("a failed produce must answer 503")
	}

	var batch batchData
	if !r.single && len(a.Data) > 0 {
		if err := json.Unmarshal(a.Data, &batch); err != nil || batch.Accepted == nil || batch.Rejected == nil {
			fail("batch data is not {accepted,rejected,results}: %v", err)
		}
		if *batch.Accepted+*batch.Rejected != len(batch.Results) || len(batch.Results) > fuzzLimits.MaxBatchEvents {
			fail("inconsistent batch counts")
		}
		for i, e := range batch.Results {
			if e.Index != i || (e.Status == "accepted") != (e.Code == "") ||
				e.Status == "rejected" && (!knownCodes[httperr.Code(e.Code)] || e.Message == "") {
				fail("bad per-event result %d: %+v", i, e)
			}
		}
	}

	switch {
	case res.status == 200 || res.status == 202:
		if !*a.Success {
			fail("2xx with success=false")
		}
		fx.checkAcked(t, r, res, fail)
		if r.single {
			if res.status != 202 || len(res.acked) != 1 || !bytes.Equal(a.Data, res.acked[0].Value) {
				fail("a single event must be answered 202 with exactly the produced event")
			}
			break
		}
		if *batch.Accepted != len(res.acked) || (res.status == 202) != (*batch.Rejected == 0) || len(res.acked) == 0 {
			fail("batch: %d accepted, %d rejected, %d produced", *batch.Accepted, *batch.Rejected, len(res.acked))
		}
		k := 0
		for _, e := range batch.Results {
			if e.Status == "accepted" {
				if e.ID != string(res.acked[k].Value[7:43]) {
					fail("result id %s is not the produced event's", e.ID)
				}
				k++
			}
		}
	default:
		if *a.Success || !knownCodes[httperr.Code(a.Code)] || httperr.Code(a.Code).Status() != res.status || a.Message == "" {
			fail("a failure needs success=false and a known code matching the status")
		}
		if len(res.acked) != 0 {
			fail("a failed request produced %d events", len(res.acked))
		}
		if batch.Accepted != nil && *batch.Accepted != 0 {
			fail("a failed batch reports accepted events")
		}
	}

	want, plain, decided := expectStages(r)
	if decided {
		if a.Code != string(want) {
			fail("want %s from the body stages, got %q", want, a.Code)
		}
		return
	}
	if strings.HasPrefix(a.Message, "body is larger than") || strings.HasPrefix(a.Message, "body could not be decompressed") ||
		a.Message == "body is empty" {
		fail("the references decompressed %d bytes within the limit, but the handler refused the body", len(plain))
	}
	if !r.single {
		if n, ok := countEvents(r.contentType, plain); ok {
			switch {
			case n == 0 && a.Code != string(httperr.ValidationFailed):
				fail("an empty batch must be VALIDATION_FAILED")
			case n > fuzzLimits.MaxBatchEvents && a.Code != string(httperr.PayloadTooLarge):
				fail("%d events must be PAYLOAD_TOO_LARGE", n)
			case n >= 1 && n <= fuzzLimits.MaxBatchEvents && len(batch.Results) > 0 && len(batch.Results) != n:
				fail("%d events but %d results", n, len(batch.Results))
			}
		}
	}
	if r.compress != "" || r.encoding != "" && r.encoding != "identity" {
		// The same bytes uncompressed must get the same answer (generated ids aside).
		id := r
		id.encoding, id.compress, id.wire = "", "", plain
		got, wantRes := normalize(res), normalize(fx.serve(id))
		if got != wantRes {
			fail("compressed and identity answers differ:\n%s\n%s", got, wantRes)
		}
	}
}

// checkAcked re-validates every produced event.
func (fx *ingestFixture) checkAcked(t *testing.T, r ingestRequest, res ingestResult, fail func(string, ...any)) {
	t.Helper()
	for i, m := range res.acked {
		if len(m.Value) > fuzzLimits.Event.MaxEventBytes {
			fail("event %d is %d bytes, over the limit", i, len(m.Value))
		}
		ev, err := fx.dec.DecodeMessage(m.Value)
		if err != nil {
			fail("produced event %d does not re-validate: %v\n%s", i, err, m.Value)
		}
		if string(m.Key) != ev.ProjectID.String() || (ev.ProjectID != fuzzProjectA && ev.ProjectID != fuzzProjectB) {
			fail("event %d: key %q, project %s", i, m.Key, ev.ProjectID)
		}
		if hp := headerProject(r.header); !r.single && hp != uuid.Nil && ev.ProjectID != hp {
			fail("event %d is not in the header key's project", i)
		}
		if !ev.ReceivedAt.Equal(fuzzNow.Truncate(event.Precision)) {
			fail("event %d receivedAt %s", i, ev.ReceivedAt)
		}
		if again := ev.AppendJSON(nil); !bytes.Equal(again, m.Value) {
			fail("event %d does not re-encode to the same bytes:\n%s\n%s", i, m.Value, again)
		}
		if err := event.CheckUniqueKeys(m.Value, "message"); err != nil {
			fail("event %d was accepted with a duplicate key: %s", i, err.Message)
		}
		for _, obj := range [][]byte{ev.Payload, ev.Context} {
			if n, ok := notADouble(obj); !ok {
				fail("event %d was accepted with the number %s, which is not a finite double", i, n)
			}
		}
	}
}

// notADouble finds a number of the JSON document b that is not a finite double, or a
// non-zero one that reads as 0.
func notADouble(b []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", true
		}
		n, isNum := tok.(json.Number)
		if !isNum {
			continue
		}
		f, err := strconv.ParseFloat(string(n), 64)
		mant, _, _ := strings.Cut(strings.ToLower(string(n)), "e")
		if err != nil || math.IsInf(f, 0) || f == 0 && strings.Trim(mant, "-0.") != "" {
			return string(n), false
		}
	}
}

// headerProject is the project of the batch's header key, if it sends a valid one.
func headerProject(h [2]string) uuid.UUID {
	switch h {
	case [2]string{"X-API-Key", fuzzKeyA}:
		return fuzzProjectA
	case [2]string{"Authorization", "Bearer " + fuzzKeyB}:
		return fuzzProjectB
	}
	return uuid.Nil
}

// expectStages models the stages before JSON: the answer they decide, if any, and the
// decompressed body otherwise.
func expectStages(r ingestRequest) (code httperr.Code, plain []byte, decided bool) {
	mt := strings.ToLower(strings.TrimSpace(strings.SplitN(r.contentType, ";", 2)[0]))
	if mt != "application/json" && (r.single || mt != "application/x-ndjson") {
		return httperr.UnsupportedMediaType, nil, true
	}
	if !r.single {
		switch r.header {
		case fuzzHeaders[3]:
			return httperr.InvalidAPIKey, nil, true
		case fuzzHeaders[4]:
			return httperr.Unavailable, nil, true
		}
	}
	limit := fuzzLimits.MaxBatchDecompressed
	if r.single {
		limit = fuzzLimits.MaxSingleDecompressed
	}
	var err error
	switch strings.ToLower(strings.TrimSpace(r.encoding)) {
	case "", "identity":
		plain = r.wire
	case "gzip", "x-gzip":
		plain, err = refGunzip(r.wire, limit)
	case "zstd":
		plain, err = refUnzstd(r.wire, limit)
	default:
		return httperr.UnsupportedEncoding, nil, true
	}
	switch {
	case errors.Is(err, errRefTooLarge) || len(plain) > limit:
		return httperr.PayloadTooLarge, nil, true
	case err != nil:
		return httperr.BadRequest, nil, true
	case len(plain) == 0:
		return httperr.InvalidJSON, nil, true
	}
	return "", plain, false
}

var errRefTooLarge = errors.New("reference: over the limit")

// zstdDecoders are the reference decoders by memory cap, reused.
var zstdDecoders = map[uint64]*zstd.Decoder{}

// refGunzip is the reference gunzip: the standard library's, member by member
// (multistream, like fasthttp's klauspost fork), reading at most limit+1 bytes. RFC
// 1952 requires an error for reserved FLG bits, which the standard library ignores, so
// the reference checks them itself.
func refGunzip(b []byte, limit int) ([]byte, error) {
	br := bytes.NewReader(b)
	var (
		zr  *gzip.Reader
		out []byte
	)
	for {
		pos := len(b) - br.Len() // gzip reads a bytes.Reader byte by byte: no read-ahead
		var err error
		if zr == nil {
			zr, err = gzip.NewReader(br)
		} else {
			err = zr.Reset(br)
			if errors.Is(err, io.EOF) && pos == len(b) {
				return out, nil // no further member
			}
		}
		if err != nil {
			return nil, err
		}
		if b[pos+3]&0xe0 != 0 {
			return nil, errors.New("reference: reserved gzip flag bits set")
		}
		zr.Multistream(false)
		member, err := io.ReadAll(io.LimitReader(zr, int64(limit+1-len(out))))
		out = append(out, member...)
		if len(out) > limit {
			return nil, errRefTooLarge
		}
		if err != nil {
			return nil, err
		}
	}
}

// refUnzstd decodes with the decoder memory cap fasthttp documents for
// BodyUnzstdWithLimit: the limit rounded up to 8 MiB; a stream that needs a larger
// window or declares a larger content size counts as too large.
func refUnzstd(b []byte, limit int) ([]byte, error) {
	const bucket = 8 << 20
	maxMem := uint64((max(limit, zstd.MinWindowSize) + bucket - 1) / bucket * bucket)
	zr := zstdDecoders[maxMem]
	if zr == nil {
		var err error
		if zr, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxMem)); err != nil {
			return nil, err
		}
		zstdDecoders[maxMem] = zr
	}
	if err := zr.Reset(bytes.NewReader(b)); err != nil {
		return nil, err
	}
	defer func() { _ = zr.Reset(nil) }()
	out, err := io.ReadAll(io.LimitReader(zr, int64(limit)+1))
	switch {
	case errors.Is(err, zstd.ErrWindowSizeExceeded), errors.Is(err, zstd.ErrDecoderSizeExceeded), err == nil && len(out) > limit:
		return nil, errRefTooLarge
	case err != nil:
		return nil, err
	}
	return out, nil
}

// countEvents counts the events of a batch body the way docs/api.md defines them: NDJSON
// lines that are not blank, or the elements of the top-level array (or of "events").
func countEvents(contentType string, plain []byte) (int, bool) {
	if strings.Contains(contentType, "ndjson") {
		n := 0
		for line := range bytes.SplitSeq(plain, []byte("\n")) {
			if len(bytes.TrimSpace(line)) > 0 {
				n++
			}
		}
		return n, true
	}
	var arr []json.RawMessage
	if json.Unmarshal(plain, &arr) == nil {
		return len(arr), true
	}
	return 0, false
}

// normalize renders an answer without the parts that legitimately differ between two
// requests: generated event ids.
func normalize(res ingestResult) string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(res.status))
	b.WriteString(maskIDs(string(res.body)))
	for _, m := range res.acked {
		b.WriteString("\n" + maskIDs(string(m.Value)))
	}
	return b.String()
}

func maskIDs(s string) string {
	var out strings.Builder
	for {
		i := strings.Index(s, `"id":"`)
		if i < 0 || len(s) < i+6+36 {
			out.WriteString(s)
			return out.String()
		}
		out.WriteString(s[:i+6])
		out.WriteString("<id>")
		s = s[i+6+36:]
	}
}

func trunc(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "…"
	}
	return string(b)
}

type ingestSeed struct {
	mode   uint16
	repeat uint8
	body   string
}

func ingestSeeds() []ingestSeed {
	const (
		batch, single        = 0, 1
		ctJSON, ctNDJSON     = 0 << 1, 1 << 1
		ctCharset, ctText    = 2 << 1, 3 << 1
		encGzip, encZstd     = 2 << 3, 3 << 3
		rawGzip, rawZstd     = 4 << 3, 5 << 3
		encDeflate, encXGzip = 6 << 3, 7 << 3
		keyA, keyB, keyBad   = 1 << 6, 2 << 6, 3 << 6
		keyDown, keyBasic    = 4 << 6, 5 << 6
		prodFail             = 1 << 9
	)
	ev := `{"type":"error","name":"TypeError","payload":{"message":"boom","n":[1,2.5e3,null]}}`
	evKey := `{"apiKey":"` + fuzzKeyA + `","type":"event","name":"signup","payload":{},"context":{"ua":"x"},"timestamp":"2026-01-15T10:20:30.5+02:00"}`
	gz := gzipBytes([]byte(`[` + ev + `]`))
	bomb := gzipBytes(bytes.Repeat([]byte(" "), 1<<20))
	zs := zstdEncoder.EncodeAll([]byte(`{"events":[`+ev+`]}`), nil)
	return []ingestSeed{
		{batch | ctJSON | keyA, 0, `[` + ev + `,` + ev + `]`},
		{batch | ctJSON | keyB, 0, `{"events":[` + ev + `,{"type":"nope"}]}`},
		{batch | ctNDJSON | keyA, 3, ev + "\n"},
		{batch | ctNDJSON, 0, evKey + "\n{\"apiKey\":\"" + fuzzKeyB + "\"}\n\n" + ev + "\nnot json\n"},
		{batch | ctCharset | encGzip | keyA, 0, `[` + ev + `]`},
		{batch | ctJSON | encZstd | keyB, 0, `{"events":[` + ev + `]}`},
		{batch | ctNDJSON | encGzip | keyA, 20, ev + "\n"},
		{batch | ctJSON | rawGzip | keyA, 0, string(gz)},
		{batch | ctJSON | rawGzip | keyA, 0, string(bomb)},
		{batch | ctJSON | rawZstd | keyA, 0, string(zs)},
		{batch | ctJSON | encDeflate | keyA, 0, `[` + ev + `]`},
		{batch | ctJSON | encXGzip | keyA, 0, `[` + ev + `]`},
		{batch | ctJSON | keyBad, 0, `[` + ev + `]`},
		{batch | ctJSON | keyDown, 0, `[` + ev + `]`},
		{batch | ctJSON | keyBasic, 0, `[` + evKey + `]`},
		{batch | ctJSON | keyA | prodFail, 0, `[` + ev + `]`},
		{batch | ctText | keyA, 0, `[` + ev + `]`},
		{batch | ctJSON | keyA, 0, `[]`},
		{batch | ctJSON | keyA, 0, ``},
		{batch | ctJSON | encGzip | keyA, 255, `[` + strings.Repeat(ev+",", 3) + ev + `]`},
		{single | ctJSON, 0, evKey},
		{single | ctCharset | encGzip, 0, evKey},
		{single | ctJSON | encZstd, 0, `{"apiKey":"` + fuzzKeyB + `","type":"metric","name":"\u0000\ud800","payload":{"\udc00":"x\xff"}}`},
		{single | ctJSON, 0, `{"apiKey":"` + fuzzKeyA + `","type":"event","name":"n","payload":{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}`},
		{single | ctJSON | prodFail, 0, evKey},
		{single | ctNDJSON, 0, evKey},
		// Duplicate keys (refused), numbers that are no doubles (refused) and numbers that
		// grow once stored (refused past the per-event limit).
		{single | ctJSON, 0, `{"apiKey":"` + fuzzKeyA + `","type":"event","name":"n","payload":{"a":1,"a":2}}`},
		{batch | ctJSON | keyA, 0, `[` + ev + `,{"type":"event","type":"error","name":"n","payload":{}}]`},
		{batch | ctNDJSON | keyA, 0, ev + "\n" + `{"type":"event","name":"n","payload":{"x":{"k":1,"k":1}}}` + "\n"},
		{batch | ctJSON | keyA, 0, `[{"type":"event","name":"n","payload":{"a":1e1000,"b":-1e400,"c":1e-400,"d":1e308}}]`},
		{batch | ctJSON | keyA, 0, `[{"type":"event","name":"n","payload":{"a":[` + strings.Repeat("1e308,", 8) + `1e308]}},` + ev + `]`},
	}
}
