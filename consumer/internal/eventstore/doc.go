// Package eventstore writes batches of decoded events to PostgreSQL exactly once. It is
// the consumer's storage boundary: pgx errors are classified here (Kind) so that the
// consumer only decides between "back off and retry the same batch" and "done".
//
// # One transaction per batch
//
// A batch is copied (binary COPY) into a per-connection temporary staging table, then one
// statement with data-modifying CTEs does the rest, so a batch is either entirely stored
// or not at all:
//
//  1. staged: the batch's rows, DISTINCT ON (project_id, id) so a message produced twice
//     into the same batch counts once (the earliest received_at wins);
//  2. known: the batch's projects that exist, locked FOR KEY SHARE in id order so a
//     concurrent project deletion waits for this transaction instead of leaving
//     orphans behind it (and two consumers never lock them in opposite orders);
//  3. fresh: INSERT INTO event_ids … ON CONFLICT DO NOTHING RETURNING, the dedup gate
//     (RELIABILITY.md X2 option a). Only what this returns is new: redelivery, replays
//     and producer retries all end here as conflicts;
//  4. INSERT INTO events exactly the fresh rows;
//  5. upsert event_rollups (project, UTC minute, type) += count of the fresh rows, in key
//     order so concurrent consumers cannot deadlock on rollup rows.
//
// The statement returns the fresh (project_id, id) pairs and the projects that do not
// exist; Store turns that into one Outcome per input row.
//
// # Why the staging table is created in the transaction
//
// Temporary tables live per connection, and COPY cannot do ON CONFLICT (pgx #437, #992),
// hence the staging table (RELIABILITY.md X1). Three ways were measured with
// BenchmarkStore (bench_test.go; PostgreSQL 15 on the 2-CPU development machine, 20
// batches × 3 runs each): all three store 50–57k rows/s at 1,000 rows and 56–67k rows/s
// at 5,000 rows, i.e. the choice is within noise, because the per-row work (COPY, three
// inserts, index maintenance) dwarfs one extra statement per batch. So the choice is made
// on robustness:
//
//   - CREATE TEMP TABLE IF NOT EXISTS … ON COMMIT DELETE ROWS in every transaction
//     (chosen): one extra round trip per batch, nothing to configure on the pool (which
//     belongs to the caller: the all-in-one shares one pool between services), works on
//     any pooled connection including ones opened after a Postgres restart, and the table
//     and the cached statements that reference it stay valid across batches;
//   - ON COMMIT DROP (X1's suggestion): just as fast here, but every batch inserts and
//     deletes pg_class/pg_attribute/pg_type rows, which bloats the system catalogs at
//     tens of batches per second and invalidates cached plans on every batch;
//   - once per connection in pgxpool's AfterConnect: saves the round trip, but the
//     consumer would depend on how whoever built the pool configured it.
//
// ON COMMIT DELETE ROWS empties the table at every commit of a transaction that touched
// it (PostgreSQL skips the truncate in transactions that did not), and a rollback
// discards the rows anyway, so a failed batch never leaks into the next one.
//
// # Errors
//
// Data errors (SQLSTATE classes 22, 23 and 54: a row PostgreSQL refuses) are handled
// here: the batch is bisected, each half in its own transaction, until the rows that
// fail alone are found; they become Rejected outcomes with their SQLSTATE and message,
// and every other row is stored. A "no partition of relation" error (23514 without a
// constraint) is not a data error: the partition cache is dropped, the partitions are
// ensured again and the batch retried once. Everything else is returned as an *Error
// whose Kind says whether it is a known transient condition (connection loss, class
// 08, 53, 57P0x, 40001, 40P01, 25006, a deadline) or unexpected; the caller retries the
// same rows either way, because dropping events for an error nobody understands would
// break promise 2, while stalling is visible (readiness, lag, alerts).
//
// Progress survives transient errors: Store returns the outcomes decided so far (for
// example the halves of a bisection that committed) and the caller retries only the
// rows still Pending.
package eventstore
