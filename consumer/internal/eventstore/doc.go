// Package eventstore writes batches of decoded events to PostgreSQL exactly once. It is
// the consumer's storage boundary: pgx errors are classified here (Kind) so that the
// consumer only decides between "back off and retry the same batch" and "done".
//
// # One transaction per batch
//
// A batch is stored in one transaction, so it is either entirely stored or not at all:
//
//  1. in Go: the batch's distinct (project_id, id) pairs, sorted, so that a message
//     produced twice into the same batch counts once (the earliest received_at wins);
//  2. the gate statement (gateSQL): known, the batch's projects that exist, locked FOR
//     KEY SHARE in id order so that a concurrent project deletion waits for this
//     transaction instead of leaving orphans behind it; then INSERT INTO event_ids …
//     SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING, the dedup gate
//     (docs/reliability.md X2 option a), in key order so two consumers never lock in opposite
//     orders. Only what this returns is new: redelivery, replays and producer retries
//     all end here as conflicts. It also returns the projects that do not exist;
//  3. binary COPY of exactly the fresh rows straight into events (partition routing is
//     PostgreSQL's);
//  4. in Go: the fresh rows counted per (project, UTC minute, type), then one upsert of
//     event_rollups from arrays in key order.
//
// Store turns the gate's answer into one Outcome per input row.
//
// # Why no staging table
//
// COPY cannot do ON CONFLICT (pgx #437, #992), which is why docs/reliability.md X1 suggests
// COPY into a temporary staging table and one INSERT … SELECT … ON CONFLICT from it. Here
// the conflicts are decided before the COPY, by the gate insert on (project_id, id) only
// (three small columns, sent as arrays), and events itself has no unique constraint, so
// the COPY that follows can never conflict. That writes every event row once instead of
// twice (staging heap, then events) and drops the staging sort and joins; the earlier
// staging design was measured against this one with BenchmarkStore (bench_test.go;
// PostgreSQL 15 on the 2-CPU development machine, 20 batches × 4 runs, medians): 31.0k
// → 34.1k rows/s at 1,000 rows (+10 %) and 33.5k → 40.7k rows/s at 5,000 rows (+21 %);
// bin/consumer draining the same 1.4M-event backlog, three alternating runs each
// (medians): 30.9k → 41.8k events/s, PostgreSQL's CPU per event 25.6 → 18.7 µs and the
// consumer's own 11.6 → 11.0 µs (the arrays and COPY values are passed as pointers to
// pgtype values, so that encoding allocates nothing per row).
// PostgreSQL's own cost per event is then about 10 µs for the gate (heap, the primary
// key and the received_at index; ON CONFLICT's speculative insertion adds about 60 %
// to a plain insert) and 14 µs for the COPY (jsonb parsing, heap, two indexes) on that
// machine.
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
