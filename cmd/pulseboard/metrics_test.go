package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// exposition is one parsed /metrics scrape.
type exposition map[string]*dto.MetricFamily

// scrape fetches and parses an admin /metrics (the text format, with legacy metric and
// label names: anything else would not parse).
func scrape(t *testing.T, adminURL string) exposition {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	require.NoError(t, err, "the exposition does not parse")
	return mfs
}

// series returns the samples of name whose labels include every pair of want.
func (e exposition) series(name string, want ...string) []*dto.Metric {
	mf := e[name]
	if mf == nil {
		return nil
	}
	var out []*dto.Metric
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == want[i] && l.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// value sums the matching series (counters, gauges); ok is false when none exists.
func (e exposition) value(name string, want ...string) (v float64, ok bool) {
	for _, m := range e.series(name, want...) {
		ok = true
		switch {
		case m.GetCounter() != nil:
			v += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			v += m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			v += m.GetUntyped().GetValue()
		}
	}
	return v, ok
}

// histogram sums the matching histograms' count and sum.
func (e exposition) histogram(name string, want ...string) (count uint64, sum float64, ok bool) {
	for _, m := range e.series(name, want...) {
		if h := m.GetHistogram(); h != nil {
			ok = true
			count += h.GetSampleCount()
			sum += h.GetSampleSum()
		}
	}
	return count, sum, ok
}

// names returns every sample name a query may use: families plus _bucket/_sum/_count of
// histograms (and summaries).
func (e exposition) names() map[string]bool {
	out := map[string]bool{}
	for name, mf := range e {
		out[name] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// metricNameRe finds the metric names in a PromQL expression: PulseBoard's, the Go and
// process collectors', and the series Prometheus makes itself.
var metricNameRe = regexp.MustCompile(`\b((?:pulseboard|go|process)_[a-zA-Z0-9_]+|up|ALERTS)\b`)

// prometheusOwn are series Prometheus itself creates.
var prometheusOwn = map[string]bool{"up": true, "ALERTS": true}

// apiMetricNames are the metric names the api registers, read from its source: the api
// is not part of the all-in-one yet, so no scrape shows them.
func apiMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	re := regexp.MustCompile(`Name:\s*"(pulseboard_api_[a-z0-9_]+)"`)
	err := filepath.WalkDir(filepath.Join(repoRoot, "api"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

// pulseboardConventions are PulseBoard's own lint rules on top of promlint's: every
// metric is pulseboard_<component>_… (or a Go/process collector's), and no label is a
// target label Prometheus would rename or an unbounded identifier.
func pulseboardConventions(mf *dto.MetricFamily) []error {
	var errs []error
	name := mf.GetName()
	// go_ and process_ come from the runtime and process collectors, promhttp_ from the
	// /metrics handler itself (its own scrape errors).
	if !regexp.MustCompile(`^(pulseboard_(ingest|consumer|alerter|api)_[a-z0-9_]+|(go|process|promhttp)_[a-z0-9_]+)$`).MatchString(name) {
		errs = append(errs, fmt.Errorf("not named pulseboard_<component>_…"))
	}
	labels := map[string]bool{}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = true
		}
	}
	for l := range labels {
		switch {
		case l == "job" || l == "instance":
			errs = append(errs, fmt.Errorf("label %q is set by Prometheus on every target; the exported one would be renamed exported_%s", l, l))
		case regexp.MustCompile(`project|key|user|email|token|event_?id`).MatchString(l):
			errs = append(errs, fmt.Errorf("label %q looks unbounded (one value per tenant or event)", l))
		}
	}
	if strings.HasPrefix(name, "pulseboard_") && len(mf.GetMetric()) > 64 {
		errs = append(errs, fmt.Errorf("%d series: a label is not bounded", len(mf.GetMetric())))
	}
	return errs
}

// lintExposition runs promlint with PulseBoard's conventions and returns the problems.
func lintExposition(t *testing.T, e exposition) []promlint.Problem {
	t.Helper()
	var mfs []*dto.MetricFamily
	for _, n := range sortedNames(e) {
		mfs = append(mfs, e[n])
	}
	l := promlint.NewWithMetricFamilies(mfs)
	l.AddCustomValidations(pulseboardConventions)
	problems, err := l.Lint()
	require.NoError(t, err)
	return problems
}

// The acceptance 1 and 4: after real traffic through the all-in-one (single,
// batch, invalid, unauthorised, too large, rate-limited and duplicate requests, a poison
// message produced straight to the topic, an error spike that fires an alert, a digest
// job run), every metric the issue names is on /metrics with plausible values, the
// exposition passes the Prometheus linter, and the dashboard and the alert rules query
// only metrics the services export.
func TestMetricsAfterRealTraffic(t *testing.T) {
	t.Parallel()
	in := start(t,
		"INGEST_MAX_BATCH_EVENTS=10", // the smallest rate-limit bucket is one full batch
		"INGEST_MAX_EVENT_BYTES=2048",
		"ALERT_ERROR_THRESHOLD=5",
		"DIGEST_CRON=* * * * *", // a job run within a minute
		"CONSUMER_BATCH_WAIT=10ms",
	)
	ctx := context.Background()

	// Health endpoints first.
	code, body := get(t, in.admin+"/healthz")
	require.Equal(t, http.StatusOK, code, body)
	code, body = get(t, in.admin+"/readyz")
	require.Equal(t, http.StatusOK, code, body)

	accepted := 0
	post := func(path, key, body string, want int) []byte {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, in.ingest+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, want, resp.StatusCode, "%s %s: %s", path, body, raw)
		if want == http.StatusAccepted {
			if path == "/ingest" {
				accepted++
			} else {
				var r struct {
					Data struct{ Accepted int } `json:"data"`
				}
				require.NoError(t, json.Unmarshal(raw, &r))
				accepted += r.Data.Accepted
			}
		}
		return raw
	}
	batchOf := func(n int, typ, name string) string {
		var evs []string
		for i := range n {
			evs = append(evs, fmt.Sprintf(`{"type":%q,"name":"%s-%d","payload":{"i":%d}}`, typ, name, i, i))
		}
		return "[" + strings.Join(evs, ",") + "]"
	}

	// Accepted: the old SDK's single event, and batches (errors enough to fire an alert).
	post("/ingest", "", `{"apiKey":"`+in.apiKey+`","type":"event","name":"single","payload":{}}`, http.StatusAccepted)
	post("/ingest/batch", in.apiKey, batchOf(4, "event", "batch"), http.StatusAccepted)
	post("/ingest/batch", in.apiKey, batchOf(6, "error", "spike"), http.StatusAccepted)
	// A client retry reusing its eventId: stored once, the second copy absorbed.
	dup := fmt.Sprintf(`{"eventId":%q,"type":"event","name":"dup","payload":{}}`, uuid.NewString())
	post("/ingest/batch", in.apiKey, "["+dup+","+dup+"]", http.StatusAccepted)
	// Refused: invalid JSON, an unknown key, an oversized event.
	post("/ingest", "", `{"name":`, http.StatusBadRequest)
	post("/ingest/batch", "pb_live_"+strings.Repeat("x", 30), batchOf(2, "event", "nokey"), http.StatusUnauthorized)
	// (Over the limit in short strings: one long string would be shortened to fit.)
	big := `{"apiKey":"` + in.apiKey + `","type":"event","name":"big","payload":{"s":["` + strings.Repeat(strings.Repeat("x", 60)+`","`, 80) + `"]}}`
	post("/ingest", "", big, http.StatusRequestEntityTooLarge)
	// Rate limited: a project limited to 1 event/s (bucket: one batch of 10).
	var owner uuid.UUID
	require.NoError(t, in.pool.QueryRow(ctx, `SELECT user_id FROM projects WHERE id = $1`, in.project).Scan(&owner))
	limited, err := pgstore.CreateProject(ctx, in.pool, owner, "limited")
	require.NoError(t, err)
	_, err = in.pool.Exec(ctx, `UPDATE projects SET rate_limit = 1 WHERE id = $1`, limited.ID)
	require.NoError(t, err)
	post("/ingest/batch", limited.APIKey, batchOf(10, "event", "limited"), http.StatusAccepted)
	post("/ingest/batch", limited.APIKey, batchOf(10, "event", "limited"), http.StatusTooManyRequests)
	// A poison message produced straight to the topic: dead-lettered by the consumer.
	w, err := kafkax.NewWriter(strings.Split(in.kafka, ","), in.kk.topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	require.NoError(t, w.WriteMessages(ctx, kafka.Message{Key: []byte(in.project), Value: []byte(`{"not":"an event"`)}))
	require.NoError(t, w.Close())

	// Wait until the pipeline has stored everything, dead-lettered the poison, fired the
	// alert and run the digest job once; the consumer is then idle.
	stored := accepted - 1 // the duplicate
	var m exposition
	require.Eventually(t, func() bool {
		m = scrape(t, in.admin)
		rows, _ := m.value("pulseboard_consumer_rows_stored_total")
		dlq, _ := m.value("pulseboard_consumer_dlq_messages_total", "code", "INVALID_JSON")
		fired, _ := m.value("pulseboard_alerter_alerts_fired_total", "kind", "threshold")
		sent, _ := m.value("pulseboard_alerter_emails_sent_total", "kind", "threshold")
		jobs, _, _ := m.histogram("pulseboard_alerter_job_duration_seconds", "job_name", "digest")
		age, _ := m.value("pulseboard_consumer_oldest_message_age_seconds")
		return int(rows) == stored && dlq == 1 && fired >= 1 && sent >= 1 && jobs >= 1 && age == 0
	}, 90*time.Second, 250*time.Millisecond, "the pipeline did not settle")
	var n int
	require.NoError(t, in.pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n))
	require.Equal(t, stored, n, "rows_stored_total matches the table")

	// The exposition passes promlint and PulseBoard's naming and label rules.
	for _, p := range lintExposition(t, m) {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	at := func(name string, want ...string) float64 {
		t.Helper()
		v, ok := m.value(name, want...)
		require.True(t, ok, "no series %s%v", name, want)
		return v
	}
	positive := func(name string, want ...string) {
		t.Helper()
		require.Positive(t, at(name, want...), "%s%v", name, want)
	}
	hist := func(name string, minCount uint64, maxMean float64, want ...string) {
		t.Helper()
		count, sum, ok := m.histogram(name, want...)
		require.True(t, ok, "no histogram %s%v", name, want)
		require.GreaterOrEqual(t, count, minCount, "%s%v count", name, want)
		mean := sum / float64(count)
		require.True(t, mean >= 0 && mean <= maxMean && !math.IsNaN(mean), "%s%v: mean %v is implausible", name, want, mean)
	}

	// Ingest: requests by route and status with latency; events accepted and dropped by
	// cause; Kafka produce ack latency, in-flight bytes, writer errors; API-key lookups.
	require.Equal(t, 1.0, at("pulseboard_ingest_requests_total", "route", "ingest", "code", "202"))
	require.Equal(t, 4.0, at("pulseboard_ingest_requests_total", "route", "batch", "code", "202"))
	require.Equal(t, 1.0, at("pulseboard_ingest_requests_total", "route", "ingest", "code", "400"))
	require.Equal(t, 1.0, at("pulseboard_ingest_requests_total", "route", "batch", "code", "401"))
	require.Equal(t, 1.0, at("pulseboard_ingest_requests_total", "route", "ingest", "code", "413"))
	require.Equal(t, 1.0, at("pulseboard_ingest_requests_total", "route", "batch", "code", "429"))
	hist("pulseboard_ingest_request_duration_seconds", 4, 5, "route", "batch")
	hist("pulseboard_ingest_request_duration_seconds", 3, 5, "route", "ingest")
	require.Equal(t, float64(accepted), at("pulseboard_ingest_events_accepted_total"))
	require.Equal(t, 1.0, at("pulseboard_ingest_events_dropped_total", "cause", "invalid"))
	// A batch whose X-API-Key is unknown is refused before its body is parsed: it counts as
	// one dropped event, whatever it holds.
	require.Equal(t, 1.0, at("pulseboard_ingest_events_dropped_total", "cause", "unauthorized"))
	require.Equal(t, 1.0, at("pulseboard_ingest_events_dropped_total", "cause", "too_large"))
	require.Equal(t, 10.0, at("pulseboard_ingest_events_dropped_total", "cause", "rate_limited"))
	require.Equal(t, 0.0, at("pulseboard_ingest_events_dropped_total", "cause", "unavailable"))
	hist("pulseboard_ingest_produce_ack_seconds", 5, 5)
	hist("pulseboard_ingest_produce_batch_events", 1, 1000)
	require.Equal(t, 0.0, at("pulseboard_ingest_inflight_bytes"), "nothing waits for Kafka once idle")
	require.Equal(t, float64(64<<20), at("pulseboard_ingest_inflight_bytes_limit"))
	require.Equal(t, -1.0, at("pulseboard_ingest_writer_required_acks"), "acks=all")
	for _, reason := range []string{"timeout", "broker", "overloaded"} {
		require.Equal(t, 0.0, at("pulseboard_ingest_produce_errors_total", "reason", reason))
	}
	positive("pulseboard_ingest_apikey_lookups_total", "result", "hit")
	positive("pulseboard_ingest_apikey_lookups_total", "result", "miss")

	// Consumer: lag per partition, batch size, COPY (store) duration, rows stored,
	// duplicates absorbed, DLQ messages, age of the oldest unprocessed event, end-to-end
	// delays, offsets committed.
	lags := m.series("pulseboard_consumer_lag_messages")
	require.NotEmpty(t, lags, "lag per partition")
	for _, s := range lags {
		require.Equal(t, 0.0, s.GetGauge().GetValue(), "lag once everything is stored: %v", s.GetLabel())
	}
	hist("pulseboard_consumer_batch_size_messages", 1, 5000)
	_, batched, _ := m.histogram("pulseboard_consumer_batch_size_messages")
	require.GreaterOrEqual(t, batched, float64(accepted+1), "every produced message went through a batch")
	hist("pulseboard_consumer_store_duration_seconds", 1, 5)
	require.Equal(t, float64(stored), at("pulseboard_consumer_rows_stored_total"))
	require.GreaterOrEqual(t, at("pulseboard_consumer_duplicates_total"), 1.0)
	require.Equal(t, 0.0, at("pulseboard_consumer_dlq_messages_total", "code", "UNKNOWN_PROJECT"))
	require.Equal(t, 0.0, at("pulseboard_consumer_oldest_message_age_seconds"))
	hist("pulseboard_consumer_receive_to_stored_seconds", uint64(stored), 30)
	hist("pulseboard_consumer_receive_to_published_seconds", 1, 30)
	require.GreaterOrEqual(t, at("pulseboard_consumer_offsets_committed_total"), float64(accepted+1))
	for _, name := range []string{"pulseboard_consumer_store_errors_total", "pulseboard_consumer_commit_errors_total",
		"pulseboard_consumer_dlq_write_errors_total", "pulseboard_consumer_publish_errors_total", "pulseboard_consumer_fetch_errors_total"} {
		at(name)
	}

	// Alerter: alert and job outcomes.
	require.GreaterOrEqual(t, at("pulseboard_alerter_emails_sent_total", "kind", "threshold"), 1.0)
	require.Equal(t, 0.0, at("pulseboard_alerter_emails_failed_total", "kind", "threshold"))
	positive("pulseboard_alerter_messages_processed_total")
	hist("pulseboard_alerter_window_evaluation_lag_seconds", 1, 60)
	hist("pulseboard_alerter_job_duration_seconds", 1, 60, "job_name", "digest")
	require.Equal(t, 0.0, at("pulseboard_alerter_job_runs_total", "job_name", "digest", "outcome", "failure"))

	// Go runtime and process collectors.
	positive("go_goroutines")
	positive("go_memstats_heap_alloc_bytes")
	positive("process_resident_memory_bytes")
	positive("process_open_fds")

	// Acceptance 4: the dashboard and the alert rules query only exported metrics (the
	// api's by name from its source, until the all-in-one runs it).
	exported := m.names()
	api := apiMetricNames(t)
	require.Contains(t, api, "pulseboard_api_live_connections", "the api's live-stream metrics are registered in its source")
	known := func(name string) bool {
		if exported[name] || prometheusOwn[name] {
			return true
		}
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && api[base] {
				return true
			}
		}
		return false
	}
	check := func(where, expr string) {
		t.Helper()
		names := metricNameRe.FindAllString(expr, -1)
		require.NotEmpty(t, names, "%s: no metric in %q", where, expr)
		for _, n := range names {
			assert(t, known(n), "%s queries %s, which no service exports: %q", where, n, expr)
		}
	}
	exprs := dashboardExprs(loadDashboard(t))
	for _, title := range sortedNames(exprs) {
		for _, e := range exprs[title] {
			check("dashboard panel "+title, e)
		}
	}
	for _, g := range loadAlertRules(t).Groups {
		for _, r := range g.Rules {
			check("alert "+r.Alert, r.Expr)
		}
	}
	// And the README names only exported metrics.
	readme := string(readRepoFile(t, "README.md"))
	readmeNames := regexp.MustCompile(`\bpulseboard_(?:ingest|consumer|alerter|api)_[a-z0-9_]+\b`).FindAllString(readme, -1)
	require.NotEmpty(t, readmeNames)
	sort.Strings(readmeNames)
	for _, n := range readmeNames {
		if in.kk.real && strings.HasPrefix(n, "pulseboard_ingest_broker_") {
			continue // the embedded broker's, which a run on real Kafka does not start
		}
		assert(t, known(n), "the README names %s, which no service exports", n)
	}
}

// The linter catches what it is meant to catch: a label named job (which Prometheus
// renames to exported_job on scrape), an unbounded project label, and a counter without
// _total. Without this the clean result above could be vacuous.
func TestMetricLintCatchesConventionBreaks(t *testing.T) {
	t.Parallel()
	text := `# HELP pulseboard_alerter_job_runs_total Runs.
# TYPE pulseboard_alerter_job_runs_total counter
pulseboard_alerter_job_runs_total{job="digest",outcome="success"} 1
# HELP pulseboard_ingest_events_by_project Events.
# TYPE pulseboard_ingest_events_by_project counter
pulseboard_ingest_events_by_project{project_id="1"} 1
# HELP ingest_requests Requests.
# TYPE ingest_requests gauge
ingest_requests 1
`
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	require.NoError(t, err)
	var got []string
	for _, pr := range lintExposition(t, mfs) {
		got = append(got, pr.Metric+": "+pr.Text)
	}
	joined := strings.Join(got, "\n")
	require.Contains(t, joined, `pulseboard_alerter_job_runs_total: label "job" is set by Prometheus`)
	require.Contains(t, joined, `pulseboard_ingest_events_by_project: label "project_id" looks unbounded`)
	require.Contains(t, joined, "pulseboard_ingest_events_by_project: counter metrics should have \"_total\" suffix")
	require.Contains(t, joined, "ingest_requests: not named pulseboard_<component>_…")
}
