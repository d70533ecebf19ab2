package eventstore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Kind classifies a storage error by what the consumer should do about it.
type Kind uint8

// Kinds.
const (
	// KindTransient: the database is unreachable, overloaded, shutting down or asked
	// us to retry (connection loss, SQLSTATE classes 08 and 53, 57P0x, 40001, 40P01,
	// 25006 read-only after a failover, 55P03 lock timeout, 57014 statement timeout,
	// a deadline). Retry the same rows after a backoff.
	KindTransient Kind = iota
	// KindData: PostgreSQL refuses a row (SQLSTATE classes 22, 23, 54). Store bisects
	// these itself; they never reach the caller.
	KindData
	// KindNoPartition: a row's day has no events partition. Store re-ensures the
	// partitions and retries; it never reaches the caller either.
	KindNoPartition
	// KindUnexpected: anything else (a schema mismatch after a bad deploy, an internal
	// error). Also retried: stalling is visible, dropping events is not.
	KindUnexpected
)

var kindNames = [...]string{"transient", "data", "no_partition", "unexpected"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Error is a storage failure the caller must handle by retrying.
type Error struct {
	Kind Kind
	Err  error
}

func (e *Error) Error() string { return e.Kind.String() + " storage error: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Classify maps a pgx error to its Kind.
func Classify(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Not an answer from the server: a network error, a closed connection or
		// pool, a connect failure (*pgconn.ConnectError) or a deadline
		// (context.DeadlineExceeded, pgconn.Timeout). The server refused nothing.
		return KindTransient
	}
	code := pgErr.Code
	switch {
	case code == "23514" && pgErr.ConstraintName == "" && strings.HasPrefix(pgErr.Message, "no partition of relation"):
		return KindNoPartition
	case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"), strings.HasPrefix(code, "54"):
		return KindData
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"), strings.HasPrefix(code, "57P"),
		code == "40001", code == "40P01", code == "25006", code == "55P03", code == "57014":
		return KindTransient
	}
	return KindUnexpected
}

// rejection describes a data error for the dead-letter topic.
func rejection(err error) Rejection {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg := pgErr.Message
		if pgErr.Detail != "" {
			msg += " (" + pgErr.Detail + ")"
		}
		if pgErr.Where != "" {
			msg += " [" + pgErr.Where + "]"
		}
		return Rejection{Code: pgErr.Code, Message: msg}
	}
	return Rejection{Code: "", Message: err.Error()}
}
