// Package store is the alerter's storage boundary: every SQL statement of the alerter
// (evaluation, delivery, jobs, retention) is here, and PostgreSQL driver errors (pgx,
// pgconn) are mapped here and nowhere else: callers see ErrNotFound, ErrUnavailable
// (wrapped with the operation) or a wrapped error they only log.
//
// Transactions are explicit: Begin returns a Tx whose methods are the statements one
// unit of work runs (an evaluation under alert_state's row lock, one claimed delivery,
// …); Rollback after Commit is a no-op, so callers defer it.
package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// ErrNotFound: the row asked for does not exist (or, for a SKIP LOCKED claim, none is
// free now).
var ErrNotFound = errors.New("store: not found")

// ErrUnavailable: PostgreSQL could not be reached or is shutting down; retrying later
// may succeed.
var ErrUnavailable = errors.New("store: database unavailable")

// mapErr maps a driver error for op.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotFound
	case pgstore.Unavailable(err):
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

// Store is the alerter's database.
type Store struct {
	pool *pgxpool.Pool
}

// New returns the store of pool (owned by the caller).
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Tx is one transaction.
type Tx struct {
	tx pgx.Tx
}

// Begin starts a transaction.
func (s *Store) Begin(ctx context.Context) (*Tx, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, mapErr("beginning a transaction", err)
	}
	return &Tx{tx: tx}, nil
}

// Commit commits the transaction.
func (t *Tx) Commit(ctx context.Context) error {
	return mapErr("committing", t.tx.Commit(ctx))
}

// Rollback rolls the transaction back (a no-op after Commit). It is given its own
// context, so a cancelled caller still releases its locks at once.
func (t *Tx) Rollback(ctx context.Context) {
	_ = t.tx.Rollback(context.WithoutCancel(ctx))
}
