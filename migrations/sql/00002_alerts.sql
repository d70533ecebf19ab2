-- +goose Up
-- Alert history and delivery state. The alerter writes it (state machine pending → sent |
-- failed, retried with backoff while pending); the api serves it newest first.
CREATE TABLE alerts (
    id              uuid PRIMARY KEY,
    project_id      uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- 'threshold': errors reached the threshold; 'resolved': below it for a full window.
    kind            text        NOT NULL CHECK (kind IN ('threshold', 'resolved')),
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    error_count     integer     NOT NULL,
    threshold       integer     NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    recipient       text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
-- History of a project, newest first, keyset on (created_at, id).
CREATE INDEX alerts_project_created ON alerts (project_id, created_at DESC, id DESC);
-- The delivery queue.
CREATE INDEX alerts_pending ON alerts (next_attempt_at) WHERE state = 'pending';

-- +goose Down
DROP TABLE alerts;
