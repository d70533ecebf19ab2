package intake

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

func gzipOf(t *testing.T, parts ...[]byte) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, p := range parts { // one member each
		zw := gzip.NewWriter(&out)
		if _, err := zw.Write(p); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

func declared(encoding string, body []byte) int {
	var req fasthttp.Request
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	req.SetBody(body)
	return declaredSize(&req)
}

// declaredSize never exceeds the decompressed size of a valid body, and is exact for the
// usual bodies (one gzip member, zstd frames that carry their content size).
func TestDeclaredSize(t *testing.T) {
	t.Parallel()
	plain := []byte(strings.Repeat(`{"type":"event","name":"n","payload":{}},`, 5000))
	if got := declared("", plain); got != len(plain) {
		t.Fatalf("identity: %d, want %d", got, len(plain))
	}
	if got := declared(" IDENTITY ", plain); got != len(plain) {
		t.Fatalf("identity: %d, want %d", got, len(plain))
	}
	if got := declared("gzip", gzipOf(t, plain)); got != len(plain) {
		t.Fatalf("gzip: %d, want %d", got, len(plain))
	}
	if got := declared("x-gzip", gzipOf(t, plain[:100], plain[100:150])); got != 50 {
		t.Fatalf("two gzip members: %d, want the last one's 50", got)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	if got := declared("zstd", enc.EncodeAll(plain, nil)); got != len(plain) {
		t.Fatalf("zstd with its content size: %d, want %d", got, len(plain))
	}
	var stream bytes.Buffer
	zw, _ := zstd.NewWriter(&stream, zstd.WithEncoderConcurrency(1))
	_, _ = zw.Write(plain)
	_ = zw.Close()
	if got := declared("zstd", stream.Bytes()); got > len(plain) {
		t.Fatalf("zstd stream: %d, more than %d", got, len(plain))
	}
	for _, c := range []struct{ enc, body string }{{"gzip", "short"}, {"gzip", strings.Repeat("not gzip", 10)}, {"zstd", "not zstd"}, {"br", "whatever"}} {
		if got := declared(c.enc, []byte(c.body)); got != 0 {
			t.Fatalf("%s %q: %d, want 0 (unknown)", c.enc, c.body, got)
		}
	}
}

// limitedKeys resolves every key to project A with the service defaults.
type limitedKeys struct{}

func (limitedKeys) Resolve(context.Context, string) (pgstore.KeyProject, error) {
	return pgstore.KeyProject{ID: fuzzProjectA}, nil
}

func postBatch(h *Handler, encoding string, body []byte) (int, string) {
	var req fasthttp.Request
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("/ingest/batch")
	req.Header.SetContentType("application/json")
	req.Header.Set("X-API-Key", fuzzKeyA)
	req.Header.Set("Content-Encoding", encoding)
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 40000}, nil)
	h.ServeFastHTTP(&ctx)
	return ctx.Response.StatusCode(), string(ctx.Response.Header.Peek("RateLimit-Remaining"))
}

// A header-key batch whose bucket cannot hold the size its gzip trailer declares is refused
// before it is decompressed (a body that would not even decompress gets 429, not 400); a
// false trailer gains nothing: the body fails its checksum once decompressed.
func TestBytesRefusedBeforeDecompression(t *testing.T) {
	t.Parallel()
	prod := &fuzzProducer{}
	lim := ratelimit.New(0, 1)
	lim.SetBytes(1, fuzzLimits.MaxBatchDecompressed) // 1 byte/s: no refill to speak of
	h := New(fuzzLimits, limitedKeys{}, prod, lim, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	h.now = func() time.Time { return fuzzNow }

	batch := []byte(`[` + strings.TrimSuffix(strings.Repeat(`{"type":"event","name":"n","payload":{"pad":"`+strings.Repeat("x", 1500)+`"}},`, 12), ",") + `]`)
	gz := gzipOf(t, batch)
	if status, _ := postBatch(h, "gzip", gz); status != fasthttp.StatusAccepted {
		t.Fatalf("first batch: %d", status)
	}
	left := fuzzLimits.MaxBatchDecompressed - len(batch)
	if left >= len(batch) {
		t.Fatalf("the test needs a second batch not to fit: %d left", left)
	}
	// Corrupt deflate data with a trailer declaring the batch's size: refused on the
	// trailer, before decompression would have found it corrupt.
	corrupt := append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, bytes.Repeat([]byte{0xff}, 16)...)
	corrupt = binary.LittleEndian.AppendUint32(corrupt, 0)
	corrupt = binary.LittleEndian.AppendUint32(corrupt, uint32(len(batch)))
	status, remaining := postBatch(h, "gzip", corrupt)
	if status != fasthttp.StatusTooManyRequests {
		t.Fatalf("corrupt body declaring %d bytes: %d, want 429 before decompression", len(batch), status)
	}
	if remaining != strconv.Itoa(left) {
		t.Fatalf("RateLimit-Remaining %q, want the bytes bucket's %d", remaining, left)
	}
	// The same with a trailer declaring 10 bytes passes the first check and fails to
	// decompress.
	binary.LittleEndian.PutUint32(corrupt[len(corrupt)-4:], 10)
	if status, _ := postBatch(h, "gzip", corrupt); status != fasthttp.StatusBadRequest {
		t.Fatalf("corrupt body declaring 10 bytes: %d, want 400", status)
	}
	// A real batch with a false small trailer is not accepted either.
	forged := bytes.Clone(gz)
	binary.LittleEndian.PutUint32(forged[len(forged)-4:], 10)
	if status, _ := postBatch(h, "gzip", forged); status == fasthttp.StatusAccepted {
		t.Fatal("a batch with a forged trailer was accepted past the byte limit")
	}
	// Nothing but the first batch was produced.
	if status, _ := postBatch(h, "gzip", gz); status != fasthttp.StatusTooManyRequests {
		t.Fatalf("the second real batch: %d", status)
	}
}
