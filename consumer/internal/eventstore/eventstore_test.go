package eventstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/faultproxy"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

type testBundle struct {
	url      string
	pool     *pgxpool.Pool
	projects []uuid.UUID
}

func setup(t testing.TB, projects int) *testBundle {
	t.Helper()
	dbURL, pool := pgtest.NewDB(t)
	b := &testBundle{url: dbURL, pool: pool}
	ctx := context.Background()
	u, err := pgstore.UpsertUser(ctx, pool, "Store Test", "store@example.com", "x")
	require.NoError(t, err)
	for i := range projects {
		p, err := pgstore.CreateProject(ctx, pool, u.ID, "p"+strconv.Itoa(i))
		require.NoError(t, err)
		b.projects = append(b.projects, p.ID)
	}
	return b
}

// makeEvents returns n realistic events for project, received around now.
func makeEvents(t testing.TB, project uuid.UUID, n int, now time.Time) []event.Event {
	t.Helper()
	evs := make([]event.Event, n)
	types := []string{event.TypeEvent, event.TypeError, event.TypeMetric}
	for i := range evs {
		id, err := uuid.NewV7()
		require.NoError(t, err)
		recv := now.Add(time.Duration(i) * time.Millisecond).UTC().Truncate(event.Precision)
		evs[i] = event.Event{
			ID:        id,
			ProjectID: project,
			Type:      types[i%len(types)],
			Name:      "checkout.completed",
			Payload: []byte(fmt.Sprintf(`{"amount":%d,"currency":"EUR","items":[{"sku":"A-%d","qty":2}],"user":{"id":"u-%d","plan":"pro"}}`,
				i, i, i%97)),
			Timestamp:  recv.Add(-time.Second),
			ReceivedAt: recv,
		}
		if i%2 == 0 {
			evs[i].Context = []byte(`{"os":"android","appVersion":"3.2.1","locale":"de-DE"}`)
		}
	}
	return evs
}

func countRows(t testing.TB, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

func TestStoreExactlyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	ctx := context.Background()
	s := New(b.pool, Options{TxTimeout: 30 * time.Second})
	now := time.Now()

	evs := append(makeEvents(t, b.projects[0], 40, now), makeEvents(t, b.projects[1], 25, now)...)
	// The same event twice in one batch (a producer retry) is stored once.
	evs = append(evs, evs[3])

	res, err := s.Store(ctx, evs)
	require.NoError(t, err)
	require.Equal(t, 65, res.Count(Stored))
	require.Equal(t, 1, res.Count(Duplicate))
	require.Equal(t, Stored, res.Outcomes[3], "the first copy is the stored one")
	require.Equal(t, Duplicate, res.Outcomes[65])

	require.Equal(t, 65, countRows(t, b.pool, `SELECT count(*) FROM events`))
	require.Equal(t, 65, countRows(t, b.pool, `SELECT count(DISTINCT (project_id, id)) FROM events`))
	require.Equal(t, 65, countRows(t, b.pool, `SELECT count(*) FROM event_ids`))
	require.Equal(t, 40, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups WHERE project_id = $1`, b.projects[0]))
	require.Equal(t, 25, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups WHERE project_id = $1`, b.projects[1]))
	// Rollups count per UTC minute and type.
	require.Zero(t, countRows(t, b.pool, `
		SELECT count(*) FROM event_rollups r FULL JOIN (
			SELECT project_id, date_trunc('minute', received_at, 'UTC') AS minute, type, count(*) AS n
			FROM events GROUP BY 1, 2, 3) e USING (project_id, minute, type)
		WHERE r.count IS DISTINCT FROM e.n`))
	// What is stored is what was sent.
	var name, typ string
	var payload, evctx []byte
	var project uuid.UUID
	var ts, recv time.Time
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT project_id, type, name, payload::text, context::text, "timestamp", received_at FROM events WHERE id = $1`, evs[0].ID).
		Scan(&project, &typ, &name, &payload, &evctx, &ts, &recv))
	require.Equal(t, evs[0].ProjectID, project)
	require.Equal(t, evs[0].Type, typ)
	require.Equal(t, evs[0].Name, name)
	require.True(t, evs[0].Timestamp.Equal(ts), "timestamp %v, stored %v", evs[0].Timestamp, ts)
	require.True(t, evs[0].ReceivedAt.Equal(recv), "received_at %v, stored %v", evs[0].ReceivedAt, recv)
	require.Equal(t, 1, countRows(t, b.pool, `SELECT count(*) FROM event_ids WHERE project_id = $1 AND id = $2 AND received_at = $3`,
		evs[0].ProjectID, evs[0].ID, evs[0].ReceivedAt))
	require.JSONEq(t, string(evs[0].Payload), string(payload))
	require.JSONEq(t, string(evs[0].Context), string(evctx))

	// Redelivery of the whole batch: nothing new, rollups unchanged.
	res, err = s.Store(ctx, evs)
	require.NoError(t, err)
	require.Equal(t, len(evs), res.Count(Duplicate))
	require.Equal(t, 65, countRows(t, b.pool, `SELECT count(*) FROM events`))
	require.Equal(t, 65, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups`))

	// The same event received again later (a client retry crossing midnight gets a new
	// received_at) is still a duplicate: the gate is (project, id), not the partition.
	again := evs[0]
	again.ReceivedAt = again.ReceivedAt.Add(36 * time.Hour)
	res, err = s.Store(ctx, []event.Event{again})
	require.NoError(t, err)
	require.Equal(t, []Outcome{Duplicate}, res.Outcomes)
}

func TestStoreUnknownProject(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	s := New(b.pool, Options{})
	now := time.Now()
	good := makeEvents(t, b.projects[0], 5, now)
	ghost := makeEvents(t, uuid.New(), 3, now)
	evs := append(append([]event.Event{}, ghost[:2]...), append(good, ghost[2])...)

	res, err := s.Store(context.Background(), evs)
	require.NoError(t, err)
	require.Equal(t, 5, res.Count(Stored))
	require.Equal(t, 3, res.Count(UnknownProject))
	require.Equal(t, []Outcome{UnknownProject, UnknownProject, Stored, Stored, Stored, Stored, Stored, UnknownProject}, res.Outcomes)
	require.Equal(t, 5, countRows(t, b.pool, `SELECT count(*) FROM events`))
	require.Equal(t, 5, countRows(t, b.pool, `SELECT count(*) FROM event_ids`))
	require.Equal(t, 5, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups`))
}

func TestStoreBisectsRowsPostgresRefuses(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	s := New(b.pool, Options{})
	evs := makeEvents(t, b.projects[0], 100, time.Now())
	// Rows that bypassed the decoder's guarantees: jsonb and text refuse them.
	evs[17].Payload = []byte(`{"a":`)
	evs[60].Name = "nul\x00byte"
	evs[61].Payload = []byte(`{"s":"\u0000"}`)

	res, err := s.Store(context.Background(), evs)
	require.NoError(t, err)
	require.Equal(t, 97, res.Count(Stored))
	require.Equal(t, 3, res.Count(Rejected))
	require.Positive(t, res.DataErrors)
	for _, i := range []int{17, 60, 61} {
		require.Equal(t, Rejected, res.Outcomes[i], "row %d", i)
		require.Regexp(t, `^22`, res.Rejections[i].Code, "row %d", i)
		require.NotEmpty(t, res.Rejections[i].Message)
	}
	require.Len(t, res.Rejections, 3)
	require.Equal(t, 97, countRows(t, b.pool, `SELECT count(*) FROM events`))
	require.Equal(t, 97, countRows(t, b.pool, `SELECT count(*) FROM event_ids`))
	require.Equal(t, 97, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups`))
}

func TestStoreCreatesMissingPartitions(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx := context.Background()
	s := New(b.pool, Options{})
	// A day far from today has no partition until the store needs it.
	far := time.Date(2033, 3, 4, 10, 0, 0, 0, time.UTC)
	res, err := s.Store(ctx, makeEvents(t, b.projects[0], 3, far))
	require.NoError(t, err)
	require.Equal(t, 3, res.Count(Stored))
	require.Equal(t, 1, countRows(t, b.pool, `SELECT count(*) FROM pg_class WHERE relname = 'events_20330304'`))

	// The partition disappears behind the cache's back (retention, a restore): the store
	// notices, ensures again and stores.
	_, err = b.pool.Exec(ctx, `DROP TABLE events_20330304`)
	require.NoError(t, err)
	res, err = s.Store(ctx, makeEvents(t, b.projects[0], 2, far))
	require.NoError(t, err)
	require.Equal(t, 2, res.Count(Stored))
	require.Equal(t, 2, countRows(t, b.pool, `SELECT count(*) FROM events_20330304`))
}

func TestEnsureAhead(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	now := time.Date(2035, 6, 30, 23, 59, 0, 0, time.UTC)
	s := New(b.pool, Options{Now: func() time.Time { return now }})
	require.NoError(t, s.EnsureAhead(context.Background()))
	require.Equal(t, 9, countRows(t, b.pool, `SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname BETWEEN 'events_20350629' AND 'events_20350707'`))
}

func TestStoreTransientErrorKeepsRowsPending(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx := context.Background()
	u, err := url.Parse(b.url)
	require.NoError(t, err)
	proxy := faultproxy.New(t, u.Host)
	u.Host = proxy.Addr()
	pool, err := pgstore.Open(ctx, u.String(), pgstore.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	defer pool.Close()

	s := New(pool, Options{TxTimeout: 5 * time.Second})
	evs := makeEvents(t, b.projects[0], 10, time.Now())
	proxy.Cut()
	res, err := s.Store(ctx, evs)
	var serr *Error
	require.ErrorAs(t, err, &serr)
	require.Equal(t, KindTransient, serr.Kind)
	require.Equal(t, 10, res.Count(Pending))
	require.Zero(t, countRows(t, b.pool, `SELECT count(*) FROM events`))

	proxy.Restore()
	res, err = s.Store(ctx, evs)
	require.NoError(t, err)
	require.Equal(t, 10, res.Count(Stored))
}

// Two consumers storing the same events at once (a rebalance) store each exactly once
// and do not deadlock.
func TestStoreConcurrentOverlap(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	s := New(b.pool, Options{TxTimeout: 30 * time.Second})
	now := time.Now()
	evs := append(makeEvents(t, b.projects[0], 300, now), makeEvents(t, b.projects[1], 300, now)...)
	reversed := make([]event.Event, len(evs))
	for i := range evs {
		reversed[len(evs)-1-i] = evs[i]
	}
	var wg sync.WaitGroup
	results := make([]Result, 4)
	errs := make([]error, 4)
	for i := range results {
		batch := evs
		if i%2 == 1 {
			batch = reversed
		}
		wg.Go(func() { results[i], errs[i] = s.Store(context.Background(), batch) })
	}
	wg.Wait()
	stored := 0
	for i := range results {
		require.NoError(t, errs[i])
		stored += results[i].Count(Stored)
	}
	require.Equal(t, 600, stored)
	require.Equal(t, 600, countRows(t, b.pool, `SELECT count(*) FROM events`))
	require.Equal(t, 600, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups`))
}

func TestClassify(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("storing: %w", &pgconn.PgError{Code: code, Message: "m"}) }
	cases := []struct {
		err  error
		want Kind
	}{
		{pg("08006"), KindTransient},
		{pg("53300"), KindTransient},
		{pg("57P01"), KindTransient},
		{pg("57P03"), KindTransient},
		{pg("40001"), KindTransient},
		{pg("40P01"), KindTransient},
		{pg("25006"), KindTransient},
		{pg("57014"), KindTransient},
		{pg("22P02"), KindData},
		{pg("22021"), KindData},
		{pg("23502"), KindData},
		{pg("23514"), KindData},
		{pg("54000"), KindData},
		{&pgconn.PgError{Code: "23514", Message: `no partition of relation "events" found for row`}, KindNoPartition},
		{pg("42P01"), KindUnexpected},
		{pg("XX000"), KindUnexpected},
		{context.DeadlineExceeded, KindTransient},
		{errors.New("unexpected EOF"), KindTransient},
		{&Error{Kind: KindUnexpected, Err: errors.New("x")}, KindUnexpected},
	}
	for _, c := range cases {
		require.Equal(t, c.want, Classify(c.err), "%v", c.err)
	}
}

// Rollups count in the UTC minute PostgreSQL's date_trunc would give, at minute
// boundaries and before 1970 too.
func TestStoreRollupMinutes(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx := context.Background()
	s := New(b.pool, Options{})
	var evs []event.Event
	for _, at := range []time.Time{
		time.Date(2031, 5, 6, 12, 0, 59, 999999000, time.UTC),
		time.Date(2031, 5, 6, 12, 1, 0, 0, time.UTC),
		time.Date(2031, 5, 6, 12, 1, 0, 0, time.FixedZone("x", 5*3600+30*60)), // another minute, same UTC rule
		time.Date(1969, 12, 31, 23, 59, 59, 500000000, time.UTC),
	} {
		evs = append(evs, makeEvents(t, b.projects[0], 2, at)...)
	}
	res, err := s.Store(ctx, evs)
	require.NoError(t, err)
	require.Equal(t, len(evs), res.Count(Stored))
	require.Zero(t, countRows(t, b.pool, `
		SELECT count(*) FROM event_rollups r FULL JOIN (
			SELECT project_id, date_trunc('minute', received_at, 'UTC') AS minute, type, count(*) AS n
			FROM events GROUP BY 1, 2, 3) e USING (project_id, minute, type)
		WHERE r.count IS DISTINCT FROM e.n`))
	require.Equal(t, 2, countRows(t, b.pool, `SELECT sum(count)::int FROM event_rollups WHERE minute = '1969-12-31T23:59:00Z'`))
}

func TestMinuteOf(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		at   time.Time
		want string
	}{
		{time.Date(2031, 5, 6, 12, 0, 59, 999999999, time.UTC), "2031-05-06T12:00:00Z"},
		{time.Date(2031, 5, 6, 12, 1, 0, 0, time.UTC), "2031-05-06T12:01:00Z"},
		{time.Date(1969, 12, 31, 23, 59, 0, 1, time.UTC), "1969-12-31T23:59:00Z"},
		{time.Date(1969, 12, 31, 23, 58, 59, 0, time.UTC), "1969-12-31T23:58:00Z"},
		{time.Date(2031, 5, 6, 17, 31, 30, 0, time.FixedZone("x", 5*3600+30*60)), "2031-05-06T12:01:00Z"},
	} {
		require.Equal(t, c.want, time.Unix(minuteOf(c.at), 0).UTC().Format(time.RFC3339), "%v", c.at)
	}
}
