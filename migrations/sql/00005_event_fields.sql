-- +goose Up
-- The event labels (issue 19 item 1): optional short strings users filter events by,
-- declared in pkg/event's field table (pkg/event/fields.go), taken from the event's top
-- level or, failing that, from its context. NULL is unset; the application never stores
-- an empty string. events is partitioned: ALTER TABLE on the parent adds the columns to
-- every partition (a nullable column without a default is a catalogue change only, no
-- rewrite), and an index created on the parent is created on every partition, present
-- and future.
ALTER TABLE events
    ADD COLUMN release     text,
    ADD COLUMN environment text,
    ADD COLUMN session_id  text,
    ADD COLUMN user_id     text;

-- One index per label, serving "a project's latest events with this label", keyset
-- pages included: the events API orders by (received_at DESC, id DESC) and resumes
-- after a cursor on that pair, so with the label pinned by equality the index gives the
-- rows in order and the LIMIT stops the scan (as events_project_recent does without a
-- filter); the SSE replay reads the same range in the other direction. Partial (WHERE
-- <label> IS NOT NULL): events without the label, which may be most of them, cost
-- nothing to index and the index stays small; a filter is always an equality on a
-- non-NULL value, which implies the predicate. The label goes before received_at: an
-- index on (project_id, received_at, label) would walk every recent event of the project
-- to find the few of one session.
CREATE INDEX events_project_release_recent ON events (project_id, release, received_at DESC, id DESC)
    WHERE release IS NOT NULL;
CREATE INDEX events_project_environment_recent ON events (project_id, environment, received_at DESC, id DESC)
    WHERE environment IS NOT NULL;
CREATE INDEX events_project_session_recent ON events (project_id, session_id, received_at DESC, id DESC)
    WHERE session_id IS NOT NULL;
CREATE INDEX events_project_user_recent ON events (project_id, user_id, received_at DESC, id DESC)
    WHERE user_id IS NOT NULL;

-- +goose Down
DROP INDEX events_project_user_recent;
DROP INDEX events_project_session_recent;
DROP INDEX events_project_environment_recent;
DROP INDEX events_project_release_recent;
ALTER TABLE events
    DROP COLUMN user_id,
    DROP COLUMN session_id,
    DROP COLUMN environment,
    DROP COLUMN release;
