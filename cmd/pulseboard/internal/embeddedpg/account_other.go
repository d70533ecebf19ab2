//go:build !linux

package embeddedpg

import (
	"errors"
	"os"
)

type account struct {
	name     string
	uid, gid int
}

// unprivileged: switching users is implemented for Linux only; elsewhere run the
// all-in-one as an ordinary user (PostgreSQL refuses root).
func unprivileged() (*account, error) {
	if os.Geteuid() == 0 {
		return nil, errors.New("PostgreSQL refuses to run as root: run the all-in-one as another user, or set DATABASE_URL")
	}
	return nil, nil
}

func (a *account) do(fn func() error) error { return fn() }
