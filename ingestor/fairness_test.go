package ingestor_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
)

// Byte limits of TestByteRateLimit: 8 KiB/s per project, so a refused batch would need
// 17 s of refill to fit (no slow machine turns a refusal the test expects into a 202), and
// a bucket of one maximal request (256 KiB decompressed, more than two seconds' worth).
const (
	testByteRate  = 8 << 10
	testByteBurst = 256 << 10
)

// bigEvents returns n events (without apiKey, or with key) of about size bytes each.
func bigEvents(n, size int, key string) []map[string]any {
	evs := make([]map[string]any, n)
	for i := range evs {
		evs[i] = map[string]any{"type": "event", "name": "big", "payload": map[string]any{"i": i, "pad": strings.Repeat("x", size)}}
		if key != "" {
			evs[i]["apiKey"] = key
		}
	}
	return evs
}

func headerInt(tb testing.TB, r response, name string) int {
	tb.Helper()
	v, err := strconv.Atoi(r.header.Get(name))
	require.NoError(tb, err, "%s: %q", name, r.header.Get(name))
	return v
}

// TestByteRateLimit (issue 16 item 4): a project sending large events is refused on
// decompressed bytes while its event count is far under its event limit, with 429
// RATE_LIMITED, Retry-After and the RateLimit headers of the bytes bucket; a gzip body is
// charged its decompressed size, not its size on the wire; on every route (header key,
// events' own keys, single events); refused events are not produced; another project's
// requests pass meanwhile; the refusals are counted by reason.
func TestByteRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *ingestor.Config) {
		c.RateLimitBytes = testByteRate
		c.MaxBodyBytes, c.MaxDecompressedBytes = 32<<10, testByteBurst
	}))
	flood := b.newProject(t, "flood")
	raw := mustJSON(t, bigEvents(12, 16<<10, "")) // 12 events, ~197 KiB decompressed
	gz := gzipBytes(t, raw)
	require.Less(t, len(gz), 4<<10, "tiny on the wire")
	floodHdr := hdr{"X-API-Key": flood.APIKey, "Content-Encoding": "gzip"}

	// The first batch fits the idle bucket, and is charged its decompressed size: the
	// bucket held testByteBurst and now holds less than that minus the body (plus what
	// refilled meanwhile), far below what the wire size would leave.
	t0 := time.Now()
	res := b.post(t, "/ingest/batch", gz, floodHdr)
	refill := int(time.Since(t0).Seconds()*testByteRate) + 1
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	require.Equal(t, testByteRate, headerInt(t, res, "RateLimit-Limit"), "the bytes bucket is the one closest to exhaustion")
	remaining := headerInt(t, res, "RateLimit-Remaining")
	require.LessOrEqual(t, remaining, testByteBurst-len(raw)+refill, "charged the decompressed body")
	require.Positive(t, headerInt(t, res, "RateLimit-Reset"))

	// The second is refused on bytes: 24 events are nothing to the 5000/s event limit.
	res = b.post(t, "/ingest/batch", gz, floodHdr)
	requireJSONError(t, res, http.StatusTooManyRequests, "RATE_LIMITED")
	require.Contains(t, res.env.Message, "bytes")
	requireByteHeaders(t, res, len(raw))
	require.Greater(t, headerInt(t, res, "RateLimit-Remaining"), len(gz), "the wire size would have fitted")

	// Another project is unaffected: the same body passes (its own bucket), and its
	// requests keep passing interleaved with the first project's refusals.
	res = b.post(t, "/ingest/batch", gz, hdr{"X-API-Key": b.project.APIKey, "Content-Encoding": "gzip"})
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	for range 2 {
		res = b.ingest(t, validEvent(b.project.APIKey))
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
		res = b.post(t, "/ingest/batch", gz, floodHdr)
		requireJSONError(t, res, http.StatusTooManyRequests, "RATE_LIMITED")
	}

	// Keys in the events (charged after parsing, the body shared by the projects of the
	// batch) and the single-event route are limited alike.
	res = b.post(t, "/ingest/batch", gzipBytes(t, mustJSON(t, bigEvents(12, 16<<10, flood.APIKey))), hdr{"Content-Encoding": "gzip"})
	requireJSONError(t, res, http.StatusTooManyRequests, "RATE_LIMITED")
	requireByteHeaders(t, res, len(raw))
	mixed := append(bigEvents(11, 16<<10, flood.APIKey), validEvent(b.project.APIKey))
	res = b.post(t, "/ingest/batch", gzipBytes(t, mustJSON(t, mixed)), hdr{"Content-Encoding": "gzip"})
	requireJSONError(t, res, http.StatusTooManyRequests, "RATE_LIMITED")
	single := validEvent(flood.APIKey)
	single["payload"] = map[string]any{"pad": strings.Repeat("x", 30<<10)}
	body := mustJSON(t, single)
	for range testByteBurst / len(body) { // the first ones may fit what is left, never more than a bucket
		res = b.post(t, "/ingest", gzipBytes(t, body), hdr{"Content-Encoding": "gzip"})
		if res.status != http.StatusAccepted {
			break
		}
	}
	requireJSONError(t, res, http.StatusTooManyRequests, "RATE_LIMITED")
	requireByteHeaders(t, res, len(body))

	require.Zero(t, metricValue(t, b.reg, "pulseboard_ingest_rate_limited_requests_total", "reason", "events"))
	require.Equal(t, 6.0, metricValue(t, b.reg, "pulseboard_ingest_rate_limited_requests_total", "reason", "bytes"))
	accepted := metricValue(t, b.reg, "pulseboard_ingest_events_accepted_total")
	require.EqualValues(t, accepted, b.produced(t), "refused events are not produced")
	require.GreaterOrEqual(t, accepted, 12.0+12+2)
}

// requireByteHeaders checks a refusal on bytes of a request charged size bytes: the
// headers describe the bytes bucket, consistently.
func requireByteHeaders(tb testing.TB, res response, size int) {
	tb.Helper()
	require.Equal(tb, testByteRate, headerInt(tb, res, "RateLimit-Limit"), "the bytes bucket's rate")
	remaining := headerInt(tb, res, "RateLimit-Remaining")
	require.Less(tb, remaining, size, "the request did not fit")
	retry := headerInt(tb, res, "Retry-After")
	missing := float64(size-remaining) / testByteRate
	require.GreaterOrEqual(tb, float64(retry), missing-1, "Retry-After covers the missing bytes")
	require.LessOrEqual(tb, float64(retry), missing+1)
	reset := headerInt(tb, res, "RateLimit-Reset")
	full := float64(testByteBurst-remaining) / testByteRate
	require.InDelta(tb, full, float64(reset), 1.01, "RateLimit-Reset is when the bucket is full")
	require.Contains(tb, res.env.Message, "bytes")
}

// TestBigBodyIsPacedWhileANeighbourPasses (issue 16 item 4): a rate-limited project's big
// body is written to Kafka at its pace (3 × its byte limit), not at once: its 202 comes
// no sooner than the pace allows, another project's single event sent meanwhile is
// acknowledged first, and every event of the body is in Kafka once, in order.
func TestBigBodyIsPacedWhileANeighbourPasses(t *testing.T) {
	t.Parallel()
	const byteRate = 2 << 20 // paced at 6 MiB/s (the floor is 10 MiB in 2 s: 5 MiB/s)
	b := setup(t, withConfig(func(c *ingestor.Config) { c.RateLimitBytes = byteRate }))
	flood := b.newProject(t, "flood")
	raw := mustJSON(t, bigEvents(96, 32<<10, "")) // about 3 MiB
	pace := 3.0 * byteRate

	type answer struct {
		res  response
		took time.Duration
	}
	done := make(chan answer, 1)
	start := time.Now()
	go func() {
		res := b.post(t, "/ingest/batch", gzipBytes(t, raw), hdr{"X-API-Key": flood.APIKey, "Content-Encoding": "gzip"})
		done <- answer{res, time.Since(start)}
	}()
	require.Eventually(t, func() bool {
		return metricValue(t, b.reg, "pulseboard_ingest_inflight_bytes") > 0
	}, 10*time.Second, time.Millisecond, "the body reached the producer")
	res := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	select {
	case a := <-done:
		t.Fatalf("the big body was acknowledged (%d after %v) before the neighbour's event", a.res.status, a.took)
	default:
	}
	a := <-done
	require.Equal(t, http.StatusAccepted, a.res.status, "body: %s", a.res.body)
	// Its last 256 KiB batch may go at once; everything before it waits for the pace.
	require.GreaterOrEqual(t, a.took, time.Duration(float64(len(raw)-(320<<10))/pace*float64(time.Second)), "not paced")

	var seen []int
	neighbour := 0
	for _, m := range b.readTopic(t) {
		var ev struct {
			ProjectID string `json:"projectId"`
			Payload   struct {
				I int `json:"i"`
			} `json:"payload"`
		}
		require.NoError(t, json.Unmarshal(m.Value, &ev))
		switch ev.ProjectID {
		case flood.ID.String():
			seen = append(seen, ev.Payload.I)
		case b.project.ID.String():
			neighbour++
		}
	}
	require.Equal(t, 1, neighbour)
	require.Len(t, seen, 96)
	for i, v := range seen {
		require.Equal(t, i, v, "the body's events in order, once each")
	}
}
