// Package store is the api's PostgreSQL boundary: users, refresh-token families,
// projects, and the read side of events, rollups and alerts. Driver errors are mapped
// here and nowhere else: no rows → ErrNotFound, the users e-mail unique index →
// ErrEmailTaken, a closed pool or an unreachable server → ErrUnavailable; everything
// else is wrapped with the operation's name and is an internal error for callers.
//
// Every project query takes the caller's user id and filters on it in SQL, so another
// user's project is indistinguishable from a missing one (tenant isolation,
// docs/reliability.md promise 19).
package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound    = errors.New("not found")
	ErrEmailTaken  = errors.New("email already registered")
	ErrUnavailable = errors.New("database unavailable")
)

// Store runs the api's queries on a pool.
type Store struct {
	db *pgxpool.Pool
}

// New returns a Store on db.
func New(db *pgxpool.Pool) *Store { return &Store{db: db} }

// mapErr maps a driver error for operation op.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotFound
	case errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "users_email_key":
		return ErrEmailTaken
	case pgstore.Unavailable(err), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}
