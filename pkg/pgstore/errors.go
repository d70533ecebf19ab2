package pgstore

import (
	"errors"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// Unavailable reports whether err means PostgreSQL could not be used right now, so that
// retrying later may succeed: the server is shutting down (57P01), cannot take
// connections yet (57P03) or has too many (53300); the pool is closed; connecting or the
// network failed; a statement timed out (pgconn.Timeout). A PostgreSQL error
// about the statement itself (a constraint, a syntax error) is not unavailability. The
// store packages map driver errors to their sentinels with it.
func Unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "57P01" || pgErr.Code == "57P03" || pgErr.Code == "53300"
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.Is(err, puddle.ErrClosedPool) || errors.As(err, &connErr) || errors.As(err, &netErr) ||
		pgconn.Timeout(err)
}
