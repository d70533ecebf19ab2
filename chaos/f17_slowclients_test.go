package chaos_test

// F17: 1,000 live WebSocket clients that never read, next to clients that do, while
// events are published (make chaos).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/chaos/harness"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

func TestF17StalledLiveClients(t *testing.T) {
	harness.Long(t, "F17", "1,000 live clients that never read")
	stalledLiveClients(t, 1000, 20)
}

// f17WriteTimeout is the api's LIVE_WRITE_TIMEOUT in this scenario (its default).
const f17WriteTimeout = 10 * time.Second

// f17PerConnBytes bounds what one open stream may cost the api in resident memory: two
// goroutines (stacks of 8–32 KiB), the upgraded connection and its read buffer, the
// frame reader, the client record and its queue, a ring of message pointers that grows
// on demand: a stalled client is closed about LIVE_WRITE_TIMEOUT (10 s) after it stops
// reading, so at 200 events/s it queues at most ~2,000 pointers (16 KiB). Event messages
// are built once and shared by every client, so at most one queue's worth of them
// (LIVE_QUEUE_BYTES, 8 MiB, by default) is alive whatever the number of clients; the
// kernel's socket buffers, where the unread bytes pile up, are not in the process's RSS.
// 96 KiB per stream is about twice that estimate; f17Headroom covers the shared messages
// and the garbage collector (GOGC=100 lets the heap grow to twice the live heap before
// collecting) plus the runtime's own slack.
//
// f17KernelPerConnBytes bounds the kernel memory queued for one client: a stalled
// client's unread bytes pile up in the server's socket send buffer, which the kernel
// autotunes up to net.ipv4.tcp_wmem's maximum (4 MiB) unless the server caps it. A live
// stream needs far less; 256 KiB per client keeps 1,000 stalled clients under 256 MiB
// of kernel memory (left alone they reach the host's TCP memory-pressure limit).
const (
	f17PerConnBytes       = 96 << 10
	f17Headroom           = 64 << 20
	f17KernelPerConnBytes = 256 << 10
)

// stalledLiveClients: readers WebSocket clients that read everything, and stalled ones
// that complete the upgrade and never read again (raw TCP, tiny receive buffer), all on
// one project, while events are published to its Redis channel at 200 per second (1 KiB
// each, each carrying its publish time). Checked:
//   - the api closes every stalled client (the connection gauge falls back to the
//     readers; the slow-client counter counts them; each stalled socket then reaches
//     EOF or a reset, not a hang) — a write cannot complete within the write deadline,
//     or the client's queue stays full that long;
//   - the readers stay connected and their delivery latency (Redis PUBLISH → frame
//     read) has p99 < 1 s over the whole run;
//   - the api's peak RSS stays below its idle peak + (clients × f17PerConnBytes) +
//     f17Headroom, and the bytes the kernel queues in its sockets to the clients below
//     clients × f17KernelPerConnBytes (sampled from /proc/net/tcp).
//
// Events are published straight to Redis (as the consumer does after storing them):
// what is measured is the api's fan-out, not the pipeline in front of it.
func stalledLiveClients(t *testing.T, stalled, readers int) {
	c := harness.NewCluster(t, harness.Options{Projects: 1})
	api := c.StartAPI("API_BCRYPT_COST=4", "LIVE_MAX_CONNS_PER_USER="+strconv.Itoa(stalled+readers+10),
		"LIVE_WRITE_TIMEOUT="+f17WriteTimeout.String())
	user := harness.RegisterUser(t, api.URL)
	project := c.Projects[0]
	c.GiveProject(t, project, user.ID)
	s := harness.NewScenario(t, c, "F17", fmt.Sprintf("%d live WebSocket clients that never read, %d that do, events published at 200/s", stalled, readers))
	time.Sleep(time.Second)
	idlePeak := api.Stats().PeakRSSBytes

	var latMu sync.Mutex
	var latencies []time.Duration
	onMessage := func(m harness.LiveMsg) {
		var v struct {
			SentNs int64 `json:"sentNs"`
		}
		if json.Unmarshal(m.Data, &v) == nil && v.SentNs > 0 {
			latMu.Lock()
			latencies = append(latencies, m.At.Sub(time.Unix(0, v.SentNs)))
			latMu.Unlock()
		}
	}
	var live []*harness.LiveClient
	for range readers {
		live = append(live, harness.DialLive(t, api.URL, project.ID, user.Token, onMessage))
	}

	conns := dialStalled(t, api.URL, project.ID, user.Token, stalled)
	gauge := `pulseboard_api_live_connections{transport="ws"}`
	if !waitMetric(api, gauge, func(v float64) bool { return v == float64(stalled+readers) }, time.Minute) {
		v, _ := api.Metric(gauge)
		t.Fatalf("%s is %v, want %d", gauge, v, stalled+readers)
	}

	// Publish until every stalled client is closed, then 5 s more.
	rdb := c.Redis.Client()
	defer rdb.Close()
	pad := strings.Repeat("x", 900)
	var published atomic.Int64
	stop := make(chan struct{})
	pubDone := make(chan error, 1)
	start := time.Now()
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				pubDone <- nil
				return
			case <-tick.C:
			}
			msg := fmt.Sprintf(`{"id":%q,"projectId":%q,"type":"event","name":"f17","payload":{"pad":%q},"sentNs":%d}`,
				uuid.New(), project.ID, pad, time.Now().UnixNano())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := rdb.Publish(ctx, redisx.EventsChannel(project.ID), msg).Err()
			cancel()
			if err != nil {
				pubDone <- err
				return
			}
			published.Add(1)
		}
	}()
	// The kernel's side: bytes queued in the api's sockets to its clients.
	apiPort, _ := strconv.Atoi(api.URL[strings.LastIndexByte(api.URL, ':')+1:])
	var kernelPeak atomic.Int64
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		for {
			if b, _, err := harness.SendQueued(apiPort); err == nil && b > kernelPeak.Load() {
				kernelPeak.Store(b)
			}
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	allClosed := waitMetric(api, gauge, func(v float64) bool { return v <= float64(readers) }, 5*time.Minute)
	closedAfter := time.Since(start)
	time.Sleep(5 * time.Second)
	close(stop)
	<-samplerDone
	if err := <-pubDone; err != nil {
		s.Fail("publishing: %v", err)
	}
	v, _ := api.Metric(gauge)
	if !allClosed {
		s.Fail("%v WebSocket streams still open 5 minutes into publishing, want the %d readers only", v, readers)
	}
	s.Note("stalled clients all closed", "%s after publishing started (write deadline %s)", closedAfter.Round(100*time.Millisecond), f17WriteTimeout)
	s.Note("published", "%d events", published.Load())

	var slowClosed float64
	for _, reason := range []string{"write_timeout", "queue_full"} {
		n, _ := api.Metric(fmt.Sprintf(`pulseboard_api_live_slow_clients_closed_total{reason=%q,transport="ws"}`, reason))
		s.Note("closed as slow: "+reason, "%.0f", n)
		slowClosed += n
	}
	if slowClosed < float64(stalled) {
		s.Fail("the api counted %.0f slow clients closed, want at least %d", slowClosed, stalled)
	}

	// Each stalled socket must now end (EOF or reset) once read: the server closed it.
	hung := 0
	var wg sync.WaitGroup
	var mu sync.Mutex
	sem := make(chan struct{}, 100)
	for _, conn := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.Copy(io.Discard, conn)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				mu.Lock()
				hung++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if hung > 0 {
		s.Fail("%d stalled connections were still open at the TCP level after their stream was counted closed", hung)
	}

	for i, lc := range live {
		if closed, err := lc.Closed(); closed {
			s.Fail("reader %d was disconnected: %v", i, err)
		}
		resyncs := 0
		for _, m := range lc.Messages() {
			if m.Type() == "resync" {
				resyncs++
			}
		}
		if resyncs > 0 {
			s.Note(fmt.Sprintf("reader %d resyncs", i), "%d", resyncs)
		}
	}
	latMu.Lock()
	lat := slices.Clone(latencies)
	latMu.Unlock()
	slices.Sort(lat)
	if len(lat) == 0 {
		s.Fail("the readers received no event")
	} else {
		p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
		s.Note("reader delivery latency", "p50 %s, p99 %s, max %s over %d deliveries",
			p(0.50).Round(time.Millisecond), p(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), len(lat))
		if p(0.99) >= time.Second {
			s.Fail("reader delivery p99 %s, want < 1 s: stalled clients slowed the others down", p(0.99))
		}
		if want := int(published.Load()) * readers; len(lat) < want*9/10 {
			s.Fail("the readers received %d deliveries of the %d published to them", len(lat), want)
		}
	}

	kernelBound := int64(stalled+readers) * f17KernelPerConnBytes
	s.Note("kernel send queues of the api's sockets", "peak %d MiB (bound %d MiB)", kernelPeak.Load()>>20, kernelBound>>20)
	if kernelPeak.Load() > kernelBound {
		s.Fail("the kernel held %d MiB queued for the api's clients, more than %d MiB: stalled clients grow memory outside the process",
			kernelPeak.Load()>>20, kernelBound>>20)
	}
	peak := api.Stats().PeakRSSBytes
	bound := idlePeak + int64(stalled+readers)*f17PerConnBytes + f17Headroom
	s.Note("api peak RSS", "%d MiB (idle %d MiB, bound %d MiB)", peak>>20, idlePeak>>20, bound>>20)
	if peak > bound {
		s.Fail("api peak RSS %d MiB exceeds the bound %d MiB", peak>>20, bound>>20)
	}
	s.Verify(time.Minute)
}

// dialStalled opens n stalled WebSocket streams, 50 at a time; they are closed when the
// test ends.
func dialStalled(t *testing.T, apiURL string, project uuid.UUID, token string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = harness.DialStalledWS(apiURL, project, token)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("opening the stalled streams: %v", err)
	}
	return conns
}

// waitMetric polls a service's metric every 200 ms until ok accepts its value.
func waitMetric(svc *harness.Service, series string, ok func(float64) bool, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if v, found := svc.Metric(series); found && ok(v) {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}
