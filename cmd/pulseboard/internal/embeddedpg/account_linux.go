package embeddedpg

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
)

// unprivilegedUser is who runs the embedded PostgreSQL when the process is root: an
// account every Linux system has, which owns nothing else of importance.
const unprivilegedUser = "nobody"

// account is an unprivileged user the process temporarily becomes (see do).
type account struct {
	name     string
	uid, gid int
}

// unprivileged returns the account to run PostgreSQL as, or nil when the process is not
// root (PostgreSQL then runs as the process's own user).
func unprivileged() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(unprivilegedUser)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL refuses to run as root and the embedded one would run as %s: %w", unprivilegedUser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, err
	}
	return &account{name: unprivilegedUser, uid: uid, gid: gid}, nil
}

// switching serialises do: credentials belong to the whole process.
var switching sync.Mutex

// do runs fn with the real and effective user and group ids of the account, and no
// supplementary groups, for the whole process (Go applies set*id to every thread), so
// that what fn starts (initdb, pg_ctl, postgres) runs as the account and what it creates
// belongs to it. Root stays the saved user id, which lets do switch back afterwards.
// Anything else the process does meanwhile also runs as the account.
func (a *account) do(fn func() error) (err error) {
	switching.Lock()
	defer switching.Unlock()
	ruid, rgid, egid := os.Getuid(), os.Getgid(), os.Getegid()
	groups, err := syscall.Getgroups()
	if err != nil {
		return err
	}
	if err := syscall.Setgroups([]int{}); err != nil {
		return fmt.Errorf("dropping root's groups to run PostgreSQL as %s: %w", a.name, err)
	}
	if err := syscall.Setresgid(a.gid, a.gid, -1); err != nil {
		_ = syscall.Setgroups(groups)
		return fmt.Errorf("switching to %s's group to run PostgreSQL: %w", a.name, err)
	}
	if err := syscall.Setresuid(a.uid, a.uid, 0); err != nil {
		_ = syscall.Setresgid(rgid, egid, -1)
		_ = syscall.Setgroups(groups)
		return fmt.Errorf("switching to %s to run PostgreSQL: %w", a.name, err)
	}
	defer func() {
		// Back to root: the saved user id allows it, and with it the capabilities return.
		// Failing here would leave the process as nobody: nothing sensible goes on.
		if rerr := syscall.Setresuid(ruid, 0, 0); rerr != nil {
			panic(fmt.Sprintf("embeddedpg: switching back to root: %v", rerr))
		}
		if rerr := syscall.Setresgid(rgid, egid, -1); rerr != nil {
			panic(fmt.Sprintf("embeddedpg: switching back to root's group: %v", rerr))
		}
		if rerr := syscall.Setgroups(groups); rerr != nil {
			panic(fmt.Sprintf("embeddedpg: restoring root's groups: %v", rerr))
		}
		// Changing ids clears the process's dumpable flag (core dumps, /proc ownership).
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 1, 0)
	}()
	return fn()
}
