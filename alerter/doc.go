// Package alerter is PulseBoard's alerting service: error-threshold alerts by email,
// the daily digest and retention. One replica is New(cfg, deps).Run(ctx); the
// standalone binary is cmd/alerter, and the all-in-one wires the same New/Run. It keeps
// docs/reliability.md promises 12 and 14.
//
// # Threshold alerts
//
// The alerter is a consumer group of its own (Config.GroupID, "pulseboard-alerter") on
// the events topic. The topic is keyed by project id, so one replica owns all of a
// project's messages at a time. For every batch (FetchMessage, never ReadMessage):
//
//  1. the error events are picked out per project (other types never count);
//  2. the alerter waits until the consumer group (Config.StoredGroup, the consumer's
//     CONSUMER_GROUP) has committed past the batch: the consumer commits only after
//     storing, so every event of the batch is then in PostgreSQL or dead-lettered;
//  3. each project is evaluated in one transaction that locks its alert_state row FOR
//     UPDATE: the errors are counted in events (deduplicated, so redelivery, replays and
//     producer retries never inflate a count) over a sliding window by receive time
//     ([t − window, t], ALERT_WINDOW or projects.alert_window_seconds), and the first
//     error at which the count reaches the threshold (ALERT_ERROR_THRESHOLD or
//     projects.alert_threshold) fires — if it was received at least the cooldown
//     (ALERT_COOLDOWN or projects.alert_cooldown_seconds) after the last fired
//     crossing, and at most ALERT_MAX_DELAY ago. Firing inserts a pending row in alerts
//     and sets alert_state.last_fired_at to that receive time;
//  4. CommitMessages, after the transactions committed.
//
// Cooldowns are in event time and in PostgreSQL: a replay (offsets reset, F18), a
// rebalance, or a second replica evaluating the same messages finds last_fired_at under
// the row lock and fires nothing. Sustained errors fire again once per cooldown.
//
// A project that fired is "firing" until its error count has stayed below the threshold
// for a full window: the resolution sweep (every ALERT_RESOLVE_INTERVAL) then records a
// "resolved" alert. Checking "below for a full window" exactly: no threshold-many
// consecutive errors, the first received in the last two windows, span at most one
// window. The sweep locks with SKIP LOCKED, so replicas share it.
//
// # Delivery
//
// Alerts and digests are recorded pending first and sent by the delivery loop of any
// replica: it claims the oldest due row FOR UPDATE SKIP LOCKED, keeps it locked while
// sending (so no other replica sends it; a replica that dies releases it with its
// connection), and records sent (plus an email_deliveries row naming the transport,
// "smtp" or "log") or a failed attempt with its reason and the next attempt time
// (exponential backoff, EMAIL_RETRY_MIN to EMAIL_RETRY_MAX; failed after
// EMAIL_MAX_ATTEMPTS or a permanent 5xx). Delivery failures never touch alert_state: an
// SMTP outage delays emails but silences nothing. The only duplicate possible is an
// email sent when a replica dies between the server's acceptance and the commit of
// "sent"; it has the same Message-ID.
//
// # Verified recipients and the per-recipient rate
//
// The api records every address verification mail in email_verifications (an outbox:
// inserted with the user at registration, or on a resend); the delivery loop sends those
// first, like any email, and erases the row's link (it contains the token) once the
// mail is sent or given up. A link that can no longer verify anything is recorded
// skipped instead of sent. Before sending an alert or a digest, gate checks:
// ALERT_REQUIRE_VERIFIED and an owner whose current address is not verified →
// skipped_unverified; ALERT_MAIL_PER_RECIPIENT_PER_HOUR alert and digest mails already
// delivered to the address in the last hour (email_deliveries, all projects, all
// replicas, counted under a per-recipient transaction advisory lock held until the
// delivery is recorded) → skipped_rate_limited. Both are final: nothing is retried, and
// the evaluation (alert_state, cooldowns) is untouched.
//
// # Scheduled jobs
//
// The digest (DIGEST_CRON) and retention (RETENTION_CRON) jobs run on cron schedules in
// UTC, on one instance at a time: RunJob takes a session advisory lock per job and
// records the run in job_runs (UNIQUE(job, scheduled_for)); a slot that succeeded is
// never run again, one that failed or died runs again (at start, an unfinished last slot
// is resumed). The digest job creates one digest_sends row per user and day
// (UNIQUE(user_id, digest_date)) with each project's events and errors of the last 24 h
// from event_rollups, then sends them like alerts; one failure does not stop the
// others. Retention is internal/retention.
//
// # Failpoints
//
// Binaries built with the failpoints tag (pkg/failpoint) can be stopped at
// alerter/before-smtp and alerter/after-smtp-before-record (every email, alert or
// digest), alerter/digest-after-create (the day's digests recorded, none sent by this
// run) and alerter/retention-after-detach / alerter/retention-after-drop (one partition
// detached but not dropped, dropped but not recorded). The chaos module's F20 and F21
// kill the alerter there.
//
// # Known limits
//
// The resolution sweep counts what is stored: if the consumer falls more than a window
// behind while a project is firing, the project can be resolved early (a new crossing
// then fires again after the cooldown). A crossing found when the consumer was stalled
// longer than ALERT_MAX_DELAY is not alerted.
package alerter
