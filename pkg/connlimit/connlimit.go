// Package connlimit caps the connections a public listener holds open: in total and per
// client address, refusing the excess at once (so each refused connection gives its
// descriptor back immediately), shedding idle keep-alive connections when the total
// nears its cap (so new clients are served rather than refused), and draining the rest
// of an oversized request body before closing (so a client that sends its whole body
// before reading sees the 413 rather than a connection reset).
//
// Why not golang.org/x/net/netutil.LimitListener: it stops calling Accept when the cap is
// reached, so the excess waits in the kernel's accept backlog, invisible to metrics and
// to the server's timeouts, and a flood of idle connections from one address starves
// everyone else. Here every connection is accepted and judged: refused ones are answered
// (503, or 429 over the per-address cap) and closed within the Accept call, and counted.
//
// The per-address cap is by TCP peer address: behind a reverse proxy every connection
// comes from the proxy, so operators there raise the per-address cap (or set it to 0)
// and rely on the total and on the proxy's own limits.
//
// Servers report idleness through ConnState (net/http's Server.ConnState) or SetIdle
// (fasthttp's ConnState hook); a connection never reported idle (a request in progress,
// a hijacked WebSocket, an SSE stream) is never shed.
package connlimit

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Reason is why a connection was refused: a label value of the refused counter.
type Reason string

// The reasons.
const (
	ReasonTotal Reason = "total"
	ReasonPerIP Reason = "per_ip"
)

// Options configure a Listener.
type Options struct {
	// MaxConns caps the connections open at once (required, > 0).
	MaxConns int
	// MaxConnsPerIP caps them per client address; 0 means no per-address cap.
	MaxConnsPerIP int
	// HighWater is the number of open connections from which idle keep-alive connections
	// are closed, oldest first, to make room for new ones; 0 means 90 % of MaxConns.
	HighWater int
	// Refusal is written to a refused connection before it is closed (a complete HTTP
	// response with Connection: close); nil writes nothing. It must not block: it is
	// written with a short deadline on the Accept path.
	Refusal func(Reason) []byte
	// Namespace prefixes the metrics (e.g. pulseboard_api); Registerer registers them
	// (nil: a private registry).
	Namespace  string
	Registerer prometheus.Registerer
	// Logger gets one warning per minute at most while connections are refused or
	// descriptors run out (nil: discard).
	Logger *slog.Logger
}

// refusalWriteTimeout bounds the write of a refusal. A new connection's send buffer is
// empty, so the write does not wait in practice; the deadline is a guard.
const refusalWriteTimeout = 100 * time.Millisecond

// Listener is a net.Listener enforcing Options. Accept returns *Conn values.
type Listener struct {
	net.Listener
	o Options

	mu     sync.Mutex
	open   int
	perIP  map[netip.Addr]int
	idleHd *Conn // oldest idle connection
	idleTl *Conn // newest

	refused  *prometheus.CounterVec
	shed     prometheus.Counter
	lastWarn atomic.Int64 // unix nanos of the last warning
}

// New wraps ln. It panics if MaxConns is not positive (a configuration bug).
func New(ln net.Listener, o Options) *Listener {
	if o.MaxConns <= 0 {
		panic("connlimit: MaxConns must be positive")
	}
	if o.HighWater <= 0 || o.HighWater > o.MaxConns {
		o.HighWater = max(1, o.MaxConns*9/10)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Listener{Listener: ln, o: o, perIP: map[netip.Addr]int{}}
	f := promauto.With(o.Registerer)
	l.refused = f.NewCounterVec(prometheus.CounterOpts{
		Name: o.Namespace + "_connections_refused_total",
		Help: "Connections accepted and closed at once because the total (reason total) or the client address's (reason per_ip) connection cap was reached.",
	}, []string{"reason"})
	l.refused.WithLabelValues(string(ReasonTotal))
	l.refused.WithLabelValues(string(ReasonPerIP))
	l.shed = f.NewCounter(prometheus.CounterOpts{
		Name: o.Namespace + "_connections_shed_total",
		Help: "Idle keep-alive connections closed to make room because open connections passed the high-water mark.",
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: o.Namespace + "_open_connections",
		Help: "Connections open on the public listener (idle, busy, and long-lived streams).",
	}, func() float64 { return float64(l.Open()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: o.Namespace + "_max_connections",
		Help: "The cap on open connections of the public listener.",
	}, func() float64 { return float64(o.MaxConns) })
	return l
}

// Open is the number of connections open now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Accept waits for a connection within the caps. Connections over a cap are answered
// with Options.Refusal, closed and counted here, never returned. When the listener runs
// out of descriptors (EMFILE, ENFILE) it sheds idle connections and retries with a
// backoff instead of failing: fasthttp would take such an error as fatal.
func (l *Listener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				l.warn("out of file descriptors accepting connections (the connection cap is above what the process can open); shedding idle connections",
					"error", err, "open", l.Open(), "max_conns", l.o.MaxConns)
				if l.shedIdle(max(1, l.Open()/64)) > 0 {
					backoff = 0 // descriptors were freed: retry at once
					continue
				}
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return nil, err
		}
		backoff = 0
		if conn := l.admit(c); conn != nil {
			return conn, nil
		}
	}
}

// admit applies the caps to a new connection: a *Conn, or nil when it was refused.
func (l *Listener) admit(c net.Conn) *Conn {
	ip := peerAddr(c)
	l.mu.Lock()
	if l.o.MaxConnsPerIP > 0 && ip.IsValid() && l.perIP[ip] >= l.o.MaxConnsPerIP {
		l.mu.Unlock()
		l.refuse(c, ReasonPerIP)
		return nil
	}
	excess := l.open + 1 - l.o.HighWater
	l.mu.Unlock()
	if excess > 0 {
		l.shedIdle(excess)
	}
	l.mu.Lock()
	if l.open >= l.o.MaxConns {
		l.mu.Unlock()
		l.refuse(c, ReasonTotal)
		return nil
	}
	l.open++
	if ip.IsValid() {
		l.perIP[ip]++
	}
	l.mu.Unlock()
	return &Conn{Conn: c, l: l, ip: ip}
}

func (l *Listener) refuse(c net.Conn, r Reason) {
	l.refused.WithLabelValues(string(r)).Inc()
	if l.o.Refusal != nil {
		if b := l.o.Refusal(r); len(b) > 0 {
			_ = c.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
			_, _ = c.Write(b)
		}
	}
	_ = c.Close()
	l.warn("connection refused: connection cap reached", "reason", string(r), "peer", c.RemoteAddr().String(),
		"max_conns", l.o.MaxConns, "max_conns_per_ip", l.o.MaxConnsPerIP)
}

// warn logs at most once a minute.
func (l *Listener) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last < int64(time.Minute) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.o.Logger.Warn(msg, args...)
}

// shedIdle closes up to n idle connections, oldest first, and returns how many.
func (l *Listener) shedIdle(n int) int {
	var victims []*Conn
	l.mu.Lock()
	for ; n > 0 && l.idleHd != nil; n-- {
		c := l.idleHd
		l.unlinkLocked(c)
		victims = append(victims, c)
	}
	l.mu.Unlock()
	for _, c := range victims {
		l.shed.Inc()
		_ = c.Close()
	}
	return len(victims)
}

// SetIdle records whether c (a connection this listener returned) waits idle for its
// next request. Other connections are ignored.
func (l *Listener) SetIdle(c net.Conn, idle bool) {
	cc, ok := c.(*Conn)
	if !ok || cc.l != l {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cc.released {
		return
	}
	if cc.idle {
		l.unlinkLocked(cc)
	}
	if idle {
		cc.idle = true
		cc.prev = l.idleTl
		if l.idleTl != nil {
			l.idleTl.next = cc
		} else {
			l.idleHd = cc
		}
		l.idleTl = cc
	}
}

// ConnState is a net/http Server.ConnState hook feeding SetIdle.
func (l *Listener) ConnState(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateIdle:
		l.SetIdle(c, true)
	case http.StateActive, http.StateHijacked, http.StateClosed:
		l.SetIdle(c, false)
	}
}

func (l *Listener) unlinkLocked(c *Conn) {
	if !c.idle {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.idleHd = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.idleTl = c.prev
	}
	c.prev, c.next, c.idle = nil, nil, false
}

func (l *Listener) release(c *Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlinkLocked(c)
	c.released = true
	l.open--
	if c.ip.IsValid() {
		if n := l.perIP[c.ip] - 1; n > 0 {
			l.perIP[c.ip] = n
		} else {
			delete(l.perIP, c.ip)
		}
	}
}

func peerAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// Conn is a connection counted by a Listener until it is closed.
type Conn struct {
	net.Conn
	l  *Listener
	ip netip.Addr

	// Under l.mu: the idle list.
	prev, next *Conn
	idle       bool
	released   bool

	drainBytes   atomic.Int64
	drainTimeout atomic.Int64
	closeOnce    sync.Once
	closeErr     error
}

// Close closes the connection once (later calls return the first call's error), after
// draining the client's unread bytes when DrainOnClose asked for it, and gives its place
// back to the listener.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if n := c.drainBytes.Load(); n > 0 {
			c.drain(n, time.Duration(c.drainTimeout.Load()))
		}
		c.closeErr = c.Conn.Close()
		c.l.release(c)
	})
	return c.closeErr
}

// drain is a lingering close (RFC 9112 §9.6): send FIN after the response already
// written, then read and discard what the client still sends, until it closes its side,
// n bytes or the timeout. Closing with unread bytes would make the kernel answer with a
// reset, which on many TCP stacks discards the response the client has not read yet.
func (c *Conn) drain(n int64, timeout time.Duration) {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	_, _ = io.CopyN(io.Discard, c.Conn, n)
}

// CloseWrite half-closes the connection (net/http uses it before closing).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SetKeepAlive and SetKeepAlivePeriod pass TCP keep-alive settings through (fasthttp's
// Server.TCPKeepalive looks for them).
func (c *Conn) SetKeepAlive(on bool) error {
	if tc, ok := c.Conn.(interface{ SetKeepAlive(bool) error }); ok {
		return tc.SetKeepAlive(on)
	}
	return nil
}

// SetKeepAlivePeriod: see SetKeepAlive.
func (c *Conn) SetKeepAlivePeriod(d time.Duration) error {
	if tc, ok := c.Conn.(interface{ SetKeepAlivePeriod(time.Duration) error }); ok {
		return tc.SetKeepAlivePeriod(d)
	}
	return nil
}

// DrainOnClose makes the Close of c, a connection a Listener returned, first read and
// discard up to n bytes the client still sends (for at most timeout), after the response
// already written: for a 413 to a client that writes its whole body before reading.
// It reports false (and does nothing) for any other connection.
func DrainOnClose(c net.Conn, n int64, timeout time.Duration) bool {
	cc, ok := c.(*Conn)
	if !ok || n <= 0 || timeout <= 0 {
		return false
	}
	cc.drainTimeout.Store(int64(timeout))
	cc.drainBytes.Store(n)
	return true
}

// Drain bounds for a rejected request body: at most DrainMaxBytes, for at most
// DrainTimeout, beyond which the connection is closed as it would have been.
const (
	DrainMaxBytes = 8 << 20
	DrainTimeout  = 5 * time.Second
)

// HTTPRefusal returns a minimal HTTP/1.1 response with Connection: close, a Retry-After
// of one second and body as application/json, for Options.Refusal.
func HTTPRefusal(status int, body []byte) []byte {
	b := make([]byte, 0, 160+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	return append(b, body...)
}
