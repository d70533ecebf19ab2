package live

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/google/uuid"
)

// Engine.IO 4, the transport under Socket.IO v4 (https://socket.io/docs/v4/engine-io-protocol/),
// written here on gobwas/ws rather than taken from github.com/zishang520/socket.io: that
// library (v3.0.6) buffers every packet for a socket in an unbounded slice until its
// transport is writable, so a client that stops reading holds unbounded memory, and it
// brings quic-go, webtransport-go, gorilla/websocket, brotli, msgpack and a terminal
// colour library into the api. Here a session's output is the live Hub's bounded
// per-client queue (QueueSize, QueueBytes) plus at most a ping and a few final
// packets, and the dependencies are the ones the WebSocket stream already uses.
//
// A session starts with a polling handshake (GET ?EIO=4&transport=polling) or directly
// on a WebSocket (?EIO=4&transport=websocket, no sid). Polling: a GET waits (long poll)
// until packets are owed, a POST carries packets from the client; one of each at a
// time. Upgrade: the client opens a WebSocket with the sid, sends "2probe", gets
// "3probe", the pending poll is answered with a noop so the client pauses polling, and
// the client's "5" makes the WebSocket the transport. The server pings ("2") every
// PingInterval; a ping not answered ("3") by the next one ends the session, and so does
// a session that sent no Socket.IO CONNECT within eioConnectTimeout.

const (
	// eioConnectTimeout bounds the time from the handshake to the Socket.IO CONNECT
	// (socket.io-client sends it at once).
	eioConnectTimeout = 10 * time.Second
	// eioMaxPending bounds the sessions of an instance that have not authenticated
	// yet; more handshakes are refused with 503 until some connect or time out.
	// Authenticated sessions are bounded by MaxConnsPerUser per user.
	eioMaxPending = 4096
	// eioUpgradeTimeout bounds a probing WebSocket: without the client's "5" by then it
	// is closed and the session stays on polling (polls answer noops while it probes).
	eioUpgradeTimeout = 10 * time.Second
	// eioSep separates packets in a polling payload (Engine.IO 4).
	eioSep = 0x1e
)

var (
	pktPing  = []byte("2")
	pktNoop  = []byte("6")
	pktClose = []byte("1")
)

// eioErr is an Engine.IO error answer: {"code":N,"message":...}.
type eioErr struct {
	code    int
	message string
}

var (
	eioErrTransport = eioErr{0, "Transport unknown"}
	eioErrSession   = eioErr{1, "Session ID unknown"}
	eioErrMethod    = eioErr{2, "Bad handshake method"}
	eioErrBad       = eioErr{3, "Bad request"}
	eioErrForbidden = eioErr{4, "Forbidden"}
	eioErrVersion   = eioErr{5, "Unsupported protocol version"}
	eioErrTooLarge  = eioErr{3, "Payload too large"}
	eioErrClosing   = eioErr{3, "Server is shutting down"}
	eioErrBusy      = eioErr{3, "Too many unauthenticated sessions; retry shortly"}
)

func (h *Hub) eioError(w http.ResponseWriter, status int, e eioErr, reason string) {
	h.m.rejected.WithLabelValues(string(transportSIO), reason).Inc()
	hd := w.Header()
	hd.Set("Content-Type", "application/json; charset=utf-8")
	if status == http.StatusServiceUnavailable {
		hd.Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	b := append([]byte(`{"code":`), strconv.Itoa(e.code)...)
	b = append(b, `,"message":"`...)
	b = append(b, e.message...) // constants: nothing to escape
	_, _ = w.Write(append(b, `"}`...))
}

// ServeSocketIO serves /socket.io/ (GET and POST): Engine.IO 4 handshakes, polls,
// posts and WebSocket upgrades, and the Socket.IO v4 protocol on top (sio.go). An Origin
// outside AllowedOrigins is refused on every request, as for the other live streams.
func (h *Hub) ServeSocketIO(w http.ResponseWriter, r *http.Request) {
	if o := r.Header.Values("Origin"); len(o) > 0 {
		if _, ok := h.origin[normalizeOrigin(o[0])]; !ok && !SameOrigin(r, o[0]) || len(o) > 1 {
			h.eioError(w, http.StatusForbidden, eioErrForbidden, rejectOrigin)
			return
		}
	}
	q := r.URL.Query()
	if q.Get("EIO") != "4" {
		h.eioError(w, http.StatusBadRequest, eioErrVersion, rejectBadRequest)
		return
	}
	tr := q.Get("transport")
	if tr != "polling" && tr != "websocket" {
		h.eioError(w, http.StatusBadRequest, eioErrTransport, rejectBadRequest)
		return
	}
	sid := q.Get("sid")
	if sid == "" {
		if r.Method != http.MethodGet {
			h.eioError(w, http.StatusBadRequest, eioErrMethod, rejectBadRequest)
			return
		}
		h.eioHandshake(w, r, tr == "websocket")
		return
	}
	s := h.eio.get(sid)
	if s == nil {
		h.eioError(w, http.StatusBadRequest, eioErrSession, rejectBadRequest)
		return
	}
	switch {
	case tr == "websocket" && r.Method == http.MethodGet:
		s.serveUpgrade(w, r)
	case tr == "polling" && r.Method == http.MethodGet:
		s.servePoll(w, r)
	case tr == "polling" && r.Method == http.MethodPost:
		s.servePost(w, r)
	default:
		h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
	}
}

// eioSessions are the Hub's Engine.IO sessions by sid.
type eioSessions struct {
	mu      sync.Mutex
	m       map[string]*eioSession
	pending int // sessions without a Socket.IO connection yet
}

func (r *eioSessions) add(s *eioSession) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending >= eioMaxPending {
		return false
	}
	if r.m == nil {
		r.m = map[string]*eioSession{}
	}
	r.m[s.sid] = s
	r.pending++
	s.pending = true
	return true
}

func (r *eioSessions) get(sid string) *eioSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[sid]
}

// connected stops counting s as pending.
func (r *eioSessions) connected(s *eioSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.pending {
		s.pending = false
		r.pending--
	}
}

func (r *eioSessions) remove(s *eioSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[s.sid] == s {
		delete(r.m, s.sid)
	}
	if s.pending {
		s.pending = false
		r.pending--
	}
}

func (r *eioSessions) all() []*eioSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*eioSession, 0, len(r.m))
	for _, s := range r.m {
		out = append(out, s)
	}
	return out
}

// terminateAll ends every session (Hub.Close): WebSocket transports get close 1001,
// a waiting poll the close packet; the clients reconnect elsewhere or later.
func (r *eioSessions) terminateAll() {
	for _, s := range r.all() {
		s.terminate(closeGoingAway)
	}
}

// forceAll closes every session's WebSocket connections at once (Close past its deadline).
func (r *eioSessions) forceAll() {
	for _, s := range r.all() {
		s.terminate(0)
		s.mu.Lock()
		for _, t := range []*eioWS{s.ws, s.probeWS} {
			if t != nil && t.conn != nil {
				_ = t.conn.Close()
			}
		}
		s.mu.Unlock()
	}
}

// eioSession is one Engine.IO session and the Socket.IO socket on it (sio.go).
//
// Goroutines: run (timers, kills and, once upgraded, every write to the WebSocket),
// plus a reader per WebSocket (the probe, then the transport). Polls and posts run on
// net/http's request goroutines. Packets from the client are handled one at a time
// (inMu). The session's output is ctrl (a ping, final packets) then queue, the Hub's
// bounded client queue that its socket and subscriptions share.
type eioSession struct {
	h     *Hub
	sid   string
	auth  []string // the handshake's Authorization header values
	queue *msgQueue

	ctx    context.Context // cancelled when the session ends (database queries)
	cancel context.CancelFunc

	pending bool // guarded by h.eio.mu

	mu        sync.Mutex
	ctrl      [][]byte // owed before the queue: final packets
	pingOwed  bool
	polling   bool // a GET is being served
	posting   bool // a POST is being served
	probing   bool // a WebSocket probe was answered: polls get a noop
	probeWS   *eioWS
	ws        *eioWS // the transport, once upgraded
	closing   bool   // ctrl holds the final packets; the writer ends the session after them
	finalCode ws.StatusCode
	abortCode ws.StatusCode // close frame sent at the end when none was (0: none)

	out      chan struct{} // cap 1: ctrl changed
	upgraded chan struct{} // closed when ws is set
	kick     chan struct{} // cap 1: run loop: a client was killed, the socket connected, closing
	done     chan struct{}
	doneOnce sync.Once

	awaitingPong atomic.Bool

	inMu sync.Mutex // one incoming packet at a time
	lim  limiter    // incoming packets (guarded by inMu)

	sockMu sync.Mutex
	anchor *client               // the socket once connected (admitted, counts per user)
	subs   map[uuid.UUID]*client // subscriptions (attached)

	wsCloseSent bool // run goroutine only
}

func newSID() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newSession registers a session; the caller starts run (which always cleans it up).
func (h *Hub) newSession(r *http.Request) (*eioSession, *eioErr) {
	h.connMu.Lock()
	if h.closing {
		h.connMu.Unlock()
		return nil, &eioErrClosing
	}
	h.streams.Add(1)
	h.connMu.Unlock()
	s := &eioSession{
		h:        h,
		sid:      newSID(),
		auth:     append([]string(nil), r.Header.Values("Authorization")...),
		queue:    newMsgQueue(transportSIO, h.cfg.QueueSize, h.cfg.QueueBytes),
		out:      make(chan struct{}, 1),
		upgraded: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		lim:      limiter{tokens: clientFrameBurst},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if !h.eio.add(s) {
		s.cancel()
		h.streams.Done()
		return nil, &eioErrBusy
	}
	h.connMu.Lock()
	closing := h.closing
	h.connMu.Unlock()
	if closing { // Close ran between the two checks and did not see this session
		s.terminate(closeGoingAway)
	}
	return s, nil
}

func (h *Hub) openPacket(sid string, upgrades bool) []byte {
	b := append(make([]byte, 0, 160), `0{"sid":"`...)
	b = append(b, sid...)
	b = append(b, `","upgrades":[`...)
	if upgrades {
		b = append(b, `"websocket"`...)
	}
	b = append(b, `],"pingInterval":`...)
	ms := h.cfg.PingInterval.Milliseconds()
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, `,"pingTimeout":`...)
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, `,"maxPayload":`...)
	b = strconv.AppendInt(b, h.cfg.MaxMessageBytes, 10)
	return append(b, '}')
}

func (h *Hub) eioHandshake(w http.ResponseWriter, r *http.Request, websocket bool) {
	if websocket && !isWebSocketUpgrade(r) {
		h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		return
	}
	s, e := h.newSession(r)
	if e != nil {
		h.eioError(w, http.StatusServiceUnavailable, *e, rejectUnavailable)
		return
	}
	go s.run()
	if !websocket {
		rc := http.NewResponseController(w)
		if !s.writePoll(w, rc, [][]byte{h.openPacket(s.sid, true)}) {
			s.terminate(0)
		}
		return
	}
	conn, src, ok := h.upgradeWS(w, r)
	if !ok {
		s.terminate(0)
		return
	}
	t := &eioWS{conn: conn, src: src, readerDone: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done: // cleanup may have looked already: nobody else will close it
		_ = conn.Close()
		return
	default:
	}
	s.ctrl = append(s.ctrl, h.openPacket(s.sid, false))
	s.ws = t
	close(s.upgraded)
	go s.readWS(t, true)
}

// upgradeWS completes a WebSocket handshake (no subprotocol, no compression: W7) and
// bounds the kernel's send buffer like the WebSocket stream does (F17).
func (h *Hub) upgradeWS(w http.ResponseWriter, r *http.Request) (net.Conn, io.Reader, bool) {
	up := ws.HTTPUpgrader{Timeout: h.cfg.WriteTimeout}
	conn, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		if conn != nil {
			_ = conn.Close()
		}
		return nil, nil, false
	}
	var src io.Reader = conn
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		src = io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(wsSendBufferBytes)
	}
	return conn, src, true
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *eioSession) kickRun() { signal(s.kick) }

// terminate ends the session now; code is the close frame a WebSocket transport gets
// if none was sent (0: none). The run goroutine cleans up.
func (s *eioSession) terminate(code ws.StatusCode) {
	s.doneOnce.Do(func() {
		s.mu.Lock()
		s.abortCode = code
		s.mu.Unlock()
		s.cancel()
		close(s.done)
	})
}

// finish ends the session after pkts: the writer sends them, then the close packet
// (on the next poll; the client usually closes first) or a close frame with code
// (WebSocket; 0 means 1000). A client that does not come for them within WriteTimeout
// is cut off.
func (s *eioSession) finish(code ws.StatusCode, pkts ...[]byte) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing, s.finalCode = true, code
	s.ctrl = append(s.ctrl, pkts...)
	s.mu.Unlock()
	signal(s.out)
	s.kickRun()
}

func (s *eioSession) run() {
	defer s.cleanup()
	h := s.h
	ping := time.NewTicker(h.cfg.PingInterval)
	defer ping.Stop()
	connectT := time.NewTimer(eioConnectTimeout)
	defer connectT.Stop()
	var expiry, closeT <-chan time.Time
	var t *eioWS
	var readerDone chan struct{}
	upgraded := s.upgraded
	for {
		var out, ready <-chan struct{}
		if t != nil {
			out, ready = s.out, s.queue.ready
		}
		select {
		case <-s.done:
			return
		case <-upgraded:
			upgraded = nil
			s.mu.Lock()
			t = s.ws
			s.mu.Unlock()
			readerDone = t.readerDone
			signal(s.out) // what is owed goes out on the WebSocket now
			s.queue.signal()
		case <-out:
			if !s.flushWS(t) {
				return
			}
		case <-ready:
			if !s.flushWS(t) {
				return
			}
		case <-readerDone:
			s.terminate(0)
			return
		case <-ping.C:
			if s.awaitingPong.Swap(true) {
				s.terminate(0) // the previous ping was not answered
				return
			}
			s.mu.Lock()
			s.pingOwed = true
			s.mu.Unlock()
			signal(s.out)
		case <-connectT.C:
			if s.socket() == nil {
				s.terminate(0)
				return
			}
		case <-s.kick:
			s.checkClients()
			if a := s.socket(); a != nil && expiry == nil {
				et := time.NewTimer(time.Until(a.expires))
				defer et.Stop()
				expiry = et.C
			}
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing && closeT == nil {
				ct := time.NewTimer(h.cfg.WriteTimeout)
				defer ct.Stop()
				closeT = ct.C
			}
		case <-expiry:
			// Closed like the WebSocket stream at exp; no DISCONNECT, so socket.io-client
			// reconnects, with a fresh token if the application set socket.auth.
			s.finish(closeTokenExpired, sioEmit("error", sioError{Code: "UNAUTHORIZED", Message: "token expired"}))
		case <-closeT:
			s.terminate(0)
			return
		}
	}
}

// eioBatch is one write's packets.
type eioBatch struct {
	pkts     [][]byte
	msgs     []*message
	events   int
	finished bool
	more     bool
}

var eioBatchPool = sync.Pool{New: func() any {
	return &eioBatch{pkts: make([][]byte, 0, writeBatch+4), msgs: make([]*message, 0, writeBatch)}
}}

func getEIOBatch() *eioBatch { return eioBatchPool.Get().(*eioBatch) }

func putEIOBatch(b *eioBatch) {
	clear(b.pkts[:cap(b.pkts)])
	clear(b.msgs[:cap(b.msgs)])
	b.pkts, b.msgs, b.events, b.finished, b.more = b.pkts[:0], b.msgs[:0], 0, false, false
	eioBatchPool.Put(b)
}

// collect takes what is owed: a ping, ctrl, then up to a write batch of the queue, and
// resyncs once the queue is drained. Closing, only the final packets (ctrl) are taken;
// once they were sent, finished says the close (packet or frame) is next. The close
// never goes in the same write as the final packets: socket.io-client handles a
// Socket.IO packet on the next microtask but a close packet of the same polling
// payload at once, so it would see "transport close" instead of the DISCONNECT or
// CONNECT_ERROR.
func (s *eioSession) collect(b *eioBatch) {
	s.mu.Lock()
	if s.closing {
		b.pkts = append(b.pkts, s.ctrl...)
		b.finished = len(s.ctrl) == 0
		s.ctrl = nil
		s.mu.Unlock()
		return
	}
	if s.pingOwed {
		b.pkts = append(b.pkts, pktPing)
		s.pingOwed = false
	}
	b.pkts = append(b.pkts, s.ctrl...)
	s.ctrl = nil
	s.mu.Unlock()
	b.msgs, b.more = s.queue.pop(b.msgs, writeBatch, writeBatchBytes)
	for _, m := range b.msgs {
		if m.missed != 0 {
			s.h.m.resyncs.WithLabelValues(string(transportSIO), resyncReason(m.missed)).Inc()
			b.pkts = append(b.pkts, sioResync(m.project, m.missed))
			continue
		}
		b.pkts = append(b.pkts, m.sio)
		if !m.sioReply {
			b.events++
		}
	}
	if !b.more {
		s.sockMu.Lock()
		for _, c := range s.subs {
			if missed := c.takeMissed(); missed != 0 {
				s.h.m.resyncs.WithLabelValues(string(transportSIO), resyncReason(missed)).Inc()
				b.pkts = append(b.pkts, sioResync(c.projectID, missed))
			}
		}
		s.sockMu.Unlock()
	}
}

// flushWS writes what is owed to the WebSocket transport; false ends the run loop.
func (s *eioSession) flushWS(t *eioWS) bool {
	b := getEIOBatch()
	defer putEIOBatch(b)
	s.collect(b)
	if len(b.pkts) == 0 && !b.finished {
		return true
	}
	bufs := make(net.Buffers, 0, 2*len(b.pkts)+1)
	hdrs := make([]byte, 0, ws.MaxHeaderSize*len(b.pkts))
	for _, p := range b.pkts {
		start := len(hdrs)
		hdrs = appendTextHeader(hdrs, len(p))
		bufs = append(bufs, hdrs[start:len(hdrs):len(hdrs)], p)
	}
	if b.finished {
		s.mu.Lock()
		code := s.finalCode
		s.mu.Unlock()
		if code == 0 {
			code = ws.StatusNormalClosure
		}
		bufs = append(bufs, wsCloseFrame(code, ""))
	}
	if err := t.writeBufs(bufs, s.h.cfg.WriteTimeout); err != nil {
		s.writeFailed(err)
		return false
	}
	s.h.m.byTransport[transportSIO].sent.Add(float64(b.events))
	if b.finished {
		s.wsCloseSent = true
		t.closeSent.Store(true)
		s.terminate(0)
		return false
	}
	if b.more {
		s.queue.signal() // the rest after a turn through the select
	}
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		signal(s.out) // the close frame, in a write of its own
	}
	return true
}

// appendTextHeader appends the header of a final, unmasked text frame of n bytes.
func appendTextHeader(dst []byte, n int) []byte {
	switch {
	case n < 126:
		return append(dst, 0x81, byte(n))
	case n <= 0xffff:
		return append(dst, 0x81, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x81, 127)
		for i := 7; i >= 0; i-- {
			dst = append(dst, byte(uint64(n)>>(8*i)))
		}
		return dst
	}
}

func (s *eioSession) writeFailed(err error) {
	if isTimeout(err) {
		s.h.m.slowClosed.WithLabelValues(string(transportSIO), slowWriteTimeout).Inc()
		s.h.logger.Info("live: Socket.IO client stopped reading; disconnected", "timeout", s.h.cfg.WriteTimeout)
	}
	s.terminate(0)
}

// writePoll answers a poll (or the handshake) with pkts, under WriteTimeout.
func (s *eioSession) writePoll(w http.ResponseWriter, rc *http.ResponseController, pkts [][]byte) bool {
	n := len(pkts) - 1
	for _, p := range pkts {
		n += len(p)
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/plain; charset=UTF-8")
	hd.Set("Content-Length", strconv.Itoa(n))
	_ = rc.SetWriteDeadline(time.Now().Add(s.h.cfg.WriteTimeout))
	w.WriteHeader(http.StatusOK)
	for i, p := range pkts {
		if i > 0 {
			if _, err := w.Write([]byte{eioSep}); err != nil {
				s.writeFailed(err)
				return false
			}
		}
		if _, err := w.Write(p); err != nil {
			s.writeFailed(err)
			return false
		}
	}
	if err := rc.Flush(); err != nil {
		s.writeFailed(err)
		return false
	}
	return true
}

// servePoll is a polling GET: it answers at once with what is owed, or waits for it
// (a ping is owed every PingInterval, so the wait is bounded).
func (s *eioSession) servePoll(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	switch {
	case s.ws != nil: // upgraded: polling is over
		s.mu.Unlock()
		s.h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		return
	case s.polling: // overlapping polls: a broken client
		s.mu.Unlock()
		s.h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		s.terminate(0)
		return
	}
	s.polling = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.polling = false
		s.mu.Unlock()
	}()
	rc := http.NewResponseController(w)
	// A long poll must outlive the server's read and write timeouts (the write gets
	// its own deadline): net/http cancels a request whose background read times out.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	b := getEIOBatch()
	defer putEIOBatch(b)
	for {
		s.mu.Lock()
		noop := s.probing || s.ws != nil
		s.mu.Unlock()
		if noop { // the client pauses polling to upgrade
			s.writePoll(w, rc, [][]byte{pktNoop})
			return
		}
		s.collect(b)
		if b.finished {
			b.pkts = append(b.pkts, pktClose) // alone: see collect
		}
		if len(b.pkts) > 0 {
			if !s.writePoll(w, rc, b.pkts) {
				return
			}
			s.h.m.byTransport[transportSIO].sent.Add(float64(b.events))
			if b.finished {
				s.terminate(0)
			} else if b.more {
				s.queue.signal()
			}
			return
		}
		select {
		case <-s.out:
		case <-s.queue.ready:
		case <-s.upgraded:
		case <-s.done:
			s.writePoll(w, rc, [][]byte{pktClose})
			return
		case <-r.Context().Done():
			return // nothing was taken from the queue
		}
	}
}

// servePost is a polling POST: packets from the client, at most maxPayload bytes.
func (s *eioSession) servePost(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.posting {
		s.mu.Unlock()
		s.h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		s.terminate(0)
		return
	}
	s.posting = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.posting = false
		s.mu.Unlock()
	}()
	limit := s.h.cfg.MaxMessageBytes
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		s.h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		s.terminate(0)
		return
	}
	if int64(len(body)) > limit {
		s.h.eioError(w, http.StatusRequestEntityTooLarge, eioErrTooLarge, rejectBadRequest)
		s.terminate(0)
		return
	}
	for p := range bytes.SplitSeq(body, []byte{eioSep}) {
		if !s.receive(p) {
			break
		}
	}
	w.Header().Set("Content-Type", "text/html")
	_, _ = io.WriteString(w, "ok")
}

// receive handles one Engine.IO packet from the client; false: the session ended.
func (s *eioSession) receive(p []byte) bool {
	s.inMu.Lock()
	defer s.inMu.Unlock()
	select {
	case <-s.done:
		return false
	default:
	}
	if !s.lim.allow(time.Now()) {
		s.h.logger.Info("live: Socket.IO client sent too many packets; disconnected")
		s.terminate(closeRateLimited)
		return false
	}
	if len(p) == 0 {
		s.terminate(closeProtocolFail)
		return false
	}
	switch p[0] {
	case '1': // close
		s.terminate(0)
		return false
	case '2', '6': // v4 clients do not ping; "2probe" comes only on a probing WebSocket
		return true
	case '3':
		s.awaitingPong.Store(false)
		return true
	case '4':
		return s.handleSIO(p[1:])
	default: // '5' outside an upgrade, binary ('b' base64 payloads), garbage
		s.terminate(closeProtocolFail)
		return false
	}
}

// serveUpgrade opens the WebSocket that probes, then carries, an existing session.
func (s *eioSession) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	if !isWebSocketUpgrade(r) {
		s.h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		return
	}
	t := &eioWS{readerDone: make(chan struct{})}
	s.mu.Lock()
	if s.ws != nil || s.probeWS != nil || s.closing {
		s.mu.Unlock()
		s.h.eioError(w, http.StatusBadRequest, eioErrBad, rejectBadRequest)
		return
	}
	s.probeWS = t // claimed
	s.mu.Unlock()
	conn, src, ok := s.h.upgradeWS(w, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		s.probeWS = nil
		return
	}
	select {
	case <-s.done: // cleanup may have looked already: nobody else will close it
		s.probeWS = nil
		_ = conn.Close()
		return
	default:
	}
	t.conn, t.src = conn, src
	go s.readWS(t, false)
}

// upgrade makes t the transport (the client's "5").
func (s *eioSession) upgrade(t *eioWS) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return false
	default:
	}
	if s.ws != nil || s.probeWS != t {
		return false
	}
	s.ws, s.probeWS, s.probing = t, nil, false
	close(s.upgraded)
	return true
}

// cleanup runs when the run loop ends: the transports are closed, in-flight packet
// handling finishes, the socket's clients are released and the session forgotten.
func (s *eioSession) cleanup() {
	s.terminate(0)
	s.mu.Lock()
	t, probe, code := s.ws, s.probeWS, s.abortCode
	if probe != nil && probe.conn == nil {
		probe = nil // still upgrading: serveUpgrade closes it when it sees done
	}
	s.mu.Unlock()
	if t != nil {
		var frame []byte
		if !s.wsCloseSent && code != 0 {
			frame = wsCloseFrame(code, "")
		}
		t.shutdown(frame, s.wsCloseSent || frame != nil)
	}
	if probe != nil {
		probe.shutdown(nil, false)
	}
	s.inMu.Lock() // a subscribe in flight gives up as soon as done is closed
	s.sockMu.Lock()
	anchor, subs := s.anchor, s.subs
	s.subs = nil
	s.sockMu.Unlock()
	s.inMu.Unlock()
	for _, c := range subs {
		s.h.release(c)
	}
	if anchor != nil {
		s.h.release(anchor)
	}
	s.h.eio.remove(s)
	s.h.streams.Done()
}

// eioWS is one WebSocket of a session (probing, then the transport). Writes are
// serialised by wmu (gobwas/ws does not, W4): the run loop writes packets, the reader
// answers control frames and the probe.
type eioWS struct {
	conn       net.Conn
	src        io.Reader
	wmu        sync.Mutex
	closeSent  atomic.Bool
	draining   atomic.Bool // the read deadline is the close grace: the reader must not extend it
	readerDone chan struct{}
}

func (t *eioWS) writeBufs(bufs net.Buffers, timeout time.Duration) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_ = t.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := bufs.WriteTo(t.conn)
	return err
}

func (t *eioWS) write(frame []byte, timeout time.Duration) error {
	return t.writeBufs(net.Buffers{frame}, timeout)
}

// shutdown ends the connection: with grace, the reader has closeGrace to see the
// client's close frame or EOF (frame, if any, is written first); without, it is closed.
func (t *eioWS) shutdown(frame []byte, grace bool) {
	if frame != nil && !t.closeSent.Swap(true) {
		_ = t.write(frame, closeGrace)
	}
	if grace {
		t.draining.Store(true)
		_ = t.conn.SetReadDeadline(time.Now().Add(closeGrace))
	} else {
		_ = t.conn.Close()
	}
	<-t.readerDone
	_ = t.conn.Close()
}

// readWS reads t: the probe ("2probe", "5") until upgraded, then packets. When the
// transport's reader ends, the session ends; a failed probe leaves the session on
// polling.
func (s *eioSession) readWS(t *eioWS, upgraded bool) {
	defer func() {
		close(t.readerDone)
		if upgraded {
			s.terminate(0)
			return
		}
		s.mu.Lock()
		if s.probeWS == t {
			s.probeWS, s.probing = nil, false
		}
		s.mu.Unlock()
		_ = t.conn.Close()
	}()
	cfg := &s.h.cfg
	rd, count := frameReader(t.src, cfg, func(h ws.Header, r io.Reader) error { return t.control(h, r, cfg.WriteTimeout) })
	readTimeout := cfg.PingInterval * 5 / 2
	probeEnd := time.Now().Add(eioUpgradeTimeout)
	var msg bytes.Buffer
	for {
		switch {
		case t.draining.Load():
		case !upgraded:
			_ = t.conn.SetReadDeadline(probeEnd)
		default:
			_ = t.conn.SetReadDeadline(time.Now().Add(readTimeout))
		}
		hdr, err := rd.NextFrame()
		if err == nil {
			err = count()
		}
		if err == nil && hdr.OpCode.IsControl() {
			err = t.control(hdr, rd, cfg.WriteTimeout)
			if err == nil {
				continue
			}
		}
		if err == nil && hdr.OpCode == ws.OpBinary {
			err = errBinary
		}
		if err == nil {
			msg.Reset()
			_, err = io.Copy(&msg, &cappedReader{r: rd, left: cfg.MaxMessageBytes})
		}
		if err != nil {
			t.readFailed(err, cfg.WriteTimeout)
			return
		}
		p := msg.Bytes()
		if !upgraded {
			switch string(p) {
			case "2probe":
				if t.write(wsTextFrame("3probe"), cfg.WriteTimeout) != nil {
					return
				}
				s.mu.Lock()
				s.probing = s.probeWS == t
				s.mu.Unlock()
				signal(s.out) // a waiting poll answers with a noop
			case "5":
				if !s.upgrade(t) {
					return
				}
				upgraded = true
			default:
				return
			}
			continue
		}
		if !s.receive(p) {
			return
		}
	}
}

var errBinary = errors.New("live: binary Socket.IO packets are not supported")

// control answers a control frame at once (the payload is read in full first, W4).
func (t *eioWS) control(h ws.Header, r io.Reader, timeout time.Duration) error {
	buf, err := controlAnswer(h, r)
	if err != nil && buf == nil {
		return err
	}
	if buf.Len() > 0 && (h.OpCode != ws.OpClose || !t.closeSent.Swap(true)) {
		_ = t.write(buf.Bytes(), timeout)
	}
	return err
}

// readFailed sends the close frame a read error calls for (as the WebSocket stream
// does) and drains what the client still sends for closeGrace.
func (t *eioWS) readFailed(err error, timeout time.Duration) {
	var closed wsutil.ClosedError
	var proto ws.ProtocolError
	var frame []byte
	switch {
	case errors.As(err, &closed):
		return
	case errors.Is(err, wsutil.ErrFrameTooLarge), errors.Is(err, wsutil.ErrMessageTooLarge), errors.Is(err, errMessageTooLarge):
		frame = wsCloseFrame(closeTooBig, "message too big")
	case errors.Is(err, errTooManyFrames):
		frame = wsCloseFrame(closeRateLimited, "too many frames")
	case errors.Is(err, errBinary):
		frame = wsCloseFrame(ws.StatusUnsupportedData, "binary packets are not supported")
	case errors.Is(err, wsutil.ErrInvalidUTF8):
		frame = wsCloseFrame(closeInvalidUTF8, "invalid UTF-8")
	case errors.As(err, &proto):
		frame = wsCloseFrame(closeProtocolFail, string(proto))
	case errors.Is(err, ws.ErrHeaderLengthMSB), errors.Is(err, ws.ErrHeaderLengthUnexpected):
		frame = wsCloseFrame(closeProtocolFail, "invalid frame length")
	default:
		return
	}
	if t.closeSent.Swap(true) || t.write(frame, timeout) != nil {
		return
	}
	t.draining.Store(true)
	_ = t.conn.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.Copy(io.Discard, io.LimitReader(t.src, 1<<20))
}
