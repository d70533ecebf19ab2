-- +goose Up
-- Email verification (issue 16 item 7). Alert and digest mail go only to a verified
-- address (ALERT_REQUIRE_VERIFIED); api/verify.go and alerter/verify.go describe the flow.

-- When the current address was verified; NULL: not verified. Accounts that exist
-- before this migration start unverified too (any of them may have been registered
-- with someone else's address): README "Email verification" says how an operator keeps
-- mailing them.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

-- Changing the address resets its verification, whatever code path changes it.
-- +goose StatementBegin
CREATE FUNCTION pulseboard_users_email_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF lower(NEW.email) IS DISTINCT FROM lower(OLD.email) THEN
        NEW.email_verified_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER users_email_changed BEFORE UPDATE OF email ON users
    FOR EACH ROW EXECUTE FUNCTION pulseboard_users_email_changed();

-- One row per verification link, and its mail (an outbox: the api inserts the row in
-- the transaction that creates the user, or on a resend; the alerter's delivery loop
-- claims it FOR UPDATE SKIP LOCKED, sends it and records the outcome like any mail).
-- Only the SHA-256 of the token is kept for lookups; the link (which contains the
-- token) is kept only while the mail is pending and is cleared when it is sent or
-- given up. A token verifies `email` only while it is still the user's address.
CREATE TABLE email_verifications (
    id              uuid PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email           text        NOT NULL,
    token_hash      bytea       NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    -- The mail: pending → sent | failed, or skipped (expired, used or superseded
    -- before it could be sent; nothing worth sending).
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed', 'skipped')),
    link            text,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL,
    sent_at         timestamptz
);
-- The resend throttle counts a user's and an address's recent links.
CREATE INDEX email_verifications_user ON email_verifications (user_id, created_at DESC);
CREATE INDEX email_verifications_email ON email_verifications (lower(email), created_at DESC);
-- The delivery queue.
CREATE INDEX email_verifications_pending ON email_verifications (next_attempt_at) WHERE state = 'pending';

-- Mail that is not sent on purpose is recorded: skipped_unverified (the recipient's
-- address is not verified) and skipped_rate_limited (the recipient got
-- ALERT_MAIL_PER_RECIPIENT_PER_HOUR mails in the last hour). Neither is retried.
ALTER TABLE alerts DROP CONSTRAINT alerts_state_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_state_check
    CHECK (state IN ('pending', 'sent', 'failed', 'skipped_unverified', 'skipped_rate_limited'));
ALTER TABLE digest_sends DROP CONSTRAINT digest_sends_state_check;
ALTER TABLE digest_sends ADD CONSTRAINT digest_sends_state_check
    CHECK (state IN ('pending', 'sent', 'failed', 'skipped_unverified', 'skipped_rate_limited'));
ALTER TABLE email_deliveries DROP CONSTRAINT email_deliveries_kind_check;
ALTER TABLE email_deliveries ADD CONSTRAINT email_deliveries_kind_check
    CHECK (kind IN ('threshold', 'resolved', 'digest', 'verification'));
-- The per-recipient rate counts a recipient's deliveries of the last hour.
CREATE INDEX email_deliveries_recipient ON email_deliveries (recipient, delivered_at DESC);

-- +goose Down
DROP INDEX email_deliveries_recipient;
DELETE FROM email_deliveries WHERE kind = 'verification';
ALTER TABLE email_deliveries DROP CONSTRAINT email_deliveries_kind_check;
ALTER TABLE email_deliveries ADD CONSTRAINT email_deliveries_kind_check CHECK (kind IN ('threshold', 'resolved', 'digest'));
UPDATE digest_sends SET state = 'failed' WHERE state IN ('skipped_unverified', 'skipped_rate_limited');
ALTER TABLE digest_sends DROP CONSTRAINT digest_sends_state_check;
ALTER TABLE digest_sends ADD CONSTRAINT digest_sends_state_check CHECK (state IN ('pending', 'sent', 'failed'));
UPDATE alerts SET state = 'failed' WHERE state IN ('skipped_unverified', 'skipped_rate_limited');
ALTER TABLE alerts DROP CONSTRAINT alerts_state_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_state_check CHECK (state IN ('pending', 'sent', 'failed'));
DROP TABLE email_verifications;
DROP TRIGGER users_email_changed ON users;
DROP FUNCTION pulseboard_users_email_changed();
ALTER TABLE users DROP COLUMN email_verified_at;
