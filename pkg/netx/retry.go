// Package netx holds small networking helpers shared by the embedded components of the
// all-in-one.
package netx

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Backoff bounds of RetryListener, the same as net/http's Server.Serve.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = 1 * time.Second
)

// RetryListener wraps a listener whose Accept loop gives up on its first error (franz-go's
// kfake broker, miniredis): its Accept retries every error with a backoff from 5 ms
// doubling to 1 s, as net/http's Server.Serve does for temporary errors, and returns only
// once the listener is closed. Out of file descriptors (EMFILE, ENFILE), an accept loop
// that returns never listens again; this one serves again as soon as descriptors are free.
type RetryListener struct {
	net.Listener
	// OnError, when set, is called for each error retried (not for the one that says the
	// listener was closed), with the backoff about to be slept. It must not block.
	OnError func(err error, backoff time.Duration)

	closed    atomic.Bool
	closeOnce sync.Once
	done      chan struct{}
	initOnce  sync.Once
	retries   atomic.Int64
}

// NewRetryListener wraps ln.
func NewRetryListener(ln net.Listener) *RetryListener {
	return &RetryListener{Listener: ln}
}

func (l *RetryListener) init() {
	l.initOnce.Do(func() { l.done = make(chan struct{}) })
}

// Accept waits for the next connection, retrying any error until the listener is closed.
func (l *RetryListener) Accept() (net.Conn, error) {
	l.init()
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		if l.closed.Load() || errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		if backoff == 0 {
			backoff = minBackoff
		} else {
			backoff = min(2*backoff, maxBackoff)
		}
		l.retries.Add(1)
		if l.OnError != nil {
			l.OnError(err, backoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-l.done:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// Close closes the listener; a pending or later Accept returns an error.
func (l *RetryListener) Close() error {
	l.init()
	l.closed.Store(true)
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Retries is the number of Accept errors retried so far.
func (l *RetryListener) Retries() int64 { return l.retries.Load() }
