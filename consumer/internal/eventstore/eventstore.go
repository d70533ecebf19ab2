package eventstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/failpoint"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Outcome is what happened to one row of a batch.
type Outcome uint8

// Outcomes. The zero value, Pending, means "not decided yet": the row must be retried.
const (
	Pending Outcome = iota
	// Stored: the row is new and was stored by this call.
	Stored
	// Duplicate: an event with this (project, id) was already stored, by an earlier
	// batch, another consumer or an earlier row of this batch.
	Duplicate
	// UnknownProject: the project does not exist (deleted, or a forged message).
	UnknownProject
	// Rejected: PostgreSQL refuses this row on its own (see Result.Rejections).
	Rejected
)

var outcomeNames = [...]string{"pending", "stored", "duplicate", "unknown_project", "rejected"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", o)
}

// Rejection says why PostgreSQL refused a row.
type Rejection struct {
	// Code is the SQLSTATE, Message the server's message (with detail when present).
	Code    string
	Message string
}

// Result holds one Outcome per input row.
type Result struct {
	Outcomes []Outcome
	// Rejections maps the index of every Rejected row to its reason.
	Rejections map[int]Rejection
	// DataErrors counts transactions that failed with a data error while bisecting.
	DataErrors int
}

// Count returns how many rows have outcome o.
func (r *Result) Count(o Outcome) int {
	n := 0
	for _, x := range r.Outcomes {
		if x == o {
			n++
		}
	}
	return n
}

// Options tune a Store.
type Options struct {
	// TxTimeout bounds one transaction (COPY plus the insert statement). A transaction
	// that runs out of it is rolled back and reported as transient. 0 means no bound
	// beyond the caller's context.
	TxTimeout time.Duration
	// OnTx, when set, is called after every transaction with its row count, duration
	// and error (nil when committed).
	OnTx func(rows int, d time.Duration, err error)
	// Now returns the current time (partition maintenance); time.Now when nil.
	Now func() time.Time
}

// Store writes event batches. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	opts Options

	mu   sync.Mutex
	days map[int64]struct{} // UTC days (unix days) whose events partition is known to exist
}

// New returns a Store on pool.
func New(pool *pgxpool.Pool, opts Options) *Store {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Store{pool: pool, opts: opts, days: map[int64]struct{}{}}
}

// eventColumns are the columns COPY writes: every field of pkg/event's field table, in
// its order (rowSource.Values gives the values in the same order).
var eventColumns = event.Columns()

// gateSQL is the dedup gate and the project check of one transaction (see the package
// doc). $1–$3 are the batch's distinct (project_id, id) pairs with their received_at,
// sorted by (project_id, id); $4 holds the batch's distinct projects, sorted.
const gateSQL = `
WITH known AS (
    SELECT p.id FROM projects p
    WHERE p.id = ANY($4::uuid[])
    ORDER BY p.id
    FOR KEY SHARE
), fresh AS (
    INSERT INTO event_ids (project_id, id, received_at)
    SELECT b.project_id, b.id, b.received_at
    FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) WITH ORDINALITY AS b(project_id, id, received_at, n)
    WHERE b.project_id IN (SELECT id FROM known)
    ORDER BY b.n
    ON CONFLICT DO NOTHING
    RETURNING project_id, id
)
SELECT project_id, id FROM fresh
UNION ALL
SELECT u.project_id, NULL::uuid
FROM unnest($4::uuid[]) AS u(project_id)
WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.id = u.project_id)`

// rollupSQL adds the fresh rows to event_rollups; the rows arrive counted and sorted by
// key, so concurrent consumers lock rollup rows in the same order.
const rollupSQL = `
INSERT INTO event_rollups AS r (project_id, minute, type, count)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::bigint[])
ON CONFLICT (project_id, minute, type) DO UPDATE SET count = r.count + EXCLUDED.count`

type key struct{ project, id uuid.UUID }

func keyOf(ev *event.Event) key { return key{ev.ProjectID, ev.ID} }

// rollupKey is one event_rollups row.
type rollupKey struct {
	project uuid.UUID
	minute  int64 // unix seconds of the UTC minute
	typ     string
}

// Store writes events and returns one Outcome per event. On error the Result still
// holds every outcome decided so far (rows of committed transactions); the caller
// retries the rows that are Pending. Data errors never surface as an error: those rows
// are Rejected. The returned error is an *Error, or ctx's error when ctx ended.
func (s *Store) Store(ctx context.Context, events []event.Event) (Result, error) {
	res := Result{Outcomes: make([]Outcome, len(events))}
	if len(events) == 0 {
		return res, nil
	}
	if err := s.ensureDays(ctx, events); err != nil {
		return res, err
	}
	idx := make([]int, len(events))
	for i := range idx {
		idx[i] = i
	}
	return res, s.storeRange(ctx, events, idx, &res, true)
}

// storeRange stores the rows idx of events in one transaction, bisecting on data errors.
// retryPartition allows one re-ensure of the partitions after a "no partition" error.
func (s *Store) storeRange(ctx context.Context, events []event.Event, idx []int, res *Result, retryPartition bool) error {
	err := s.storeTx(ctx, events, idx, res)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	switch Classify(err) {
	case KindNoPartition:
		if retryPartition {
			// A partition the cache believed in is gone (retention, a restore) or the
			// cache is stale: forget it, ensure again, retry once.
			s.forgetDays()
			sub := make([]event.Event, len(idx))
			for i, j := range idx {
				sub[i] = events[j]
			}
			if err := s.ensureDays(ctx, sub); err != nil {
				return err
			}
			return s.storeRange(ctx, events, idx, res, false)
		}
		// Still no partition right after creating it: treat the rows as refused.
		fallthrough
	case KindData:
		res.DataErrors++
		if len(idx) == 1 {
			res.Outcomes[idx[0]] = Rejected
			if res.Rejections == nil {
				res.Rejections = map[int]Rejection{}
			}
			res.Rejections[idx[0]] = rejection(err)
			return nil
		}
		// Bisect: each half in its own transaction. Halves that commit are final even
		// if a later half fails transiently; the caller retries only Pending rows.
		mid := len(idx) / 2
		if err := s.storeRange(ctx, events, idx[:mid], res, retryPartition); err != nil {
			return err
		}
		return s.storeRange(ctx, events, idx[mid:], res, retryPartition)
	default:
		return err
	}
}

// storeTx runs one transaction for the rows idx and records their outcomes if it commits.
func (s *Store) storeTx(ctx context.Context, events []event.Event, idx []int, res *Result) (err error) {
	start := time.Now()
	if s.opts.OnTx != nil {
		defer func() { s.opts.OnTx(len(idx), time.Since(start), err) }()
	}
	ctx, cancel := s.txContext(ctx)
	defer cancel()
	fresh, unknown, err := s.runTx(ctx, events, idx)
	if err != nil {
		return wrap(err)
	}
	for _, i := range idx {
		ev := &events[i]
		k := keyOf(ev)
		switch {
		case unknown[ev.ProjectID]:
			res.Outcomes[i] = UnknownProject
		case fresh[k]:
			res.Outcomes[i] = Stored
			delete(fresh, k) // a later copy of the same event in this batch is a duplicate
		default:
			res.Outcomes[i] = Duplicate
		}
	}
	return nil
}

func (s *Store) runTx(ctx context.Context, events []event.Event, idx []int) (map[key]bool, map[uuid.UUID]bool, error) {
	// The rows to gate: one per (project, id), the earliest received_at winning (then
	// the first in the batch), in key order so that concurrent consumers lock alike.
	order := slices.Clone(idx)
	slices.SortStableFunc(order, func(a, b int) int {
		ea, eb := &events[a], &events[b]
		if c := compareKeys(keyOf(ea), keyOf(eb)); c != 0 {
			return c
		}
		return ea.ReceivedAt.Compare(eb.ReceivedAt)
	})
	gate := order[:0]
	for _, i := range order {
		if n := len(gate); n > 0 && keyOf(&events[gate[n-1]]) == keyOf(&events[i]) {
			continue // a later copy of the same event
		}
		gate = append(gate, i)
	}
	gp := newGateParams(events, gate)

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	rows, err := tx.Query(ctx, gateSQL, gp.projects, gp.ids, gp.received, gp.distinct)
	if err != nil {
		return nil, nil, fmt.Errorf("gating %d rows: %w", len(gate), err)
	}
	fresh := make(map[key]bool, len(gate))
	var unknown map[uuid.UUID]bool
	var project, id pgtype.UUID
	_, err = pgx.ForEachRow(rows, []any{&project, &id}, func() error {
		if !id.Valid {
			if unknown == nil {
				unknown = map[uuid.UUID]bool{}
			}
			unknown[project.Bytes] = true
			return nil
		}
		fresh[key{project.Bytes, id.Bytes}] = true
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("gating %d rows: %w", len(gate), err)
	}
	if len(fresh) > 0 {
		store := make([]int, 0, len(fresh))
		counts := map[rollupKey]int64{}
		for _, i := range gate {
			ev := &events[i]
			if !fresh[keyOf(ev)] {
				continue
			}
			store = append(store, i)
			counts[rollupKey{ev.ProjectID, minuteOf(ev.ReceivedAt), ev.Type}]++
		}
		src := &rowSource{events: events, idx: store, pos: -1}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, eventColumns, src); err != nil {
			return nil, nil, fmt.Errorf("copying %d rows: %w", len(store), err)
		}
		keys := make([]rollupKey, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareRollupKeys)
		rp := ptrs(make([]pgtype.UUID, len(keys)))
		rm := ptrs(make([]pgtype.Timestamptz, len(keys)))
		rt := make([]string, len(keys))
		rc := make([]int64, len(keys))
		for n, k := range keys {
			*rp[n] = pgtype.UUID{Bytes: k.project, Valid: true}
			*rm[n] = pgtype.Timestamptz{Time: time.Unix(k.minute, 0).UTC(), Valid: true}
			rt[n], rc[n] = k.typ, counts[k]
		}
		if _, err := tx.Exec(ctx, rollupSQL, rp, rm, rt, rc); err != nil {
			return nil, nil, fmt.Errorf("counting %d rows: %w", len(store), err)
		}
	}
	// Fault tests: the rows are written but not committed (nothing may become visible).
	failpoint.Hit("consumer/before-db-commit")
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, fmt.Errorf("committing %d rows: %w", len(idx), err)
	}
	return fresh, unknown, nil
}

// gateParams are gateSQL's array arguments. The elements are pointers to pgtype values:
// pgx encodes an array element by element through an interface, and a pointer to a
// type that implements pgtype's UUIDValuer or TimestamptzValuer goes through without
// being copied to the heap, where a [16]byte or a time.Time would be (two allocations
// per row of every batch otherwise).
type gateParams struct {
	projects, ids, distinct []*pgtype.UUID
	received                []*pgtype.Timestamptz
}

func newGateParams(events []event.Event, gate []int) gateParams {
	p := gateParams{
		projects: ptrs(make([]pgtype.UUID, len(gate))),
		ids:      ptrs(make([]pgtype.UUID, len(gate))),
		received: ptrs(make([]pgtype.Timestamptz, len(gate))),
	}
	for n, i := range gate {
		ev := &events[i]
		*p.projects[n] = pgtype.UUID{Bytes: ev.ProjectID, Valid: true}
		*p.ids[n] = pgtype.UUID{Bytes: ev.ID, Valid: true}
		*p.received[n] = pgtype.Timestamptz{Time: ev.ReceivedAt, Valid: true}
		if len(p.distinct) == 0 || p.distinct[len(p.distinct)-1].Bytes != ev.ProjectID {
			p.distinct = append(p.distinct, p.projects[n])
		}
	}
	return p
}

// ptrs returns pointers to the elements of s.
func ptrs[T any](s []T) []*T {
	p := make([]*T, len(s))
	for i := range s {
		p[i] = &s[i]
	}
	return p
}

// rowSource feeds the rows idx of events to CopyFrom, reusing one values slice and one
// set of pgtype values (pgx encodes each row before asking for the next); see gateParams
// for why they are passed as pointers. The values follow pkg/event's field table
// (eventColumns), each mapped by the type of the field.
type rowSource struct {
	events []event.Event
	idx    []int
	pos    int
	vals   [len(event.Fields)]any
	slots  [len(event.Fields)]rowSlot
}

// rowSlot holds the pgtype value of one column of the current row.
type rowSlot struct {
	uuid pgtype.UUID
	text pgtype.Text
	time pgtype.Timestamptz
}

func (r *rowSource) Next() bool {
	r.pos++
	if r.pos == len(r.idx)/2 {
		// Fault tests: half of the rows are on their way to the server (compiled out
		// without the failpoints build tag).
		failpoint.Hit("consumer/mid-copy")
	}
	return r.pos < len(r.idx)
}
func (r *rowSource) Err() error { return nil }

func (r *rowSource) Values() ([]any, error) {
	ev := &r.events[r.idx[r.pos]]
	for i := range event.Fields {
		f, slot := &event.Fields[i], &r.slots[i]
		switch p := f.Ptr(ev).(type) {
		case *uuid.UUID:
			slot.uuid = pgtype.UUID{Bytes: *p, Valid: true}
			r.vals[i] = &slot.uuid
		case *string:
			slot.text = pgtype.Text{String: *p, Valid: *p != "" || !f.Nullable}
			r.vals[i] = &slot.text
		case *time.Time:
			slot.time = pgtype.Timestamptz{Time: *p, Valid: true}
			r.vals[i] = &slot.time
		case *[]byte: // jsonb; nil is NULL
			if *p != nil {
				r.vals[i] = *p
			} else {
				r.vals[i] = nil
			}
		default:
			return nil, fmt.Errorf("event field %s: unsupported type %T", f.Column, p)
		}
	}
	return r.vals[:], nil
}

// EnsureAhead makes sure the partitions from yesterday to a week ahead exist, so a
// quiet consumer never meets midnight without tomorrow's partition. The consumer calls
// it periodically.
func (s *Store) EnsureAhead(ctx context.Context) error {
	ctx, cancel := s.txContext(ctx)
	defer cancel()
	today := s.opts.Now().UTC()
	from, to := today.AddDate(0, 0, -1), today.AddDate(0, 0, 7)
	if _, err := pgstore.EnsurePartitions(ctx, s.pool, from, to); err != nil {
		return wrap(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for d := unixDay(from); d <= unixDay(to); d++ {
		s.days[d] = struct{}{}
	}
	return nil
}

// ensureDays creates the partitions of the events' receive days that the cache does
// not know, one day at a time (a batch normally spans one day, two around midnight;
// replayed old events may add a few distant days, and a range would create every day
// in between).
func (s *Store) ensureDays(ctx context.Context, events []event.Event) error {
	var missing []int64
	s.mu.Lock()
	for i := range events {
		d := unixDay(events[i].ReceivedAt)
		if _, ok := s.days[d]; ok {
			continue
		}
		dup := false
		for _, m := range missing {
			if m == d {
				dup = true
				break
			}
		}
		if !dup {
			missing = append(missing, d)
		}
	}
	s.mu.Unlock()
	for _, d := range missing {
		day := time.Unix(d*86400, 0).UTC()
		tctx, cancel := s.txContext(ctx)
		_, err := pgstore.EnsurePartitions(tctx, s.pool, day, day)
		cancel()
		if err != nil {
			return wrap(err)
		}
		s.mu.Lock()
		if len(s.days) > 10000 { // bound the cache; it refills cheaply
			clear(s.days)
		}
		s.days[d] = struct{}{}
		s.mu.Unlock()
	}
	return nil
}

// txContext bounds one database round of work by Options.TxTimeout.
func (s *Store) txContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.opts.TxTimeout > 0 {
		return context.WithTimeout(ctx, s.opts.TxTimeout)
	}
	return context.WithCancel(ctx)
}

func (s *Store) forgetDays() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.days)
}

func unixDay(t time.Time) int64 {
	u := t.Unix()
	d := u / 86400
	if u < 0 && u%86400 != 0 {
		d-- // floor for times before 1970
	}
	return d
}

// wrap turns a driver error into an *Error with its Kind. Callers that need to tell
// their own cancellation apart check their context.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Kind: Classify(err), Err: err}
}

// minuteOf returns the start of t's UTC minute in unix seconds (date_trunc('minute', t, 'UTC')).
func minuteOf(t time.Time) int64 {
	u := t.Unix()
	m := u % 60
	if m < 0 {
		m += 60 // floor for times before 1970
	}
	return u - m
}

func compareKeys(a, b key) int {
	if c := bytes.Compare(a.project[:], b.project[:]); c != 0 {
		return c
	}
	return bytes.Compare(a.id[:], b.id[:])
}

func compareRollupKeys(a, b rollupKey) int {
	if c := bytes.Compare(a.project[:], b.project[:]); c != 0 {
		return c
	}
	if c := cmp.Compare(a.minute, b.minute); c != 0 {
		return c
	}
	return strings.Compare(a.typ, b.typ)
}
