-- +goose Up
-- The alerter's state (alerter/doc.go explains how each table is used). The alerts table
-- itself (00002) is a contract with the api and keeps its columns.

-- One row per project the alerter has evaluated: the cross-replica cooldown. The
-- transaction that records an alert locks this row FOR UPDATE first, so two replicas (or
-- a replica and its successor after a rebalance or a replay) that evaluate the same
-- crossing serialise here, and the second one sees last_fired_at. Nothing about the
-- cooldown lives in memory.
CREATE TABLE alert_state (
    project_id    uuid PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    -- true from a threshold alert until the resolved alert (or until alerts are disabled).
    firing        boolean     NOT NULL DEFAULT false,
    -- Receive time of the error whose window reached the threshold in the last threshold
    -- alert: the cooldown runs from here, in event time, so a replay never re-fires.
    last_fired_at timestamptz,
    last_alert_id uuid,
    resolved_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_state_firing ON alert_state (project_id) WHERE firing;

-- A second line of defence behind alert_state: one alert per project, kind and window.
CREATE UNIQUE INDEX alerts_project_kind_window ON alerts (project_id, kind, window_start);

-- Scheduled job runs (digest, retention): one row per job and cron slot. A run that died
-- stays 'running' or 'failed' and is resumed by the next instance that holds the job's
-- advisory lock; a 'succeeded' slot is never run again.
CREATE TABLE job_runs (
    id            uuid PRIMARY KEY,
    job           text        NOT NULL,
    scheduled_for timestamptz NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    attempts      integer     NOT NULL DEFAULT 1,
    instance      text        NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    error         text,
    details       jsonb,
    UNIQUE (job, scheduled_for)
);
CREATE INDEX job_runs_job_slot ON job_runs (job, scheduled_for DESC);

-- One digest per user and day: the row is created (pending, with its content) by the
-- digest job, then claimed FOR UPDATE SKIP LOCKED, sent and marked sent. A failed send is
-- retried with backoff by whichever instance claims it next.
CREATE TABLE digest_sends (
    id              uuid PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest_date     date        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    recipient       text        NOT NULL,
    content         jsonb       NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    UNIQUE (user_id, digest_date)
);
CREATE INDEX digest_sends_pending ON digest_sends (next_attempt_at) WHERE state = 'pending';

-- Every email handed to a transport: 'smtp' (accepted by the SMTP server) or 'log'
-- (SMTP_HOST unset: written to the log instead). ref_id is alerts.id or digest_sends.id.
CREATE TABLE email_deliveries (
    id           uuid PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('threshold', 'resolved', 'digest')),
    ref_id       uuid        NOT NULL,
    recipient    text        NOT NULL,
    transport    text        NOT NULL CHECK (transport IN ('smtp', 'log')),
    message_id   text        NOT NULL,
    delivered_at timestamptz NOT NULL
);
CREATE INDEX email_deliveries_ref ON email_deliveries (ref_id);

-- The retention job's ledger of partitions it drops: written before the detach, so an
-- interrupted run knows what to FINALIZE and DROP when it resumes.
CREATE TABLE retention_drops (
    partition   text PRIMARY KEY,
    upper_bound timestamptz NOT NULL,
    started_at  timestamptz NOT NULL,
    dropped_at  timestamptz
);

-- +goose Down
DROP TABLE retention_drops;
DROP TABLE email_deliveries;
DROP TABLE digest_sends;
DROP TABLE job_runs;
DROP INDEX alerts_project_kind_window;
DROP TABLE alert_state;
