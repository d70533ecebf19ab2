// Package consumer is PulseBoard's Kafka → PostgreSQL → Redis stage: one member of the
// consumer group (Config.GroupID) that stores every event of the events topic exactly
// once and publishes the newly stored ones to the live feed. It keeps docs/reliability.md
// promises 2, 5, 8–11 and 13; the standalone binary is cmd/consumer, and the all-in-one
// wires the same New/Run.
//
// # The loop
//
// Two goroutines, each owning its part: the fetcher forms and decodes the next batch
// while Run's goroutine takes the last one through steps 3 to 6, so Postgres is not
// left idle while a batch is fetched and decoded (sequential, the store was busy ~80 %
// of the time at the store ceiling; pipelined ~97 %, which raised the ceiling ~11 %
// on the development machine). At most two batches are in hand, and they are processed
// one at a time, in fetch order, so offsets are committed in order and only after their
// rows. More store throughput comes from more consumers in the group: each takes its
// own partitions, and their transactions run side by side.
//
//  1. fetch: FetchMessage (never ReadMessage, K10) until BatchSize messages or BatchWait
//     after the first one, or, once the batch holds every message fetched so far, as
//     long as the last store took (group commit: batches grow with the load);
//  2. decode: event.Decoder.DecodeMessage; what fails becomes a dead letter with the
//     *event.Error code and message, and so does an event received more than
//     MaxClockSkew in the future (it would create partitions for a forged date);
//  3. store: internal/eventstore, one transaction per batch (the event_ids dedup gate,
//     then a COPY of the fresh rows into events, then the rollups). Rows of unknown
//     projects and rows PostgreSQL refuses (found by bisection) become dead letters;
//  4. dead letters: written with acks=all to the dead-letter topic, with the original
//     key, value and headers plus pulseboard-dlq-{reason,code,topic,partition,offset,
//     time}, retried until Kafka takes them;
//  5. commit: CommitMessages (synchronous, K11) with the highest offset of each
//     partition in the batch, all of whose messages are now stored or dead-lettered;
//  6. publish: the newly stored events' canonical JSON on redisx.EventsChannel, in
//     offset order, through internal/livefeed's bounded queue (best-effort).
//
// # Failures
//
// A crash (or a Hooks failpoint) before the offset commit (step 5) means the batch is
// redelivered, and the dedup gate turns every row stored before the crash into a
// counted duplicate: nothing is lost, nothing is stored twice. What a crash can lose is
// live-feed messages: those of a batch whose offsets were committed but which was not
// yet published, and those of rows stored by the crashed member before its offset
// commit (its successor sees them as duplicates and does not publish them again, so
// that a replay never floods live clients with old events). Live clients recover those
// through the query API.
//
// When PostgreSQL fails transiently (see eventstore.Kind) the same in-memory batch is
// retried with exponential, jittered backoff (BackoffMin to BackoffMax), nothing is
// committed and nothing more is fetched than the next batch, so memory stays bounded by
// two batches plus kafka-go's prefetch queue; readiness reports the failure, and
// pulseboard_consumer_oldest_message_age_seconds grows. When the database is back the
// backlog drains without a restart. Errors nobody classified are retried too: stalling
// is visible (readiness, lag, age), dropping events is not. Dead-letter writes are
// retried the same way, because the offsets past a dead letter wait for it.
//
// When ctx is cancelled, Run finishes the batches in hand — store, dead letters, commit,
// publish — within ShutdownTimeout, then closes the reader (which leaves the group) and
// returns nil. A batch that cannot finish in time (the database is down) stays
// uncommitted and Run says so.
//
// # Rebalances
//
// kafka-go's Reader has no revocation callback and commits messages it fetched before a
// rebalance through the next generation, which moved committed offsets backwards (K12;
// the fault tests reproduced it with a slow member). The consumer therefore reads
// through kafkax.GroupReader: every message carries the group generation it was
// fetched in and is committed through it, so the coordinator refuses commits of a
// generation that has ended (logged and counted as a failed commit; the partition's
// new owner reads those messages again and the dedup gate absorbs them). Messages of an
// ended generation still queued are dropped before they reach a batch. The lag gauge of
// a partition that moved keeps its last value until it is assigned here again.
package consumer
