package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// Result is one scenario's row in the report.
type Result struct {
	ID   string `json:"id"`   // the docs/reliability.md fault id, e.g. F04
	Name string `json:"name"` // what was done
	Pass bool   `json:"pass"`
	// NegativeControl: a safety was disabled on purpose and loss had to be seen.
	NegativeControl bool     `json:"negativeControl,omitempty"`
	Failures        []string `json:"failures,omitempty"`

	Ledger          *ledger.Report `json:"ledger,omitempty"`
	Load            *LoadStats     `json:"load,omitempty"`
	OffsetDecreases []Decrease     `json:"offsetDecreases"`
	// Rows is the number of stored events in the database at the end.
	Rows int64 `json:"rows"`

	// RecoveryLagSeconds: fault healed → the backlog present at that moment committed.
	// RecoveryIngestSeconds: fault healed → the first probe answered 2xx.
	// DrainSeconds: load stopped → consumer lag 0.
	RecoveryLagSeconds    *float64 `json:"recoveryLagSeconds,omitempty"`
	RecoveryIngestSeconds *float64 `json:"recoveryIngestSeconds,omitempty"`
	DrainSeconds          *float64 `json:"drainSeconds,omitempty"`
	DurationSeconds       float64  `json:"durationSeconds"`

	// Processes are the resource ceilings seen per process (peak RSS, goroutines…).
	Processes map[string]ProcStats `json:"processes"`
	Notes     map[string]string    `json:"notes,omitempty"`
}

var (
	reportMu sync.Mutex
	results  []Result
)

// Record adds a result to the report (Scenario does it when its test ends).
func Record(r Result) {
	reportMu.Lock()
	defer reportMu.Unlock()
	results = append(results, r)
}

// Results returns the results recorded so far, sorted by id then name.
func Results() []Result {
	reportMu.Lock()
	defer reportMu.Unlock()
	out := append([]Result{}, results...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Summary renders the results as a markdown table (one row per scenario).
func Summary(rs []Result) string {
	var b strings.Builder
	b.WriteString("| id | scenario | result | acked | lost | dup | phantom | rej-stored | offset ↓ | ingest back (s) | caught up (s) | drain (s) | peak RSS (MiB) by process | max goroutines | notes |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n")
	for _, r := range rs {
		result := "PASS"
		if !r.Pass {
			result = "**FAIL**"
		}
		if r.NegativeControl {
			result += " (negative control: loss expected)"
		}
		acked, lost, dup, ph, rej := "–", "–", "–", "–", "–"
		if r.Ledger != nil {
			acked = fmt.Sprint(r.Ledger.Acked)
			lost, dup, ph, rej = fmt.Sprint(r.Ledger.Lost), fmt.Sprint(r.Ledger.Duplicates), fmt.Sprint(r.Ledger.Phantoms), fmt.Sprint(r.Ledger.RejectedStored)
		}
		var rss, gor []string
		names := make([]string, 0, len(r.Processes))
		for n := range r.Processes {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			p := r.Processes[n]
			rss = append(rss, fmt.Sprintf("%s %.0f", n, float64(p.PeakRSSBytes)/(1<<20)))
			if p.MaxGoroutines > 0 {
				gor = append(gor, fmt.Sprintf("%s %.0f", n, p.MaxGoroutines))
			}
		}
		var notes []string
		for k, v := range r.Notes {
			notes = append(notes, k+": "+v)
		}
		sort.Strings(notes)
		notes = append(notes, r.Failures...)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |\n",
			r.ID, r.Name, result, acked, lost, dup, ph, rej, len(r.OffsetDecreases),
			secs(r.RecoveryIngestSeconds), secs(r.RecoveryLagSeconds), secs(r.DrainSeconds),
			strings.Join(rss, ", "), strings.Join(gor, ", "), cell(strings.Join(notes, "; ")))
	}
	return b.String()
}

func secs(v *float64) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf("%.1f", *v)
}

func cell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}

// WriteReport writes the results as chaos-<time>.md and .json into dir and returns the
// markdown file's path.
func WriteReport(dir string, rs []Result) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	host, _ := os.Hostname()
	stamp := time.Now().UTC().Format("20060102-150405")
	base := filepath.Join(dir, "chaos-"+stamp)
	var b strings.Builder
	fmt.Fprintf(&b, "# PulseBoard fault-injection report %s\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Machine: %s, %d CPUs, %s. Services as separate processes built with `-tags failpoints`; a standalone `pulseboard broker` (kfake, persisted), PostgreSQL %s, a redis-server of each test's own.\n\n",
		host, runtime.NumCPU(), runtime.Version(), "(shared test server, one database per scenario)")
	b.WriteString("Columns: acked = events some attempt got a 2xx for; lost / dup / phantom / rej-stored from the ledger verifier (must be 0, except lost for negative controls); offset ↓ = committed-offset decreases seen by the 100 ms watcher; ingest back = fault healed → first 2xx; caught up = fault healed → the backlog of that moment committed; drain = load stopped → lag 0.\n\n")
	b.WriteString(Summary(rs))
	if nr := NotRun(); len(nr) > 0 {
		fmt.Fprintf(&b, "\nNot run (long scenarios without CHAOS_LONG=1): %s\n", strings.Join(nr, "; "))
	}
	md := base + ".md"
	if err := os.WriteFile(md, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	js, err := json.MarshalIndent(struct {
		Time    time.Time `json:"time"`
		Host    string    `json:"host"`
		CPUs    int       `json:"cpus"`
		Results []Result  `json:"results"`
	}{time.Now().UTC(), host, runtime.NumCPU(), rs}, "", "  ")
	if err != nil {
		return "", err
	}
	return md, os.WriteFile(base+".json", js, 0o644)
}

// Main is TestMain's body for fault-test packages: it runs the tests, prints the summary
// table, writes the report into $CHAOS_REPORT_DIR when set, removes the binaries, and
// returns the exit code.
func Main(run func() int) int {
	code := run()
	if rs := Results(); len(rs) > 0 {
		fmt.Println("\nFault scenarios:")
		fmt.Println(Summary(rs))
		if nr := NotRun(); len(nr) > 0 {
			fmt.Printf("Not run (long scenarios, make chaos runs them): %s\n", strings.Join(nr, "; "))
		}
		if dir := os.Getenv("CHAOS_REPORT_DIR"); dir != "" {
			path, err := WriteReport(dir, rs)
			if err != nil {
				fmt.Fprintln(os.Stderr, "writing the chaos report:", err)
				code = 1
			} else {
				fmt.Println("report:", path)
			}
		}
	}
	Cleanup()
	return code
}

var (
	skippedMu sync.Mutex
	skipped   []string
)

// Long marks a long scenario (a full-length fault, minutes of load): it runs only with
// CHAOS_LONG=1 (make chaos). Otherwise the test is skipped with a message saying so and
// listed by Main as not run, so a short run can never pass it silently.
func Long(t testing.TB, id, what string) {
	t.Helper()
	if os.Getenv("CHAOS_LONG") == "1" {
		return
	}
	skippedMu.Lock()
	skipped = append(skipped, id+" "+what+" ("+t.Name()+")")
	skippedMu.Unlock()
	t.Skipf("long scenario %s (%s): not run without CHAOS_LONG=1; run make chaos", id, what)
}

// NotRun returns the long scenarios skipped in this run.
func NotRun() []string {
	skippedMu.Lock()
	defer skippedMu.Unlock()
	return append([]string{}, skipped...)
}
