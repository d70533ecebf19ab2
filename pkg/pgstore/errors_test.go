package pgstore_test

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

func TestUnavailable(t *testing.T) {
	for name, c := range map[string]struct {
		err  error
		want bool
	}{
		"admin shutdown":       {&pgconn.PgError{Code: "57P01"}, true},
		"cannot connect now":   {fmt.Errorf("querying: %w", &pgconn.PgError{Code: "57P03"}), true},
		"too many connections": {&pgconn.PgError{Code: "53300"}, true},
		"unique violation":     {&pgconn.PgError{Code: "23505"}, false},
		"syntax error":         {&pgconn.PgError{Code: "42601"}, false},
		"closed pool":          {fmt.Errorf("acquiring: %w", puddle.ErrClosedPool), true},
		"network":              {&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		"other":                {errors.New("boom"), false},
	} {
		require.Equal(t, c.want, pgstore.Unavailable(c.err), name)
	}
}
