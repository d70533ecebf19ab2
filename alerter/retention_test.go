package alerter_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

// retentionBundle is a database and an alerter that is never Run: the tests call
// RunJob directly.
type retentionBundle struct {
	svc *alerter.Service
	now time.Time
}

func newRetention(t *testing.T) (*retentionBundle, *bundleDB) {
	t.Helper()
	_, pool := pgtest.NewDB(t)
	cfg, err := configForRetention()
	require.NoError(t, err)
	svc, err := alerter.New(cfg, alerter.Deps{
		Pool: pool, Brokers: []string{"127.0.0.1:1"},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	require.NoError(t, err)
	return &retentionBundle{svc: svc, now: time.Now().UTC()}, &bundleDB{pool: pool}
}

func day(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }

func partitionName(d time.Time) string { return "events_" + d.Format("20060102") }

// insertEvent stores one event (and its dedup row) as the consumer would.
func (db *bundleDB) insertEvent(t *testing.T, project uuid.UUID, at time.Time) uuid.UUID {
	t.Helper()
	id := uuid.New()
	ctx := context.Background()
	_, err := db.pool.Exec(ctx, `INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at) VALUES ($1, $2, 'error', 'e', '{}', $3, $3)`, id, project, at)
	require.NoError(t, err)
	_, err = db.pool.Exec(ctx, `INSERT INTO event_ids (project_id, id, received_at) VALUES ($1, $2, $3)`, project, id, at)
	require.NoError(t, err)
	_, err = db.pool.Exec(ctx, `INSERT INTO event_rollups (project_id, minute, type, count) VALUES ($1, date_trunc('minute', $2::timestamptz, 'UTC'), 'error', 1)
		ON CONFLICT (project_id, minute, type) DO UPDATE SET count = event_rollups.count + 1`, project, at)
	require.NoError(t, err)
	return id
}

func (db *bundleDB) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, db.pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

func (db *bundleDB) exists(t *testing.T, table string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, db.pool.QueryRow(context.Background(), `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok))
	return ok
}

// holdReader opens a transaction that reads events (ACCESS SHARE on it and every
// partition) and keeps it open for hold: the situation in which a DETACH that is not
// CONCURRENTLY queues an ACCESS EXCLUSIVE lock and stalls every insert behind it.
func (db *bundleDB) holdReader(t *testing.T, hold time.Duration) <-chan error {
	t.Helper()
	ctx := context.Background()
	tx, err := db.pool.Begin(ctx)
	require.NoError(t, err)
	var n int
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n))
	done := make(chan error, 1)
	go func() {
		_, err := tx.Exec(ctx, `SELECT pg_sleep($1)`, hold.Seconds()) // holds the lock, on purpose
		done <- errors.Join(err, tx.Commit(ctx))
	}()
	return done
}

// Retention drops exactly the day partitions wholly older than RETENTION_DAYS (30),
// while inserts go on unstalled; it prunes event_ids and rollups, and a project with a
// shorter retention loses only its own old events. A second run changes nothing.
func TestRetentionDropsOnlyOldPartitionsWithoutStallingIngest(t *testing.T) {
	t.Parallel()
	rb, db := newRetention(t)
	ctx := context.Background()
	now := rb.now
	_, err := pgstore.EnsurePartitions(ctx, db.pool, now.AddDate(0, 0, -40), now)
	require.NoError(t, err)
	u, err := pgstore.UpsertUser(ctx, db.pool, "R", "r@example.com", "x")
	require.NoError(t, err)
	p, err := pgstore.CreateProject(ctx, db.pool, u.ID, "default retention")
	require.NoError(t, err)
	q, err := pgstore.CreateProject(ctx, db.pool, u.ID, "three days")
	require.NoError(t, err)
	_, err = db.pool.Exec(ctx, `UPDATE projects SET retention_days = 3 WHERE id = $1`, q.ID)
	require.NoError(t, err)

	cutoff := day(now.AddDate(0, 0, -30))
	db.insertEvent(t, p.ID, day(now.AddDate(0, 0, -40)).Add(time.Hour))
	db.insertEvent(t, p.ID, cutoff.Add(-time.Minute)) // last minute of the last dropped day
	keptOld := db.insertEvent(t, p.ID, cutoff.Add(time.Minute))
	db.insertEvent(t, p.ID, now.AddDate(0, 0, -5))
	db.insertEvent(t, p.ID, now.Add(-time.Hour))
	db.insertEvent(t, q.ID, now.AddDate(0, 0, -10))
	db.insertEvent(t, q.ID, now.AddDate(0, 0, -5))
	db.insertEvent(t, q.ID, now.AddDate(0, 0, -3).Add(-time.Minute))
	keptQ := db.insertEvent(t, q.ID, now.AddDate(0, 0, -3).Add(2*time.Minute))
	db.insertEvent(t, q.ID, now.Add(-time.Hour))

	// Ingest goes on throughout; every insert's latency is recorded.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var worst atomic.Int64
	var inserts atomic.Int32
	var insertErr atomic.Pointer[error]
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			_, err := db.pool.Exec(ctx, `INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at) VALUES ($1, $2, 'event', 'live', '{}', now(), now())`, uuid.New(), p.ID)
			if err != nil {
				insertErr.Store(&err)
				return
			}
			inserts.Add(1)
			if d := int64(time.Since(start)); d > worst.Load() {
				worst.Store(d)
			}
		}
	}()
	reader := db.holdReader(t, 1500*time.Millisecond)

	res, err := rb.svc.RunJob(ctx, alerter.JobRetention, now)
	require.NoError(t, err)
	require.Equal(t, alerter.OutcomeSuccess, res.Outcome)
	require.NoError(t, <-reader)
	close(stop)
	wg.Wait()
	if e := insertErr.Load(); e != nil {
		t.Fatalf("an insert failed during retention: %v", *e)
	}
	require.Greater(t, inserts.Load(), int32(10))
	require.Less(t, time.Duration(worst.Load()), time.Second, "an insert stalled during retention")
	t.Logf("%d inserts during retention, worst latency %s; details %v", inserts.Load(), time.Duration(worst.Load()), res.Details)

	for d := day(now.AddDate(0, 0, -40)); d.Before(cutoff); d = d.Add(24 * time.Hour) {
		require.False(t, db.exists(t, partitionName(d)), "%s is wholly older than 30 days", partitionName(d))
	}
	for d := cutoff; !d.After(day(now)); d = d.Add(24 * time.Hour) {
		require.True(t, db.exists(t, partitionName(d)), "%s holds in-window data", partitionName(d))
	}
	require.True(t, db.exists(t, partitionName(day(now.AddDate(0, 0, 7)))), "partitions a week ahead")
	require.EqualValues(t, 10, res.Details["partitions_dropped"])

	// Project p: everything from the cutoff on is kept.
	require.Equal(t, 3, db.count(t, `SELECT count(*) FROM events WHERE project_id = $1 AND name = 'e'`, p.ID))
	require.Equal(t, 1, db.count(t, `SELECT count(*) FROM events WHERE id = $1`, keptOld))
	// Project q (3 days): only its events of the last 3 days.
	require.Equal(t, 2, db.count(t, `SELECT count(*) FROM events WHERE project_id = $1`, q.ID))
	require.Equal(t, 1, db.count(t, `SELECT count(*) FROM events WHERE id = $1`, keptQ))
	// event_ids and rollups follow.
	require.Zero(t, db.count(t, `SELECT count(*) FROM event_ids WHERE received_at < $1`, cutoff))
	require.Equal(t, 8, db.count(t, `SELECT count(*) FROM event_ids`), "dedup rows are pruned by the global retention only")
	require.Zero(t, db.count(t, `SELECT count(*) FROM event_rollups WHERE minute < $1`, cutoff))
	require.Zero(t, db.count(t, `SELECT count(*) FROM event_rollups WHERE project_id = $1 AND minute < $2`, q.ID, now.AddDate(0, 0, -3).Truncate(time.Minute)))
	require.Equal(t, 3, db.count(t, `SELECT coalesce(sum(count), 0)::int FROM event_rollups WHERE project_id = $1`, p.ID))

	// Idempotent: the next slot finds nothing to do.
	res, err = rb.svc.RunJob(ctx, alerter.JobRetention, now.Add(24*time.Hour))
	require.NoError(t, err)
	require.EqualValues(t, 0, res.Details["partitions_dropped"])
	require.EqualValues(t, 0, res.Details["project_events_deleted"])
	require.Equal(t, 2, db.count(t, `SELECT count(*) FROM job_runs WHERE job = 'retention' AND state = 'succeeded'`))
}

// A DETACH … CONCURRENTLY interrupted after its first phase leaves the partition
// "detach pending"; one detached but not dropped stays in the ledger. The next run
// FINALIZEs the first, drops both, and touches nothing in the window.
func TestRetentionResumesInterruptedDetachAndDrop(t *testing.T) {
	t.Parallel()
	rb, db := newRetention(t)
	ctx := context.Background()
	now := rb.now
	_, err := pgstore.EnsurePartitions(ctx, db.pool, now.AddDate(0, 0, -35), now.AddDate(0, 0, -29))
	require.NoError(t, err)
	u, err := pgstore.UpsertUser(ctx, db.pool, "R", "r@example.com", "x")
	require.NoError(t, err)
	p, err := pgstore.CreateProject(ctx, db.pool, u.ID, "p")
	require.NoError(t, err)
	pendingDay, detachedDay := day(now.AddDate(0, 0, -35)), day(now.AddDate(0, 0, -34))
	db.insertEvent(t, p.ID, pendingDay.Add(time.Hour))
	db.insertEvent(t, p.ID, now.AddDate(0, 0, -29))

	// Interrupt a concurrent detach in its second phase (waiting for a reader).
	reader := db.holdReader(t, 30*time.Second)
	detached := make(chan error, 1)
	go func() {
		_, err := db.pool.Exec(ctx, "ALTER TABLE events DETACH PARTITION "+partitionName(pendingDay)+" CONCURRENTLY")
		detached <- err
	}()
	require.Eventually(t, func() bool {
		return db.count(t, `SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass($1) AND inhdetachpending`, partitionName(pendingDay)) == 1
	}, waitFor, pollEvery)
	// Cancel it server-side (a client-side cancel may leave it running on the server).
	require.Eventually(t, func() bool {
		return db.count(t, `SELECT count(*) FROM (SELECT pg_cancel_backend(pid) FROM pg_stat_activity
			WHERE query LIKE 'ALTER TABLE events DETACH%' AND datname = current_database()) c`) == 1
	}, waitFor, pollEvery)
	require.Error(t, <-detached)
	_, err = db.pool.Exec(ctx, `SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND datname = current_database()`)
	require.NoError(t, err)
	<-reader
	require.Equal(t, 1, db.count(t, `SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass($1) AND inhdetachpending`, partitionName(pendingDay)),
		"left detach pending")

	// A run that died between detach and drop.
	_, err = db.pool.Exec(ctx, "ALTER TABLE events DETACH PARTITION "+partitionName(detachedDay))
	require.NoError(t, err)
	_, err = db.pool.Exec(ctx, `INSERT INTO retention_drops (partition, upper_bound, started_at) VALUES ($1, $2, now())`,
		partitionName(detachedDay), detachedDay.Add(24*time.Hour))
	require.NoError(t, err)

	res, err := rb.svc.RunJob(ctx, alerter.JobRetention, now)
	require.NoError(t, err)
	require.Equal(t, alerter.OutcomeSuccess, res.Outcome, "%v", res.Details)
	require.EqualValues(t, 1, res.Details["detaches_finalized"])
	require.False(t, db.exists(t, partitionName(pendingDay)))
	require.False(t, db.exists(t, partitionName(detachedDay)))
	require.Zero(t, db.count(t, `SELECT count(*) FROM retention_drops WHERE dropped_at IS NULL`))
	require.True(t, db.exists(t, partitionName(day(now.AddDate(0, 0, -29)))))
	require.Equal(t, 1, db.count(t, `SELECT count(*) FROM events`), "the in-window event")
}

type bundleDB struct{ pool *pgxpool.Pool }

func configForRetention() (alerter.Config, error) {
	cfg, err := config.Parse[alerter.Config](config.Env{})
	if err != nil {
		return cfg, err
	}
	cfg.RetentionBatchSize = 2 // many small batches
	return cfg, cfg.Validate()
}
