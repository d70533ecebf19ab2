// Package harness runs PulseBoard's fault-injection tests (docs/reliability.md, "Fault tests")
// against the real services as separate processes: it builds the binaries with the
// failpoints build tag, starts a standalone broker, Redis and the services on fixed
// loopback ports, drives ledger load through the Go SDK, injects faults (SIGKILL,
// SIGTERM, dependency outages, failpoints), and verifies after the fault has healed and
// the consumer lag is 0 that nothing acknowledged was lost, duplicated, invented or
// stored against a rejection, and that committed offsets never moved backwards. Each
// scenario becomes a row of a report (markdown and JSON) with its recovery times and
// resource ceilings.
//
// # API
//
//   - Binaries: Bin(t, "consumer") builds (once per test binary) and returns a binary
//     built with -tags failpoints; Main (TestMain) removes them and writes the report.
//   - Ports: Port(t) is a free loopback port below the ephemeral range, so it stays free
//     while its process is down and the process can restart on it.
//   - Processes: StartProc runs any command as a Proc with Kill (SIGKILL), Term
//     (SIGTERM within a bound), Start (again, same command line), Restart, WaitReady,
//     WaitExit, WaitFailpointKill, SetEnv (for the next start), Logs/LogTail/WaitLog,
//     Metric (scrape the admin /metrics) and Stats (peak RSS from /proc/PID/status
//     VmHWM, max goroutines and chosen gauges from /metrics, starts, kills).
//   - Cluster: NewCluster(t, Options{}) = a fresh database on the shared PostgreSQL
//     (or Options.DB), a redis-server of its own (Cluster.Redis: Restart empties it), a
//     `pulseboard broker` persisted in a data directory (KillBroker, StartBroker: no
//     acknowledged message is lost across a SIGKILL), and Options.Projects projects
//     with API keys. StartIngestor, StartConsumer, StartAlerter, StartAPI and
//     StartService start services on fixed ports and wait for /readyz; extra
//     environment such as "PULSEBOARD_FAILPOINTS=consumer/after-db-commit=kill@3" goes
//     last and wins. Lag, WaitLag0, Produce (raw messages to the events topic),
//     ReadDLQ, Consistent (events, the dedup gate and the rollups agree: nothing
//     partial visible), StoredIDs and WatchLive (Redis live-feed subscriber).
//   - Load: Scenario.StartLoad (or Cluster.StartLoad) sends Rate events/s through one
//     pkg/client per project with unique event ids, recording every id in a
//     ledger.Ledger before its first attempt and each SDK result after; a probe posts
//     one single event every 100 ms to measure when ingest answers 2xx again and to
//     check every 503 for Retry-After. SendOne posts one recorded event to any
//     ingestor.
//   - Verification: NewScenario(t, c, "F04", "what was done") starts the offset watcher
//     (committed offsets polled every 100 ms, decreases recorded); Healed marks the end
//     of the fault (recovery times are measured from there); Verify stops the load,
//     waits for lag 0 and checks the ledger (ledger.Verify), the offsets and the
//     consistency, failing the test on any violation. ExpectLoss turns a scenario into
//     a negative control, which passes only if loss was seen. Note and Fail add to the
//     scenario's report row, which is recorded when the test ends.
//   - Dependencies of F11 to F21: StartPostgres (a PostgreSQL of the test's own, for
//     Options.DB: Stop, Crash, Start, Restart), StartSMTP (an SMTP server in the test
//     process that can go Down and Up, counting mails per Message-ID), RegisterUser and
//     APIRequest (the api), DialLive, DialSSE and DialStalledWS (live streams),
//     SendQueued (kernel send queues of a port), GroupOffsets, RewindGroup and
//     WaitGroupLag0 (any consumer group; OffsetWatcher.Rewind around a deliberate reset).
//   - Report: Main prints the summary table after the tests and, with CHAOS_REPORT_DIR
//     set, writes chaos-<time>.md and .json there (make chaos: chaos/results/). Long
//     scenarios call Long(t, id, what) first: without CHAOS_LONG=1 they are skipped and
//     listed under the table as not run, never counted as passed.
//
// # Failpoints
//
// See package github.com/pulseboard/pulseboard/pkg/failpoint: a binary built by Bin
// reads PULSEBOARD_FAILPOINTS (kill, kill@N, sleep(D), sleep(D)@N, on). The consumer has
// consumer/after-fetch, consumer/mid-copy, consumer/before-db-commit,
// consumer/after-db-commit, consumer/after-offset-commit and the negative-control switch
// consumer/unsafe-commit-before-store; the ingestor has ingestor/after-produce-ack; the
// alerter has alerter/before-smtp, alerter/after-smtp-before-record (around every
// email), alerter/digest-after-create, alerter/retention-after-detach and
// alerter/retention-after-drop. Proc.WaitFailpointKill checks that a process died at
// the failpoint it was given.
//
// Everything a test starts is killed when it ends; scratch files live in t.TempDir.
package harness
