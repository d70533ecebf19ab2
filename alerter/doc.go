// Package alerter is PulseBoard's alerting service: error-threshold alerts to each
// project's notification channels (email, signed webhook, Slack-compatible webhook), the
// daily digest and retention. One replica is New(cfg, deps).Run(ctx); the
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
//     crossing, and at most ALERT_MAX_DELAY ago. Firing inserts a pending row in alerts,
//     one pending notification_deliveries row per enabled channel of the project, and
//     sets alert_state.last_fired_at to that receive time;
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
// window. The sweep locks with SKIP LOCKED, so replicas share it. The resolved alert gets
// its deliveries like a threshold alert: every enabled channel hears of it.
//
// # Notification channels
//
// A project's channels are rows of notification_channels, managed by the api: email
// (url NULL: the owner's address, else the address in url), webhook (url, and the
// HMAC-SHA256 secret the api generated) and slack (url of a Slack-compatible incoming
// webhook: Slack, Mattermost, Rocket.Chat). Recording an alert records one delivery per
// enabled channel, in the same transaction, under alert_state's row lock: two replicas
// evaluating the same crossing make exactly one alert and one delivery per channel. The
// target is resolved then (the address, or the URL with its path redacted for display;
// the URL and secret themselves are read from the channel when sending).
//
//   - A project with no channel rows at all (created before migration 00006 by a path
//     that does not add the owner-email channel, such as pgstore.CreateProject) gets one
//     email delivery to its owner, channel_id NULL: as before channels existed.
//   - A project whose channels are all disabled records the alert (history, cooldowns)
//     with no delivery and state failed, last_error "no enabled notification channel".
//   - A channel disabled or deleted after the alert was recorded: its pending webhook or
//     Slack delivery is given up (failed, no attempt); a pending email delivery of a
//     deleted channel still goes to the address it recorded, of a disabled one is given
//     up.
//
// # Delivery
//
// Alerts (their deliveries), digests and verification mails are recorded pending first
// and sent by the delivery loops of any replica: one for mail (verification mails,
// alert emails, digests), one for the HTTP channels (webhook, Slack), so a slow
// receiver never delays mail. A loop claims the oldest due row FOR UPDATE SKIP LOCKED,
// keeps it locked while sending (so no other replica sends it; a replica that dies
// releases it with its connection), and records, in the claiming transaction, sent or a
// failed attempt with its reason and the next attempt time. A send that fails because
// this replica is stopping (the loop's context, or the send's, cancelled by the stop) is
// not an attempt: the transaction is rolled back and the next replica sends the row with
// its attempts unchanged. Delivery failures never touch alert_state: an outage delays
// notifications but silences nothing.
//
// Email: sent (plus an email_deliveries row naming the transport, "smtp" or "log") or a
// failed attempt (exponential backoff, EMAIL_RETRY_MIN to EMAIL_RETRY_MAX; failed after
// EMAIL_MAX_ATTEMPTS or a permanent 5xx). The only duplicate possible is an email sent
// when a replica dies between the server's acceptance and the commit of "sent"; it has
// the same Message-ID.
//
// Webhook: POST of the alert as JSON (type, alertId, deliveryId, project id and name,
// kind, window, errorCount, threshold, topErrors, attempt) with Content-Type
// application/json, X-PulseBoard-Delivery (the delivery id, the same on every retry)
// and X-PulseBoard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
// "<t>.<body>")>. Slack: POST {"text": …}, the alert in words, every user-written string
// escaped (&, <, > as Slack requires; "@" followed by a word joiner), unsigned. Both
// (internal/channel): 2xx sent (response_status recorded); 5xx, 408, 429 (Retry-After
// honoured up to ALERT_WEBHOOK_RETRY_MAX), timeouts and network errors retried with
// jittered exponential backoff (ALERT_WEBHOOK_RETRY_MIN to ALERT_WEBHOOK_RETRY_MAX), failed
// after ALERT_WEBHOOK_MAX_ATTEMPTS; other 4xx, 3xx (redirects are not followed) and
// refused addresses failed at once. Requests are bounded by ALERT_WEBHOOK_TIMEOUT,
// answers read to 4 KiB (kept, truncated, in last_error). The SSRF guard refuses
// loopback, private, link-local, unspecified, multicast, CGNAT and reserved addresses at
// dial time, on the address actually dialled (net.Dialer.Control), so DNS rebinding
// cannot get past it, and no proxy is taken from the environment;
// ALERT_WEBHOOK_ALLOW_PRIVATE=true turns it off (tests, a receiver on the same machine).
// A webhook is delivered at least once: a replica dying between the receiver's 2xx and
// the commit of "sent" makes the next one send it again, with the same
// X-PulseBoard-Delivery, on which receivers deduplicate.
//
// # Alert state
//
// alerts.state is the summary of the alert's deliveries that the api and the dashboard
// read, updated in every transaction that records a delivery's outcome (after locking
// the alert row, so concurrent outcomes of one alert's channels are all counted):
// pending while a delivery is pending; then sent if one was sent; else failed if one
// failed; else skipped_unverified if one was, else skipped_rate_limited (an email-only
// project reads exactly as before channels). attempts is the largest attempts of its
// deliveries, last_error the error of an unsent one (failed ones first), next_attempt_at
// the earliest pending one's, sent_at the first sent.
//
// # Storage
//
// Every SQL statement of the alerter is in internal/store (evaluation, delivery, jobs,
// and retention's statements, its partition DDL included); pgx and pgconn errors are
// mapped there only (store.ErrNotFound, store.ErrUnavailable).
//
// # Verified recipients and the per-recipient rate
//
// The api records every address verification mail in email_verifications (an outbox:
// inserted with the user at registration, or on a resend); the delivery loop sends those
// first, like any email, and erases the row's link (it contains the token) once the
// mail is sent or given up. A link that can no longer verify anything is recorded
// skipped instead of sent. Before sending an alert email or a digest, gate checks:
// ALERT_REQUIRE_VERIFIED and a recipient that is not the owner's current, verified
// address → skipped_unverified (an email channel with an address of its own is
// therefore never mailed while ALERT_REQUIRE_VERIFIED holds); ALERT_MAIL_PER_RECIPIENT_PER_HOUR alert and digest mails already
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
// digest), alerter/before-webhook and alerter/after-webhook-before-record (webhook and
// Slack deliveries), alerter/digest-after-create (the day's digests recorded, none sent by this
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
