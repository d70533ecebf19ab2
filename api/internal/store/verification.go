package store

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// NewVerification is a verification link to record with its pending mail: the token's
// SHA-256 (the only form in which the token is looked up) and the link the mail carries,
// which the alerter clears once the mail is sent or given up.
type NewVerification struct {
	TokenHash []byte
	Link      string
	TTL       time.Duration
}

func insertVerification(ctx context.Context, tx pgx.Tx, u User, now time.Time, v NewVerification) error {
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO email_verifications (id, user_id, email, token_hash, created_at, expires_at, state, link, next_attempt_at)
		VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $5)`,
		id, u.ID, u.Email, v.TokenHash, now, now.Add(v.TTL), v.Link)
	return err
}

// VerifyOutcome is what presenting a verification token did.
type VerifyOutcome int

// Outcomes of Verify.
const (
	// Verified: the token was live and the address is now verified (or already was,
	// through another link).
	Verified VerifyOutcome = iota
	// TokenUnknown: no such token.
	TokenUnknown
	// TokenUsed: the token was used before (single use).
	TokenUsed
	// TokenExpired: the token's lifetime is over.
	TokenExpired
	// TokenSuperseded: the account's address changed since the link was sent.
	TokenSuperseded
)

// Verify consumes a verification token (by its SHA-256): on success the link is marked
// used and the user's address verified, in one transaction that locks the link's row,
// so a token is used once however many requests present it at the same time.
func (s *Store) Verify(ctx context.Context, tokenHash []byte, now time.Time) (VerifyOutcome, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return 0, mapErr("verifying email", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var (
		id, userID        uuid.UUID
		email, current    string
		expires           time.Time
		used              *time.Time
		alreadyVerifiedAt *time.Time
	)
	err = tx.QueryRow(ctx, `
		SELECT v.id, v.user_id, v.email, v.expires_at, v.used_at, u.email, u.email_verified_at
		FROM email_verifications v JOIN users u ON u.id = v.user_id
		WHERE v.token_hash = $1
		FOR UPDATE OF v, u`, tokenHash).Scan(&id, &userID, &email, &expires, &used, &current, &alreadyVerifiedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return TokenUnknown, nil
	}
	if err != nil {
		return 0, mapErr("verifying email", err)
	}
	switch {
	case used != nil:
		return TokenUsed, nil
	case !now.Before(expires):
		return TokenExpired, nil
	case !sameAddress(email, current):
		return TokenSuperseded, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE email_verifications SET used_at = $2 WHERE id = $1`, id, now); err != nil {
		return 0, mapErr("verifying email", err)
	}
	if alreadyVerifiedAt == nil {
		if _, err := tx.Exec(ctx, `UPDATE users SET email_verified_at = $2, updated_at = $2 WHERE id = $1`, userID, now); err != nil {
			return 0, mapErr("verifying email", err)
		}
	}
	return Verified, mapErr("verifying email", tx.Commit(ctx))
}

func sameAddress(a, b string) bool { return normalize(a) == normalize(b) }

func normalize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// ResendLimits throttle verification mails: at most one per Interval and Daily per 24 h,
// per user and per address (the registration's mail counts).
type ResendLimits struct {
	Interval time.Duration
	Daily    int
}

// ErrAlreadyVerified: the user's address is verified already; no mail is queued.
var ErrAlreadyVerified = errors.New("email already verified")

// Resend records a new verification link with its pending mail for the user's current
// address, unless the throttle refuses it: then wait is how long until it would not.
// The user's row is locked, so concurrent resends of one user are counted one by one.
func (s *Store) Resend(ctx context.Context, userID uuid.UUID, now time.Time, lim ResendLimits, v NewVerification) (wait time.Duration, err error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return 0, mapErr("resending verification", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	u, err := scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1 FOR UPDATE`, userID))
	if err != nil {
		return 0, mapErr("resending verification", err)
	}
	if u.EmailVerifiedAt != nil {
		return 0, ErrAlreadyVerified
	}
	dayAgo := now.Add(-24 * time.Hour)
	// Per user, and per address (an address can move between accounts).
	for _, c := range []struct {
		where string
		arg   any
	}{{"user_id = $1", userID}, {"lower(email) = lower($1)", u.Email}} {
		var (
			n           int
			last, first *time.Time
		)
		if err := tx.QueryRow(ctx, `SELECT count(*), max(created_at), min(created_at) FROM email_verifications
			WHERE `+c.where+` AND created_at > $2`, c.arg, dayAgo).Scan(&n, &last, &first); err != nil {
			return 0, mapErr("resending verification", err)
		}
		if last != nil {
			wait = max(wait, last.Add(lim.Interval).Sub(now))
		}
		if n >= lim.Daily && first != nil {
			wait = max(wait, first.Add(24*time.Hour).Sub(now))
		}
	}
	if wait > 0 {
		return wait, nil
	}
	if err := insertVerification(ctx, tx, u, now, v); err != nil {
		return 0, mapErr("resending verification", err)
	}
	return 0, mapErr("resending verification", tx.Commit(ctx))
}
