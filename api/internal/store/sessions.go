package store

import (
	"context"
	"crypto/subtle"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// NewSession stores the first refresh token (by hash) of a new family for the user and
// returns the family: the session, which access tokens name so that revoking it ends
// them too. It also deletes the user's refresh tokens that have expired: they can
// neither be used nor, once expired, be a meaningful reuse signal.
func (s *Store) NewSession(ctx context.Context, userID uuid.UUID, tokenHash []byte, now time.Time, ttl time.Duration) (uuid.UUID, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.Nil, err
	}
	family, err := uuid.NewV7()
	if err != nil {
		return uuid.Nil, err
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return uuid.Nil, mapErr("creating session", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND expires_at < $2`, userID, now); err != nil {
		return uuid.Nil, mapErr("creating session", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, id, userID, family, tokenHash, now, now.Add(ttl)); err != nil {
		return uuid.Nil, mapErr("creating session", err)
	}
	return family, mapErr("creating session", tx.Commit(ctx))
}

// liveSessionSQL is true when the session (refresh-token family) $N of user u has a
// token that is not revoked, or when no session is given (NULL: a token of the old
// backend). Logout and reuse detection revoke every token of a family, so a revoked
// session has none left; an expired family's rows are deleted, which also ends it.
func liveSessionSQL(param string) string {
	return `(` + param + `::uuid IS NULL OR EXISTS (SELECT 1 FROM refresh_tokens rt
		WHERE rt.family_id = ` + param + `::uuid AND rt.user_id = u.id AND rt.revoked_at IS NULL))`
}

// sessionParam is a session as a query parameter: NULL for uuid.Nil.
func sessionParam(session uuid.UUID) any {
	if session == uuid.Nil {
		return nil
	}
	return session
}

// Outcome is the result of presenting a refresh token.
type Outcome int

// Outcomes of Rotate.
const (
	// Rotated: the token was current; it is now rotated and the new one is current.
	Rotated Outcome = iota + 1
	// Invalid: unknown, expired, revoked, or older than the user's tokens_valid_after.
	Invalid
	// ReusedWithinGrace: the token was rotated less than the grace period ago (a
	// concurrent refresh from the same client), but not to the successor presented with
	// it. Refused; the family stays valid.
	ReusedWithinGrace
	// SuccessorWithinGrace: the token was rotated less than the grace period ago, to the
	// very successor presented with it, which is still valid: the concurrent refresh is
	// answered with that successor (User is set; SuccessorRotated says whether it was
	// itself rotated since, in which case the caller follows the chain).
	SuccessorWithinGrace
	// ReuseDetected: the token was rotated longer ago than the grace period. The whole
	// family is now revoked (RFC 9700 §4.14.2).
	ReuseDetected
)

func (o Outcome) String() string {
	switch o {
	case Rotated:
		return "rotated"
	case Invalid:
		return "invalid"
	case ReusedWithinGrace:
		return "reused_within_grace"
	case SuccessorWithinGrace:
		return "successor_within_grace"
	case ReuseDetected:
		return "reuse_detected"
	}
	return "unknown"
}

// Rotation is what Rotate found and did.
type Rotation struct {
	Outcome  Outcome
	User     User      // set when Rotated or SuccessorWithinGrace
	UserID   uuid.UUID // set unless Invalid because the token is unknown
	FamilyID uuid.UUID
	// SuccessorRotated: with SuccessorWithinGrace, the successor was rotated too.
	SuccessorRotated bool
}

// Rotate presents the refresh token with hash oldHash and, if it is current, replaces it
// with newHash in one transaction. The token row is locked (FOR UPDATE), so of two
// concurrent refreshes with the same token exactly one rotates it; the other sees it
// rotated a moment ago and, presenting the same derived successor, gets
// SuccessorWithinGrace: both succeed with the one successor, and there are never two
// diverging valid tokens.
func (s *Store) Rotate(ctx context.Context, oldHash, newHash []byte, now time.Time, ttl, grace time.Duration) (Rotation, error) {
	var r Rotation
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return r, mapErr("rotating refresh token", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var (
		id                   uuid.UUID
		createdAt, expiresAt time.Time
		rotatedAt, revokedAt *time.Time
		validAfter           time.Time
	)
	err = tx.QueryRow(ctx, `
		SELECT rt.id, rt.user_id, rt.family_id, rt.created_at, rt.expires_at, rt.rotated_at, rt.revoked_at, u.tokens_valid_after
		FROM refresh_tokens rt JOIN users u ON u.id = rt.user_id
		WHERE rt.token_hash = $1
		FOR UPDATE OF rt`, oldHash).Scan(&id, &r.UserID, &r.FamilyID, &createdAt, &expiresAt, &rotatedAt, &revokedAt, &validAfter)
	if errors.Is(err, pgx.ErrNoRows) {
		r.Outcome = Invalid
		return r, nil
	}
	if err != nil {
		return r, mapErr("rotating refresh token", err)
	}
	switch {
	case revokedAt != nil, !expiresAt.After(now), createdAt.Before(validAfter):
		r.Outcome = Invalid
		return r, nil
	case rotatedAt != nil && now.Sub(*rotatedAt) <= grace:
		return r, s.successorWithinGrace(ctx, tx, id, newHash, now, &r)
	case rotatedAt != nil:
		if err := revokeFamily(ctx, tx, r.FamilyID, now); err != nil {
			return r, err
		}
		r.Outcome = ReuseDetected
		return r, mapErr("revoking refresh token family", tx.Commit(ctx))
	}
	newID, err := uuid.NewV7()
	if err != nil {
		return r, err
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, newID, r.UserID, r.FamilyID, newHash, now, now.Add(ttl)); err != nil {
		return r, mapErr("rotating refresh token", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE refresh_tokens SET rotated_at = $2, replaced_by = $3 WHERE id = $1`, id, now, newID); err != nil {
		return r, mapErr("rotating refresh token", err)
	}
	r.User, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, r.UserID))
	if err != nil {
		return r, mapErr("rotating refresh token", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return r, mapErr("rotating refresh token", err)
	}
	r.Outcome = Rotated
	return r, nil
}

// successorWithinGrace decides a refresh with a token rotated within the grace (issue 17
// item 6: tabs refreshing at once with the one cookie they share). Successors are derived
// from their predecessor (the api's successorToken), so every such request presents the
// successor the first one stored: if the token was rotated to exactly that one and it is
// still valid, the request is answered with it, so all of them succeed and the family
// still has one current token. Anything else (a successor from before derivation, one
// revoked or expired) stays a refusal that revokes nothing.
func (s *Store) successorWithinGrace(ctx context.Context, tx pgx.Tx, id uuid.UUID, successorHash []byte, now time.Time, r *Rotation) error {
	r.Outcome = ReusedWithinGrace
	var (
		hash       []byte
		expiresAt  time.Time
		revokedAt  *time.Time
		rotatedAt  *time.Time
		validAfter time.Time
		createdAt  time.Time
	)
	err := tx.QueryRow(ctx, `
		SELECT n.token_hash, n.created_at, n.expires_at, n.revoked_at, n.rotated_at, u.tokens_valid_after
		FROM refresh_tokens o
		JOIN refresh_tokens n ON n.id = o.replaced_by
		JOIN users u ON u.id = n.user_id
		WHERE o.id = $1`, id).Scan(&hash, &createdAt, &expiresAt, &revokedAt, &rotatedAt, &validAfter)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return mapErr("rotating refresh token", err)
	}
	if subtle.ConstantTimeCompare(hash, successorHash) != 1 || revokedAt != nil || !expiresAt.After(now) || createdAt.Before(validAfter) {
		return nil
	}
	if r.User, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, r.UserID)); err != nil {
		return mapErr("rotating refresh token", err)
	}
	r.Outcome, r.SuccessorRotated = SuccessorWithinGrace, rotatedAt != nil
	return nil
}

// RevokeFamilyOf revokes the family of the refresh token with this hash (logout). An
// unknown token is not an error: logout always succeeds.
func (s *Store) RevokeFamilyOf(ctx context.Context, tokenHash []byte, now time.Time) error {
	_, err := s.db.Exec(ctx, `
		UPDATE refresh_tokens SET revoked_at = $2
		WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL`,
		tokenHash, now)
	return mapErr("revoking refresh token family", err)
}

func revokeFamily(ctx context.Context, tx pgx.Tx, family uuid.UUID, now time.Time) error {
	_, err := tx.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL`, family, now)
	return mapErr("revoking refresh token family", err)
}

// RevokeSession revokes the session (refresh-token family) of the user: logout by an
// access token's sid. An unknown session is not an error: logout always succeeds.
func (s *Store) RevokeSession(ctx context.Context, userID, family uuid.UUID, now time.Time) error {
	_, err := s.db.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = $3 WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL`,
		family, userID, now)
	return mapErr("revoking session", err)
}
