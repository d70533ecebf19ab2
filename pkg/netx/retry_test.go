package netx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// failingListener returns errs from Accept, in order, before the real listener's.
type failingListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (f *failingListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

// Accept survives EMFILE (and any other error) with a growing backoff, and then returns
// the next connection: kfake's and miniredis's accept loops would have returned.
func TestRetryListenerSurvivesEMFILE(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	errs := []error{emfile(), emfile(), emfile(), &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ENFILE)},
		errors.New("some other accept error")}
	l := NewRetryListener(&failingListener{Listener: inner, errs: errs})
	defer l.Close()
	var mu sync.Mutex
	var seen []error
	var backoffs []time.Duration
	l.OnError = func(err error, b time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, err)
		backoffs = append(backoffs, b)
	}
	go func() {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = c.Write([]byte("x"))
			time.Sleep(2 * time.Second)
		}
	}()
	c, err := l.Accept()
	require.NoError(t, err)
	buf := make([]byte, 1)
	_, err = c.Read(buf)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 5)
	require.ErrorIs(t, seen[0], syscall.EMFILE)
	require.ErrorIs(t, seen[3], syscall.ENFILE)
	require.Equal(t, []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond}, backoffs)
	require.EqualValues(t, 5, l.Retries())
}

// The backoff stops growing at 1 s, and Close ends an Accept that is backing off.
func TestRetryListenerBackoffCapAndClose(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var errs []error
	for range 100 {
		errs = append(errs, emfile())
	}
	l := NewRetryListener(&failingListener{Listener: inner, errs: errs})
	var mu sync.Mutex
	var last time.Duration
	var n int
	l.OnError = func(_ error, b time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		last, n = b, n+1
	}
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return n >= 9 }, 10*time.Second, 10*time.Millisecond)
	mu.Lock()
	require.Equal(t, time.Second, last)
	mu.Unlock()
	require.NoError(t, l.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// A closed listener's Accept returns at once, without retrying.
func TestRetryListenerReturnsWhenClosed(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := NewRetryListener(inner)
	require.NoError(t, l.Close())
	_, err = l.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
	require.Zero(t, l.Retries())
}

// With real descriptor exhaustion (a child process with RLIMIT_NOFILE lowered and every
// descriptor taken), Accept keeps failing with EMFILE; once descriptors are free again it
// accepts the waiting connection.
func TestRetryListenerRealEMFILE(t *testing.T) {
	t.Parallel()
	if os.Getenv("NETX_EMFILE_CHILD") == "" {
		exe, err := os.Executable()
		require.NoError(t, err)
		cmd := exec.Command(exe, "-test.run", "^TestRetryListenerRealEMFILE$", "-test.v")
		cmd.Env = append(os.Environ(), "NETX_EMFILE_CHILD=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), "child: accepted after")
		return
	}
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: 64, Max: 64}))
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := NewRetryListener(inner)
	defer l.Close()
	var mu sync.Mutex
	var emfiles int
	l.OnError = func(err error, _ time.Duration) {
		if errors.Is(err, syscall.EMFILE) {
			mu.Lock()
			emfiles++
			mu.Unlock()
		}
	}
	// A client connection made before exhaustion waits in the backlog.
	client, err := net.Dial("tcp", inner.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	var hogs []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			require.ErrorIs(t, err, syscall.EMFILE)
			break
		}
		hogs = append(hogs, f)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return emfiles >= 3 }, 10*time.Second, 5*time.Millisecond)
	select {
	case <-accepted:
		t.Fatal("accepted while out of descriptors")
	default:
	}
	for _, f := range hogs {
		_ = f.Close()
	}
	select {
	case c := <-accepted:
		_ = c.Close()
		mu.Lock()
		fmt.Printf("child: accepted after %d EMFILE errors\n", emfiles)
		mu.Unlock()
	case <-time.After(5 * time.Second):
		t.Fatal("not accepted once descriptors were free")
	}
}
