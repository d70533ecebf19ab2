package intake

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/keycache"
	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// pacedProjects resolves keys "pb_live_rate_<n>" to a project whose events/s setting is
// n (0 = unlimited) and "pb_live_default…" to one with the default limits.
type pacedProjects struct{}

func (pacedProjects) Resolve(_ context.Context, key string) (pgstore.KeyProject, error) {
	p := pgstore.KeyProject{ID: uuid.NewSHA1(uuid.NameSpaceURL, []byte(key))}
	switch {
	case strings.HasPrefix(key, "pb_live_default"):
		return p, nil
	case strings.HasPrefix(key, "pb_live_rate_"):
		var n int
		if _, err := fmt.Sscanf(key, "pb_live_rate_%d", &n); err != nil {
			return p, err
		}
		p.RateLimit = &n
		return p, nil
	}
	return p, keycache.ErrUnknownKey
}

// paceRecorder records the pace of every call; while hold is open it blocks the calls,
// as a broker that has not answered yet.
type paceRecorder struct {
	mu      sync.Mutex
	paces   []float64
	hold    chan struct{}
	arrived chan struct{}
}

func (r *paceRecorder) ProducePaced(_ context.Context, _ []kafka.Message, free func(), pace float64) error {
	r.mu.Lock()
	r.paces = append(r.paces, pace)
	r.mu.Unlock()
	if r.arrived != nil {
		r.arrived <- struct{}{}
	}
	if r.hold != nil {
		<-r.hold
	}
	if free != nil {
		free()
	}
	return nil
}

func (r *paceRecorder) last() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paces[len(r.paces)-1]
}

// pacingHandler is a handler with the default limits: 5,000 events/s and 8 MiB/s per
// project.
func pacingHandler(prod Producer) *Handler {
	l := DefaultLimits()
	limiter := ratelimit.New(5000, l.MaxBatchEvents)
	limiter.SetBytes(8<<20, max(l.MaxBodyBytes, l.MaxBatchDecompressed))
	return New(l, pacedProjects{}, prod, limiter, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
}

// serveIngest posts body to path, with key as X-API-Key when it is not empty.
func serveIngest(h *Handler, path, key string, body []byte) int {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(fasthttp.MethodPost)
	ctx.Request.SetRequestURI(path)
	ctx.Request.Header.SetContentType("application/json")
	if key != "" {
		ctx.Request.Header.Set("X-API-Key", key)
	}
	ctx.Request.SetBody(body)
	h.ServeFastHTTP(&ctx)
	return ctx.Response.StatusCode()
}

// A batch of one project goes to the producer with that project's pace: three times its byte
// limit, at least a maximal body in two seconds; none for an unlimited project, for a
// single event, or for a batch of several projects (issue 16 item 4; producer/pace.go).
func TestBatchesArePacedAtThriceTheirProjectsByteLimit(t *testing.T) {
	t.Parallel()
	rec := &paceRecorder{}
	h := pacingHandler(rec)
	const mib = 1 << 20
	floor := float64(10*mib) / paceFloor.Seconds()
	for _, c := range []struct {
		name, key string
		want      float64
	}{
		{"default limits", "pb_live_default_a", 3 * 8 * mib},
		{"ten times the default events", "pb_live_rate_50000", 3 * 80 * mib},
		{"a tenth of the default: the floor", "pb_live_rate_500", floor},
		{"unlimited", "pb_live_rate_0", 0},
	} {
		if code := serveIngest(h, "/ingest/batch", c.key, batchBody("p", 3)); code != fasthttp.StatusAccepted {
			t.Fatalf("%s: status %d", c.name, code)
		}
		if got := rec.last(); got != c.want {
			t.Fatalf("%s: pace %v, want %v", c.name, got, c.want)
		}
	}

	// Without a header key, each event's own key decides: one project is paced…
	own := func(keys ...string) []byte {
		var evs []string
		for _, k := range keys {
			evs = append(evs, fmt.Sprintf(`{"type":"event","name":"n","payload":{},"apiKey":%q}`, k))
		}
		return []byte("[" + strings.Join(evs, ",") + "]")
	}
	if code := serveIngest(h, "/ingest/batch", "", own("pb_live_default_a", "pb_live_default_a")); code != fasthttp.StatusAccepted {
		t.Fatalf("own keys: status %d", code)
	}
	if got := rec.last(); got != 3*8*mib {
		t.Fatalf("one project's own keys: pace %v", got)
	}
	// … several are not.
	if code := serveIngest(h, "/ingest/batch", "", own("pb_live_default_a", "pb_live_default_b")); code != fasthttp.StatusAccepted {
		t.Fatalf("two projects: status %d", code)
	}
	if got := rec.last(); got != 0 {
		t.Fatalf("two projects' events: pace %v, want none", got)
	}
	if code := serveIngest(h, "/ingest", "", []byte(`{"apiKey":"pb_live_default_a","type":"event","name":"n","payload":{}}`)); code != fasthttp.StatusAccepted {
		t.Fatalf("single: status %d", code)
	}
	if got := rec.last(); got != 0 {
		t.Fatalf("a single event: pace %v, want none", got)
	}
}

// bigBody is a batch of about 2 MiB: past bulkBodyBytes.
func bigBody(tag string) []byte {
	var evs []string
	for i := range 64 {
		evs = append(evs, fmt.Sprintf(`{"type":"event","name":"%s%d","payload":{"pad":%q}}`, tag, i, strings.Repeat("x", 32<<10)))
	}
	return []byte("[" + strings.Join(evs, ",") + "]")
}

// The bulk lane bounds big bodies being decoded, never bodies waiting for the broker:
// more big requests than the lane has slots all reach the producer while it holds every
// one of them, and a slot is given back on every outcome (malformed, refused, accepted).
func TestBulkLaneIsNotHeldWhileWaitingForTheBroker(t *testing.T) {
	t.Parallel()
	rec := &paceRecorder{hold: make(chan struct{}), arrived: make(chan struct{}, 16)}
	h := pacingHandler(rec)
	n := cap(h.bulk) + 2
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for i := range n {
		wg.Go(func() {
			codes <- serveIngest(h, "/ingest/batch", fmt.Sprintf("pb_live_rate_%d", 100000+i), bigBody("b"))
		})
	}
	for i := range n {
		select {
		case <-rec.arrived:
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d big requests reached the producer: the bulk lane is held while they wait", i, n)
		}
	}
	close(rec.hold)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != fasthttp.StatusAccepted {
			t.Fatalf("status %d", code)
		}
	}

	broken := bigBody("c")
	broken[len(broken)-1] = ','
	for _, body := range [][]byte{broken, []byte("[" + strings.Repeat(`{"type":"event","name":"n","payload":{}},`, 40000) + "{}]")} {
		serveIngest(h, "/ingest/batch", "pb_live_default_z", body)
	}
	if got := len(h.bulk); got != 0 {
		t.Fatalf("%d slots of the bulk lane were not given back", got)
	}
}

// In the bulk lane a big body's decoding pauses every event.YieldBytes (about 2 MiB here:
// at least 8 pauses while scanning it and 8 while encoding its events), leaving the
// processor to the network meanwhile. Not parallel: it lengthens bulkPause to see it.
func TestBigBodiesPauseInTheBulkLane(t *testing.T) {
	defer func(p time.Duration) { bulkPause = p }(bulkPause)
	bulkPause = 20 * time.Millisecond
	h := pacingHandler(&paceRecorder{})
	body := bigBody("p")
	start := time.Now()
	if code := serveIngest(h, "/ingest/batch", "pb_live_default_p", body); code != fasthttp.StatusAccepted {
		t.Fatalf("status %d", code)
	}
	if d, want := time.Since(start), time.Duration(2*(len(body)/(256<<10)-1))*bulkPause; d < want {
		t.Fatalf("a %d-byte body took %v to decode: fewer pauses than %v", len(body), d, want)
	}
}
