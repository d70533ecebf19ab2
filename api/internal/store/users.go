package store

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// User is an account. Email is stored normalised (trimmed, lower-cased) by the caller.
type User struct {
	ID               uuid.UUID
	Name             string
	Email            string
	PasswordHash     string
	TokensValidAfter time.Time
	CreatedAt        time.Time
	// EmailVerifiedAt is when the current address was verified; nil: not verified.
	EmailVerifiedAt *time.Time
}

const userColumns = `id, name, email, password_hash, tokens_valid_after, created_at, email_verified_at`

func scanUser(row interface{ Scan(...any) error }) (User, error) {
	var u User
	err := row.Scan(&u.ID, &u.Name, &u.Email, &u.PasswordHash, &u.TokensValidAfter, &u.CreatedAt, &u.EmailVerifiedAt)
	return u, err
}

// CreateUser inserts a user and, in the same transaction, its first verification link
// with its pending mail (the outbox the alerter sends from); ErrEmailTaken when the
// e-mail exists (in any case).
func (s *Store) CreateUser(ctx context.Context, name, email, passwordHash string, now time.Time, v NewVerification) (User, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return User{}, err
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return User{}, mapErr("creating user", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	u, err := scanUser(tx.QueryRow(ctx, `
		INSERT INTO users (id, name, email, password_hash, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5)
		RETURNING `+userColumns, id, name, email, passwordHash, now))
	if err != nil {
		return User{}, mapErr("creating user", err)
	}
	if err := insertVerification(ctx, tx, u, now, v); err != nil {
		return User{}, mapErr("creating user", err)
	}
	return u, mapErr("creating user", tx.Commit(ctx))
}

// UserByEmail looks a user up by normalised e-mail (the lower(email) index).
func (s *Store) UserByEmail(ctx context.Context, email string) (User, error) {
	u, err := scanUser(s.db.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE lower(email) = lower($1)`, email))
	return u, mapErr("looking up user by email", err)
}

// UserByID looks a user up by id.
func (s *Store) UserByID(ctx context.Context, id uuid.UUID) (User, error) {
	u, err := scanUser(s.db.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
	return u, mapErr("looking up user", err)
}

// AccessValidity returns the instant before which the user's access tokens are refused
// and whether session (uuid.Nil: none) is still live; ErrNotFound when the user no
// longer exists.
func (s *Store) AccessValidity(ctx context.Context, id, session uuid.UUID) (validAfter time.Time, sessionLive bool, err error) {
	err = s.db.QueryRow(ctx, `SELECT u.tokens_valid_after, `+liveSessionSQL("$2")+` FROM users u WHERE u.id = $1`,
		id, sessionParam(session)).Scan(&validAfter, &sessionLive)
	return validAfter, sessionLive, mapErr("checking token validity", err)
}

// UpdatePasswordHash replaces a hash (cost upgrades at login).
func (s *Store) UpdatePasswordHash(ctx context.Context, id uuid.UUID, hash string) error {
	_, err := s.db.Exec(ctx, `UPDATE users SET password_hash = $2 WHERE id = $1`, id, hash)
	return mapErr("updating password hash", err)
}

// RevokeAllSessions is the "log out everywhere" hook (also for a future password
// change): access tokens issued before now are refused from now on, and every refresh
// token of the user is revoked.
func (s *Store) RevokeAllSessions(ctx context.Context, userID uuid.UUID, now time.Time) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return mapErr("revoking sessions", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `UPDATE users SET tokens_valid_after = $2, updated_at = $2 WHERE id = $1`, userID, now); err != nil {
		return mapErr("revoking sessions", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL`, userID, now); err != nil {
		return mapErr("revoking sessions", err)
	}
	return mapErr("revoking sessions", tx.Commit(ctx))
}
