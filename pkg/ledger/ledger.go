// Package ledger is the measure of "nothing lost, nothing duplicated" used by the load
// generator and the fault tests (docs/reliability.md, "Fault tests"): it records every event id a
// client sent and the best answer it got, then checks that record against the events
// Postgres stored.
//
// After a fault has healed and the consumer lag is 0, a correct pipeline gives a Report with
// Lost, Duplicates, Phantoms and RejectedStored all 0. Indeterminate events (no definitive
// answer: a transport error, a 5xx, retries exhausted) may or may not be stored; both are
// correct, and the report counts how many were.
package ledger

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Outcome is what the client learnt about one event. Outcomes only move up: a later
// attempt can turn Indeterminate into Rejected or Acked, and anything into Acked.
type Outcome uint8

// Outcomes, in increasing order of certainty.
const (
	Indeterminate Outcome = iota // sent; no definitive answer (yet)
	Rejected                     // refused with an answer that can never succeed (4xx)
	Acked                        // some attempt got a 2xx: the event must be stored exactly once
)

var outcomeNames = [...]string{Indeterminate: "indeterminate", Rejected: "rejected", Acked: "acked"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", o)
}

// MarshalText writes the outcome's name.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText reads an outcome's name.
func (o *Outcome) UnmarshalText(b []byte) error {
	for i, n := range outcomeNames {
		if n == string(b) {
			*o = Outcome(i)
			return nil
		}
	}
	return fmt.Errorf("ledger: unknown outcome %q", b)
}

// rec is one call of Sent or Record, as appended to the log.
type rec struct {
	id      uuid.UUID
	project uint32 // index into Ledger.projects
	outcome Outcome
}

// entry is an event's best outcome so far, in the folded index.
type entry struct {
	project uint32
	outcome Outcome
}

// Ledger is a concurrency-safe record of sent events. The zero value is not usable; call New.
//
// Sent and Record are on the load generator's hot path (two calls per event, hundreds of
// thousands a second): they only append to a log. Updating a map of millions of random
// UUIDs there cost a cache miss each and was the load generator's largest CPU cost. The
// log is folded into the index when the ledger is read (Counts, Projects, Save, Verify).
type Ledger struct {
	mu         sync.Mutex
	log        [][]rec // chunks of logChunk: appending never copies what is there
	projects   []uuid.UUID
	projectIdx map[uuid.UUID]uint32
	m          map[uuid.UUID]entry
}

// New returns an empty ledger.
func New() *Ledger {
	return &Ledger{projectIdx: make(map[uuid.UUID]uint32), m: make(map[uuid.UUID]entry)}
}

// Sent records that an attempt to send the event is about to be made. It must be called
// before the first attempt, so that a process dying mid-request still leaves the id in the
// ledger (as Indeterminate) and a stored copy is not taken for a phantom.
func (l *Ledger) Sent(project, id uuid.UUID) { l.Record(project, id, Indeterminate) }

// Record raises the event's outcome to o (outcomes never move down).
func (l *Ledger) Record(project, id uuid.UUID, o Outcome) {
	l.mu.Lock()
	n := len(l.log)
	if n == 0 || len(l.log[n-1]) == cap(l.log[n-1]) {
		l.log = append(l.log, make([]rec, 0, logChunk))
		n++
	}
	l.log[n-1] = append(l.log[n-1], rec{id: id, project: l.projectIndex(project), outcome: o})
	l.mu.Unlock()
}

const logChunk = 1 << 14

// projectIndex returns the project's index in l.projects, adding it. l.mu is held.
func (l *Ledger) projectIndex(p uuid.UUID) uint32 {
	i, ok := l.projectIdx[p]
	if !ok {
		i = uint32(len(l.projects))
		l.projects = append(l.projects, p)
		l.projectIdx[p] = i
	}
	return i
}

// fold moves the log into the index, keeping the highest outcome per id; the project is
// the one of the call that set that outcome. l.mu is held.
func (l *Ledger) fold() {
	if len(l.log) == 0 {
		return
	}
	if len(l.m) == 0 {
		l.m = make(map[uuid.UUID]entry, len(l.log)*logChunk/2)
	}
	for _, chunk := range l.log {
		for _, r := range chunk {
			if e, ok := l.m[r.id]; !ok || r.outcome > e.outcome {
				l.m[r.id] = entry{project: r.project, outcome: r.outcome}
			}
		}
	}
	l.log = nil
}

// Counts are the number of events per outcome.
type Counts struct {
	Sent          int `json:"sent"`
	Acked         int `json:"acked"`
	Rejected      int `json:"rejected"`
	Indeterminate int `json:"indeterminate"`
}

// Counts returns the number of events per outcome.
func (l *Ledger) Counts() Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fold()
	var c Counts
	for _, e := range l.m {
		c.Sent++
		switch e.outcome {
		case Acked:
			c.Acked++
		case Rejected:
			c.Rejected++
		default:
			c.Indeterminate++
		}
	}
	return c
}

// Projects returns the projects that events were sent to.
func (l *Ledger) Projects() []uuid.UUID {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fold()
	seen := make([]bool, len(l.projects))
	var out []uuid.UUID
	for _, e := range l.m {
		if !seen[e.project] {
			seen[e.project] = true
			out = append(out, l.projects[e.project])
		}
	}
	return out
}

// line is one event in the JSON-lines form written by Save.
type line struct {
	ID      uuid.UUID `json:"id"`
	Project uuid.UUID `json:"project"`
	Outcome Outcome   `json:"outcome"`
}

// Save writes the ledger as JSON lines: {"id":…,"project":…,"outcome":"acked"}.
func (l *Ledger) Save(w io.Writer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fold()
	bw := bufio.NewWriterSize(w, 1<<16)
	// The same bytes json.Encoder writes for a line value, a few times faster: a run of
	// millions of events is saved before its summary is printed.
	buf := make([]byte, 0, 128)
	for id, e := range l.m {
		buf = append(buf[:0], `{"id":"`...)
		buf = append(buf, id.String()...)
		buf = append(buf, `","project":"`...)
		buf = append(buf, l.projects[e.project].String()...)
		buf = append(buf, `","outcome":"`...)
		buf = append(buf, e.outcome.String()...)
		buf = append(buf, "\"}\n"...)
		if _, err := bw.Write(buf); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Load reads JSON lines written by Save (several files may be loaded into one ledger; the
// highest outcome per id wins).
func (l *Ledger) Load(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var ln line
		if err := json.Unmarshal(sc.Bytes(), &ln); err != nil {
			return fmt.Errorf("ledger: line %d: %w", n, err)
		}
		l.Record(ln.Project, ln.ID, ln.Outcome)
	}
	return sc.Err()
}

// Report compares a ledger with what was stored.
type Report struct {
	Counts
	Stored              int `json:"stored"`              // distinct ledger ids stored
	Lost                int `json:"lost"`                // acked, not stored
	Duplicates          int `json:"duplicates"`          // extra rows of stored ids
	Phantoms            int `json:"phantoms"`            // stored in the ledger's projects, never sent
	RejectedStored      int `json:"rejectedStored"`      // rejected, yet stored
	IndeterminateStored int `json:"indeterminateStored"` // no definitive answer, stored (allowed)

	// Up to 10 example ids of each kind of failure, for the log.
	LostIDs, DuplicateIDs, PhantomIDs, RejectedStoredIDs []uuid.UUID `json:",omitempty"`
}

// Err is nil when nothing was lost, duplicated, invented or stored against a rejection.
func (r Report) Err() error {
	var errs []error
	if r.Lost > 0 {
		errs = append(errs, fmt.Errorf("%d acknowledged events lost (e.g. %v)", r.Lost, r.LostIDs))
	}
	if r.Duplicates > 0 {
		errs = append(errs, fmt.Errorf("%d duplicate rows (e.g. %v)", r.Duplicates, r.DuplicateIDs))
	}
	if r.Phantoms > 0 {
		errs = append(errs, fmt.Errorf("%d stored events never sent (e.g. %v)", r.Phantoms, r.PhantomIDs))
	}
	if r.RejectedStored > 0 {
		errs = append(errs, fmt.Errorf("%d rejected events stored (e.g. %v)", r.RejectedStored, r.RejectedStoredIDs))
	}
	return errors.Join(errs...)
}

func (r Report) String() string {
	return fmt.Sprintf("sent %d (acked %d, rejected %d, indeterminate %d); stored %d (indeterminate %d); lost %d, duplicates %d, phantoms %d, rejected-stored %d",
		r.Sent, r.Acked, r.Rejected, r.Indeterminate, r.Stored, r.IndeterminateStored, r.Lost, r.Duplicates, r.Phantoms, r.RejectedStored)
}

// Querier is what Verify needs of a pgx pool or connection.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

const examples = 10

func addExample(s *[]uuid.UUID, id uuid.UUID) {
	if len(*s) < examples {
		*s = append(*s, id)
	}
}

// Verify reads the stored events of the ledger's projects and compares them with the
// ledger. Call it once the consumer lag is 0; the error is for the query only, the
// comparison is in the Report (see Report.Err).
func Verify(ctx context.Context, db Querier, l *Ledger) (Report, error) {
	r := Report{Counts: l.Counts()}
	rows, err := db.Query(ctx, `SELECT id, count(*) FROM events WHERE project_id = ANY($1) GROUP BY id`, l.Projects())
	if err != nil {
		return r, fmt.Errorf("ledger: reading stored events: %w", err)
	}
	stored := make(map[uuid.UUID]struct{}, r.Sent)
	var id uuid.UUID
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
		stored[id] = struct{}{}
		if n > 1 {
			r.Duplicates += n - 1
			addExample(&r.DuplicateIDs, id)
		}
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("ledger: reading stored events: %w", err)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	l.fold()
	for id := range stored {
		e, ok := l.m[id]
		switch {
		case !ok:
			r.Phantoms++
			addExample(&r.PhantomIDs, id)
			continue
		case e.outcome == Rejected:
			r.RejectedStored++
			addExample(&r.RejectedStoredIDs, id)
		case e.outcome == Indeterminate:
			r.IndeterminateStored++
		}
		r.Stored++
	}
	for id, e := range l.m {
		if _, ok := stored[id]; !ok && e.outcome == Acked {
			r.Lost++
			addExample(&r.LostIDs, id)
		}
	}
	return r, nil
}
