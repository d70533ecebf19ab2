package chaos_test

// R16: SSE replays that are never read (issue 16 item 2). 10 users × 20 SSE streams
// reconnect with an old Last-Event-ID into projects of 120 events of ~60 KiB each (7 MiB
// per project: a replay that collected its rows would hold 7 MiB per stream, 1.4 GB for
// the 200) and never read.

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pulseboard/pulseboard/chaos/harness"
)

const (
	r16Users          = 10
	r16StreamsPerUser = 20
	r16Events         = 120      // per project
	r16EventBytes     = 60 << 10 // payload padding per event
	r16ReplayTimeout  = 10 * time.Second
	// The api's replay caps in this scenario (LIVE_REPLAY_CONCURRENCY and
	// LIVE_REPLAY_MAX_BYTES at their defaults).
	r16Concurrency = 4
	r16MaxBytes    = 4 << 20
	// r16PerStreamBytes and r16Headroom as F17's f17PerConnBytes and f17Headroom: what an
	// open idle stream costs, and the garbage collector's and runtime's slack.
	r16PerStreamBytes = 96 << 10
	r16Headroom       = 64 << 20
)

// TestR16UnreadReplaysBoundedMemory: the api's peak RSS under 200 unread replays stays
// below its idle peak + LIVE_REPLAY_CONCURRENCY × LIVE_REPLAY_MAX_BYTES × 2 + 200 idle
// streams + headroom, and the api answers other requests meanwhile (a query and
// GET /me, each within 10 s, throughout). Also checked: at most LIVE_REPLAY_CONCURRENCY
// replays ran at once; every other stream was sent a resync (reason replay_busy) and
// stayed open; the replays that ran were cut off by LIVE_REPLAY_TIMEOUT (their streams
// closed as write_timeout), releasing their slots.
//
// CHAOS_R16_UNCAPPED=1 runs the same with the caps lifted (concurrency, per-user and
// bytes at their maximums, the deadline at 10 minutes) and reports the figures without
// the checks: what the caps protect. With CHAOS_BIN_API naming an api built from the
// code before issue 16 item 2 (replays collected in memory), it measures that code.
func TestR16UnreadReplaysBoundedMemory(t *testing.T) {
	t.Parallel()
	uncapped := os.Getenv("CHAOS_R16_UNCAPPED") == "1"
	c := harness.NewCluster(t, harness.Options{Projects: r16Users})
	env := []string{"API_BCRYPT_COST=4",
		"LIVE_MAX_CONNS_PER_USER=" + strconv.Itoa(r16StreamsPerUser+5),
		"LIVE_REPLAY_TIMEOUT=" + r16ReplayTimeout.String(),
		"LIVE_REPLAY_CONCURRENCY=" + strconv.Itoa(r16Concurrency),
		"LIVE_REPLAY_MAX_BYTES=" + strconv.Itoa(r16MaxBytes)}
	if uncapped {
		env = append(env, "LIVE_REPLAY_CONCURRENCY=1024", "LIVE_REPLAY_PER_USER=1024",
			"LIVE_REPLAY_MAX_BYTES=1073741824", "LIVE_REPLAY_TIMEOUT=10m")
	}
	api := c.StartAPI(env...)
	name := fmt.Sprintf("%d users × %d SSE replays of %d × 60 KiB events, never read", r16Users, r16StreamsPerUser, r16Events)
	if uncapped {
		name += " (caps lifted)"
	}
	s := harness.NewScenario(t, c, "R16", name)

	users := make([]harness.APIUser, r16Users)
	for i := range users {
		users[i] = harness.RegisterUser(t, api.URL)
		c.GiveProject(t, c.Projects[i], users[i].ID)
	}
	// The events, stored as the consumer stores them (the row, its dedup-gate row, its
	// rollup), received 20 minutes ago, one millisecond apart: within the replay window.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	base := time.Now().UTC().Add(-20 * time.Minute).Truncate(time.Millisecond)
	for _, p := range c.Projects {
		_, err := c.Pool.Exec(ctx, `
			WITH ins AS (
				INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at)
				SELECT gen_random_uuid(), $1, 'event', 'r16', jsonb_build_object('i', i, 'pad', repeat('x', $3)),
					$4::timestamptz + i * interval '1 millisecond', $4::timestamptz + i * interval '1 millisecond'
				FROM generate_series(1, $2) i
				RETURNING id, received_at),
			ids AS (INSERT INTO event_ids (project_id, id, received_at) SELECT $1, id, received_at FROM ins)
			INSERT INTO event_rollups (project_id, minute, type, count)
			SELECT $1, date_trunc('minute', received_at), 'event', count(*) FROM ins GROUP BY 2
			ON CONFLICT (project_id, minute, type) DO UPDATE SET count = event_rollups.count + EXCLUDED.count`,
			p.ID, r16Events, r16EventBytes, base)
		if err != nil {
			t.Fatalf("storing the events: %v", err)
		}
	}
	// A Last-Event-ID before all of them: (base - 1 min, the nil id).
	var raw [24]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(base.Add(-time.Minute).UnixMicro()))
	lastEventID := base64.RawURLEncoding.EncodeToString(raw[:])

	time.Sleep(time.Second)
	idlePeak := api.Stats().PeakRSSBytes

	// The api must answer meanwhile: a query (which needs a Postgres connection, which
	// replays also hold) and GET /me, every 500 ms, each within 10 s.
	stopProbe := make(chan struct{})
	probeDone := make(chan struct{})
	var probeMu sync.Mutex
	var probes, probeFailures int
	var slowest time.Duration
	go func() {
		defer close(probeDone)
		hc := &http.Client{Timeout: 10 * time.Second}
		for {
			for _, path := range []string{"/projects/" + c.Projects[0].ID.String() + "/events?limit=1", "/me"} {
				req, _ := http.NewRequest(http.MethodGet, api.URL+path, nil)
				req.Header.Set("Authorization", "Bearer "+users[0].Token)
				start := time.Now()
				resp, err := hc.Do(req)
				took := time.Since(start)
				probeMu.Lock()
				probes++
				slowest = max(slowest, took)
				if err != nil || resp.StatusCode != http.StatusOK {
					probeFailures++
					t.Logf("probe %s: %v %v", path, err, resp)
				}
				probeMu.Unlock()
				if resp != nil {
					resp.Body.Close()
				}
			}
			select {
			case <-stopProbe:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()

	// 200 streams, 10 users at a time.
	opened := time.Now()
	conns := make([]net.Conn, 0, r16Users*r16StreamsPerUser)
	var connMu sync.Mutex
	var wg sync.WaitGroup
	var dialErrs []error
	for range r16StreamsPerUser {
		for u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := harness.DialStalledSSE(api.URL, c.Projects[u].ID, users[u].Token, lastEventID)
				connMu.Lock()
				defer connMu.Unlock()
				if err != nil {
					dialErrs = append(dialErrs, err)
					return
				}
				conns = append(conns, conn)
			}()
		}
		wg.Wait()
	}
	t.Cleanup(func() {
		for _, conn := range conns {
			_ = conn.Close()
		}
	})
	if len(dialErrs) > 0 {
		s.Note("streams refused", "%d, the first: %.200v", len(dialErrs), dialErrs[0])
		if !uncapped {
			t.Fatalf("opening the streams: %d failed, the first: %v", len(dialErrs), dialErrs[0])
		}
	}
	gauge := `pulseboard_api_live_connections{transport="sse"}`
	total := float64(r16Users * r16StreamsPerUser)
	if uncapped {
		total = float64(len(conns))
	}
	if !waitMetric(api, gauge, func(v float64) bool { return v == total }, time.Minute) && !uncapped {
		v, _ := api.Metric(gauge)
		s.Fail("%s is %v, want %v", gauge, v, total)
	}

	// Hold them until every replay has passed its deadline (or, capped, until the
	// running ones were cut off and the slots are free).
	running := `pulseboard_api_live_replays_running`
	maxRunning := 0.0
	deadline := time.Now().Add(r16ReplayTimeout + time.Minute)
	if uncapped {
		deadline = time.Now().Add(45 * time.Second) // the figure, not the end
	}
	for time.Now().Before(deadline) {
		v, _ := api.Metric(running)
		maxRunning = max(maxRunning, v)
		if v == 0 && time.Since(opened) > r16ReplayTimeout+2*time.Second {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	close(stopProbe)
	<-probeDone

	busy, _ := api.Metric(`pulseboard_api_live_resyncs_sent_total{reason="replay_busy",transport="sse"}`)
	cut, _ := api.Metric(`pulseboard_api_live_slow_clients_closed_total{reason="write_timeout",transport="sse"}`)
	open, _ := api.Metric(gauge)
	replayed, _ := api.Metric(`pulseboard_api_live_replayed_events_total`)
	s.Note("replays", "at most %.0f at once (sampled); %.0f streams sent resync replay_busy; %.0f cut off by the deadline; %.0f events replayed; %.0f streams still open",
		maxRunning, busy, cut, replayed, open)
	probeMu.Lock()
	s.Note("other requests during the replays", "%d probes, %d failed, slowest %s", probes, probeFailures, slowest.Round(time.Millisecond))
	if probeFailures > 0 {
		s.Fail("%d of %d requests to the api failed or took more than 10 s during the replays", probeFailures, probes)
	}
	probeMu.Unlock()

	peak := api.Stats().PeakRSSBytes
	bound := idlePeak + int64(r16Concurrency)*r16MaxBytes*2 + int64(total)*r16PerStreamBytes + r16Headroom
	s.Note("api peak RSS", "%d MiB (idle %d MiB, bound %d MiB)", peak>>20, idlePeak>>20, bound>>20)
	t.Logf("api peak RSS %d MiB (idle %d MiB, bound %d MiB)", peak>>20, idlePeak>>20, bound>>20)
	if !uncapped {
		if maxRunning > r16Concurrency {
			s.Fail("%.0f replays ran at once, more than LIVE_REPLAY_CONCURRENCY=%d", maxRunning, r16Concurrency)
		}
		if v, _ := api.Metric(running); v != 0 {
			s.Fail("%.0f replays still running %s after their deadline", v, time.Since(opened)-r16ReplayTimeout)
		}
		if busy+cut < total {
			s.Fail("%.0f streams were refused a slot and %.0f cut off, want all %.0f to be one or the other", busy, cut, total)
		}
		if open != total-cut {
			s.Fail("%.0f streams open, want the %.0f that were not cut off", open, total-cut)
		}
		if peak > bound {
			s.Fail("api peak RSS %d MiB exceeds the bound %d MiB", peak>>20, bound>>20)
		}
	}
	for _, conn := range conns {
		_ = conn.Close()
	}
	s.Verify(time.Minute)
}
