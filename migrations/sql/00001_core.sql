-- +goose Up
-- Core schema. Emails are stored normalised (trimmed, lower-cased) by the application;
-- the unique index on lower(email) is a second line of defence.
CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    name               text        NOT NULL,
    email              text        NOT NULL,
    password_hash      text        NOT NULL,
    -- Access tokens issued before this instant are rejected (logout everywhere, password change).
    tokens_valid_after timestamptz NOT NULL DEFAULT 'epoch',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Refresh tokens are opaque random strings; only their SHA-256 is stored. Every refresh
-- rotates the token inside its family; presenting a rotated token revokes the family.
CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE,
    replaced_by uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- api_key is kept in clear because the compat project object returns it to its owner;
-- ingest looks keys up by api_key_hash (SHA-256) only, and caches only the hash.
CREATE TABLE projects (
    id                     uuid PRIMARY KEY,
    user_id                uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                   text        NOT NULL,
    api_key                text        NOT NULL,
    api_key_hash           bytea       NOT NULL UNIQUE,
    -- Per-project settings; NULL means "use the service default".
    alert_threshold        integer CHECK (alert_threshold BETWEEN 1 AND 1000000),
    alert_window_seconds   integer CHECK (alert_window_seconds BETWEEN 10 AND 86400),
    alert_cooldown_seconds integer CHECK (alert_cooldown_seconds BETWEEN 60 AND 604800),
    alerts_enabled         boolean     NOT NULL DEFAULT true,
    retention_days         integer CHECK (retention_days BETWEEN 1 AND 3650),
    rate_limit             integer CHECK (rate_limit >= 0),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projects_user_created ON projects (user_id, created_at DESC);

-- Events are range-partitioned by day on the server-assigned receive time, so retention
-- drops whole partitions. There is deliberately no unique constraint here: a unique index
-- on a partitioned table must include received_at, which differs between two ingest
-- attempts of the same event. Deduplication happens in event_ids instead.
CREATE TABLE events (
    id          uuid        NOT NULL,
    project_id  uuid        NOT NULL,
    type        text        NOT NULL CHECK (type IN ('error', 'event', 'metric')),
    name        text        NOT NULL,
    payload     jsonb       NOT NULL,
    context     jsonb,
    "timestamp" timestamptz NOT NULL,
    received_at timestamptz NOT NULL
) PARTITION BY RANGE (received_at);
-- "Latest events of a project" and keyset pagination on (received_at, id).
CREATE INDEX events_project_recent ON events (project_id, received_at DESC, id DESC);
-- "Events of a project in a time range filtered by type" (queries, alert windows).
CREATE INDEX events_project_type_recent ON events (project_id, type, received_at DESC);

-- The dedup gate: one row per (project, event id) ever stored, kept at least as long as
-- the events themselves. The consumer inserts here first (ON CONFLICT DO NOTHING) and
-- stores in events only what this insert returned, in the same transaction.
CREATE TABLE event_ids (
    project_id  uuid        NOT NULL,
    id          uuid        NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, id)
);
CREATE INDEX event_ids_received ON event_ids (received_at);

-- Per project, minute and type: the number of stored events. Maintained by the consumer
-- in the transaction that stores the events.
CREATE TABLE event_rollups (
    project_id uuid        NOT NULL,
    minute     timestamptz NOT NULL,
    type       text        NOT NULL,
    count      bigint      NOT NULL,
    PRIMARY KEY (project_id, minute, type)
);

-- Creates the daily partitions of events covering [from_day, to_day] (UTC days) that do
-- not exist yet and returns how many it created. Serialised by an advisory lock so that
-- concurrent callers (consumers, the retention job, migrations) never race on CREATE.
-- +goose StatementBegin
CREATE FUNCTION pulseboard_ensure_event_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d       date;
    created integer := 0;
    part    text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pulseboard_event_partitions'));
    FOR d IN SELECT generate_series(from_day, to_day, interval '1 day')::date LOOP
        part := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(quote_ident(part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                part, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;
-- +goose StatementEnd

SELECT pulseboard_ensure_event_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);

-- +goose Down
DROP FUNCTION pulseboard_ensure_event_partitions(date, date);
DROP TABLE event_rollups;
DROP TABLE event_ids;
DROP TABLE events;
DROP TABLE projects;
DROP TABLE refresh_tokens;
DROP TABLE users;
