package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/pkg/client"
	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// LoadOptions configure a Load.
type LoadOptions struct {
	// Rate is the events per second enqueued over all projects [300].
	Rate int
	// BatchEvents is the SDK's MaxBatchEvents [50].
	BatchEvents int
	// MaxRetries of one batch in the SDK [1000: a batch is retried, honouring
	// Retry-After, until it is answered or the load stops].
	MaxRetries int
	// NoProbe turns off the probe: one single-event POST /ingest every 100 ms (without
	// retries) that measures when ingest answers 2xx again and checks every 503 for
	// Retry-After.
	NoProbe bool
}

// ProbeStats are what the probe's single requests got.
type ProbeStats struct {
	Requests int         `json:"requests"`
	ByStatus map[int]int `json:"byStatus"`
	// TransportErrors counts refused or cut connections (the ingestor is down).
	TransportErrors int `json:"transportErrors"`
	// MissingRetryAfter counts 503 answers without a Retry-After header.
	MissingRetryAfter int `json:"missingRetryAfter"`
	// MaxLatency is the slowest answer (transport errors included).
	MaxLatency time.Duration `json:"maxLatencyNs"`
}

// Load sends events to an ingestor like SDKs do, recording each in a ledger: Sent before
// the first attempt, then the outcome (pkg/client results: accepted → Acked, rejected →
// Rejected, failed → Indeterminate). Events have unique ids and go to every project of
// the cluster in turn, each project through its own client.
type Load struct {
	url    string
	opts   LoadOptions
	ledger *ledger.Ledger

	clients  []*client.Client
	projects []Project

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	enqueued, dropped       atomic.Int64
	acked, rejected, failed atomic.Int64

	mu       sync.Mutex
	probes   ProbeStats
	answers  []ProbeAnswer
	flood    map[int]int // flood answers by status
	healed   time.Time   // when the last fault healed (MarkHealed)
	firstAck time.Time   // first probe 2xx after healed
	stopped  bool
}

// StartLoad starts sending to the ingestor at url (http://host:port); Stop ends it.
func (c *Cluster) StartLoad(url string, o LoadOptions) *Load {
	c.t.Helper()
	if o.Rate <= 0 {
		o.Rate = 300
	}
	if o.BatchEvents <= 0 {
		o.BatchEvents = 50
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 1000
	}
	l := &Load{url: url, opts: o, ledger: ledger.New(), projects: c.Projects, stop: make(chan struct{})}
	l.probes.ByStatus = map[int]int{}
	l.flood = map[int]int{}
	for _, p := range c.Projects {
		cl, err := client.New(client.Options{
			Endpoint:       url,
			APIKey:         p.APIKey,
			MaxBatchEvents: o.BatchEvents,
			FlushInterval:  50 * time.Millisecond,
			QueueSize:      100_000,
			MaxRetries:     o.MaxRetries,
			RetryBaseDelay: 100 * time.Millisecond,
			RetryMaxDelay:  time.Second,
			HTTPClient:     &http.Client{Timeout: 20 * time.Second},
			OnResult:       func(r client.Result) { l.result(p.ID, r) },
		})
		if err != nil {
			c.t.Fatalf("harness: %v", err)
		}
		l.clients = append(l.clients, cl)
	}
	l.wg.Add(1)
	go l.generate()
	if !o.NoProbe {
		l.wg.Add(1)
		go l.probe()
	}
	c.t.Cleanup(func() { l.Stop(5 * time.Second) })
	return l
}

func (l *Load) result(project uuid.UUID, r client.Result) {
	switch r.Status {
	case client.StatusAccepted:
		l.acked.Add(1)
		l.ledger.Record(project, r.EventID, ledger.Acked)
	case client.StatusRejected:
		l.rejected.Add(1)
		l.ledger.Record(project, r.EventID, ledger.Rejected)
	default:
		l.failed.Add(1) // stays Indeterminate
	}
}

// generate enqueues Rate events per second, in slices every 10 ms.
func (l *Load) generate() {
	defer l.wg.Done()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var sent int64
	types := []string{client.TypeEvent, client.TypeError, client.TypeMetric}
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		due := int64(time.Since(start).Seconds() * float64(l.opts.Rate))
		for ; sent < due; sent++ {
			i := int(sent) % len(l.clients)
			id, _ := uuid.NewV7()
			l.ledger.Sent(l.projects[i].ID, id)
			err := l.clients[i].Enqueue(client.Event{
				Type: types[sent%3], Name: fmt.Sprintf("chaos-%d", sent%97), EventID: id,
				Payload: map[string]any{"n": sent, "pad": randomHex(8)},
			})
			if err != nil {
				l.dropped.Add(1) // never sent: stays Indeterminate and unstored
				continue
			}
			l.enqueued.Add(1)
		}
	}
}

// probe sends one single-event POST /ingest every 100 ms, without retries.
func (l *Load) probe() {
	defer l.wg.Done()
	hc := &http.Client{Timeout: 30 * time.Second}
	p := l.projects[0]
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		id, _ := uuid.NewV7()
		l.ledger.Sent(p.ID, id)
		start := time.Now()
		status, hdr, err := postSingleHeader(hc, l.url, p.APIKey, id)
		took := time.Since(start)
		retryAfter := hdr.Get("Retry-After") != ""
		l.recordSingle(p.ID, id, status)
		l.mu.Lock()
		l.answers = append(l.answers, ProbeAnswer{Sent: start, Took: took, Status: status, RetryAfter: retryAfter})
		l.probes.Requests++
		if err != nil {
			l.probes.TransportErrors++
		} else {
			l.probes.ByStatus[status]++
			if status == http.StatusServiceUnavailable && !retryAfter {
				l.probes.MissingRetryAfter++
			}
		}
		l.probes.MaxLatency = max(l.probes.MaxLatency, took)
		if now := time.Now(); status >= 200 && status < 300 && !l.healed.IsZero() && l.firstAck.IsZero() && now.After(l.healed) {
			l.firstAck = now
		}
		l.mu.Unlock()
	}
}

// SendOne sends one event of the cluster's project i (its own new id, recorded in the
// ledger like every other) as a single POST /ingest to the ingestor at url, which may
// be another than the load's, and returns the status (0 after a transport error).
func (l *Load) SendOne(url string, i int) int {
	p := l.projects[i]
	id, _ := uuid.NewV7()
	l.ledger.Sent(p.ID, id)
	status := postSingle(&http.Client{Timeout: 30 * time.Second}, url, p.APIKey, id)
	l.recordSingle(p.ID, id, status)
	return status
}

// postSingle posts one event to POST /ingest, which takes the key from the body (the old
// backend's format), and returns the status (0 after a transport error).
func postSingle(hc *http.Client, url, apiKey string, id uuid.UUID) int {
	status, _, _ := postSingleHeader(hc, url, apiKey, id)
	return status
}

func postSingleHeader(hc *http.Client, url, apiKey string, id uuid.UUID) (int, http.Header, error) {
	body := fmt.Sprintf(`{"apiKey":%q,"eventId":%q,"type":"event","name":"probe","payload":{}}`, apiKey, id)
	req, _ := http.NewRequest(http.MethodPost, url+"/ingest", bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header, nil
}

// recordSingle records a single request's answer in the ledger.
func (l *Load) recordSingle(project, id uuid.UUID, status int) {
	switch {
	case status >= 200 && status < 300:
		l.ledger.Record(project, id, ledger.Acked)
	case status >= 400 && status < 500 && status != http.StatusTooManyRequests:
		l.ledger.Record(project, id, ledger.Rejected)
	}
}

// MarkHealed records that the fault has just healed: IngestRecovery measures from here.
func (l *Load) MarkHealed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.healed, l.firstAck = time.Now(), time.Time{}
}

// IngestRecovery is the time from MarkHealed to the first probe answered 2xx (false if
// none yet, or without a probe).
func (l *Load) IngestRecovery() (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.healed.IsZero() || l.firstAck.IsZero() {
		return 0, false
	}
	return l.firstAck.Sub(l.healed), true
}

// WaitIngestRecovered waits until a probe was answered 2xx after MarkHealed and returns
// how long after it that was (false after timeout).
func (l *Load) WaitIngestRecovered(timeout time.Duration) (time.Duration, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if d, ok := l.IngestRecovery(); ok {
			return d, true
		}
		if time.Now().After(deadline) {
			return 0, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Flood starts workers that post batches of batch events to POST /ingest/batch as fast
// as they are answered, like aggressive clients: a batch answered 503, 429 or not at
// all is sent again at once (same event ids) until it gets a final answer, then a new
// one follows. Every event is in the ledger. It presses on the ingestor's in-flight
// budget, goroutines and memory during a fault. The returned function stops the
// workers and waits for them.
func (l *Load) Flood(workers, batch int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 30 * time.Second}
			p := l.projects[w%len(l.projects)]
			ids := make([]uuid.UUID, batch)
			var body []byte
			for {
				select {
				case <-done:
					return
				case <-l.stop:
					return
				default:
				}
				if body == nil {
					var b bytes.Buffer
					b.WriteByte('[')
					for i := range ids {
						ids[i], _ = uuid.NewV7()
						l.ledger.Sent(p.ID, ids[i])
						if i > 0 {
							b.WriteByte(',')
						}
						fmt.Fprintf(&b, `{"eventId":%q,"type":"event","name":"flood","payload":{"i":%d,"pad":%q}}`, ids[i], i, randomHex(32))
					}
					b.WriteByte(']')
					body = b.Bytes()
				}
				req, _ := http.NewRequest(http.MethodPost, l.url+"/ingest/batch", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-API-Key", p.APIKey)
				status := 0
				if resp, err := hc.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				for _, id := range ids {
					l.recordSingle(p.ID, id, status)
				}
				l.mu.Lock()
				l.flood[status]++
				l.mu.Unlock()
				if status != 0 && status != http.StatusTooManyRequests && status < 500 {
					body = nil // answered for good: next batch
					continue
				}
				time.Sleep(20 * time.Millisecond) // no busy loop on a refused connection
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// FloodAnswers returns the statuses the flood got (0: transport error).
func (l *Load) FloodAnswers() map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.flood)
}

// Probes returns the probe's statistics so far.
func (l *Load) Probes() ProbeStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.probes
	s.ByStatus = maps.Clone(l.probes.ByStatus)
	return s
}

// Acked is the number of events acknowledged so far.
func (l *Load) Acked() int64 { return l.acked.Load() }

// WaitAcked waits until at least n events are acknowledged (false on timeout).
func (l *Load) WaitAcked(n int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for l.acked.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// Stop stops generating, then flushes and closes the clients, waiting up to timeout for
// answers to what is still queued or being retried (what gets none stays Indeterminate).
// It is idempotent.
func (l *Load) Stop(timeout time.Duration) {
	l.stopOnce.Do(func() {
		close(l.stop)
		l.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, cl := range l.clients {
			wg.Add(1)
			go func() { defer wg.Done(); _ = cl.Close(ctx) }()
		}
		wg.Wait()
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
	})
}

// Ledger returns the ledger (complete once Stop returned).
func (l *Load) Ledger() *ledger.Ledger { return l.ledger }

// LoadStats summarise a load for the report.
type LoadStats struct {
	Enqueued int64      `json:"enqueued"`
	Dropped  int64      `json:"dropped"`
	Acked    int64      `json:"acked"`
	Rejected int64      `json:"rejected"`
	Failed   int64      `json:"failed"`
	Probes   ProbeStats `json:"probes"`
	// Flood is the statuses of Flood's batches (0: transport error).
	Flood map[int]int `json:"flood,omitempty"`
}

// Stats returns the load's counters.
func (l *Load) Stats() LoadStats {
	return LoadStats{
		Enqueued: l.enqueued.Load(), Dropped: l.dropped.Load(),
		Acked: l.acked.Load(), Rejected: l.rejected.Load(), Failed: l.failed.Load(),
		Probes: l.Probes(), Flood: l.FloodAnswers(),
	}
}

// ProbeAnswer is one probe request: when it was sent, how long its answer took, and the
// status (0 after a transport error).
type ProbeAnswer struct {
	Sent       time.Time
	Took       time.Duration
	Status     int
	RetryAfter bool
}

// ProbeAnswers returns the probe's requests sent in [from, to) (to zero: up to now).
func (l *Load) ProbeAnswers(from, to time.Time) []ProbeAnswer {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ProbeAnswer
	for _, a := range l.answers {
		if !a.Sent.Before(from) && (to.IsZero() || a.Sent.Before(to)) {
			out = append(out, a)
		}
	}
	return out
}

// UnavailableWindow is the time from the first probe sent at or after from that was not
// answered 2xx to the first 2xx answer sent after it (the 503 window a client saw), and
// the number of probes in it; 0 when every probe since from was answered 2xx.
func (l *Load) UnavailableWindow(from time.Time) (time.Duration, int) {
	var start time.Time
	n := 0
	for _, a := range l.ProbeAnswers(from, time.Time{}) {
		ok := a.Status >= 200 && a.Status < 300
		switch {
		case !ok && start.IsZero():
			start, n = a.Sent, 1
		case !ok:
			n++
		case ok && !start.IsZero():
			return a.Sent.Add(a.Took).Sub(start), n
		}
	}
	if start.IsZero() {
		return 0, 0
	}
	return time.Since(start), n
}
