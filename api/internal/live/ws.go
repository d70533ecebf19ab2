package live

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

const (
	// closeGrace is how long the server waits for the client's close frame (or EOF)
	// after it sent its own, before it drops the TCP connection.
	closeGrace = time.Second
	// writeBatch is the most queued messages written at once (one writev for
	// WebSocket, one flush for SSE), writeBatchBytes about the most bytes: a consumer
	// batch of thousands of events then takes tens of system calls, not thousands.
	writeBatch      = 256
	writeBatchBytes = 64 << 10
	// A client has no reason to send more than pongs and the odd ping; a flood is cut
	// off with 1008 (docs/reliability.md B78).
	clientFrameBurst  = 100
	clientFramesPerS  = 10
	closeRateLimited  = ws.StatusPolicyViolation
	closeTooBig       = ws.StatusMessageTooBig
	closeInvalidUTF8  = ws.StatusInvalidFramePayloadData
	closeProtocolFail = ws.StatusProtocolError
	// wsSendBufferBytes is the socket send buffer of a WebSocket stream (SO_SNDBUF; the
	// kernel doubles it for its bookkeeping). A live stream carries a few events per
	// second per project, far below what 64 KiB per round trip allows, and a client that
	// stops reading fills it within a write or two and is closed after WriteTimeout.
	wsSendBufferBytes = 64 << 10
)

// ServeWS serves GET /realtime/{projectId}: every check happens before the upgrade
// (401, 403, 404, 429, 503 as JSON), then the stream sends {"type":"connected"} and one
// text frame per stored event.
func (h *Hub) ServeWS(w http.ResponseWriter, r *http.Request) {
	c, _, ok := h.open(w, r, transportWS)
	if !ok {
		return
	}
	up := ws.HTTPUpgrader{
		Timeout: h.cfg.WriteTimeout,
		// Browsers that sent "bearer, <jwt>" fail the handshake unless one offered
		// subprotocol is selected; the token itself is never echoed.
		Protocol: func(p string) bool { return p == bearerSubprotocol },
		// No Negotiate: permessage-deflate stays off (docs/reliability.md W7).
	}
	conn, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		// gobwas has answered the handshake error on the hijacked connection.
		if conn != nil {
			_ = conn.Close()
		}
		h.release(c)
		return
	}
	// Bytes the client sent right after its handshake may sit in the server's buffer.
	var src io.Reader = conn
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		src = io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn)
	}
	// Bound what the kernel buffers for this client (F17): left to autotuning, the send
	// buffer of a client that stops reading grows to net.ipv4.tcp_wmem's maximum (4 MiB
	// by default) before a write blocks, so a thousand such clients hold gigabytes of
	// kernel memory, push the host into TCP memory pressure and take the CPU of copying
	// it all, delaying every other client.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(wsSendBufferBytes)
	}
	c.setForceClose(func() { _ = conn.Close() })
	// The handler returns: its goroutine (and net/http's per-connection state) is freed,
	// leaving two goroutines per connection, the reader and the writer.
	newWSStream(h, c, conn, src).start()
}

// newWSStream is the stream of an upgraded connection: src is what the client sends
// (conn, possibly behind bytes already buffered), conn carries the deadlines and every
// write. The fuzz tests drive it over an in-memory connection.
func newWSStream(h *Hub, c *client, conn net.Conn, src io.Reader) *wsStream {
	return &wsStream{
		h:          h,
		c:          c,
		conn:       conn,
		src:        src,
		pong:       make(chan []byte, 1),
		closeReq:   make(chan []byte, 1),
		stopWriter: make(chan struct{}),
		writerDone: make(chan struct{}),
	}
}

// start runs the writer and the reader; the reader releases the client when both ended.
func (s *wsStream) start() {
	go s.writeLoop()
	go s.readLoop()
}

// wsStream is one upgraded WebSocket connection. gobwas/ws does not synchronise writes
// (W4), so only writeLoop writes to conn; the reader hands it pong and close frames.
type wsStream struct {
	h    *Hub
	c    *client
	conn net.Conn
	src  io.Reader

	pong       chan []byte   // the latest pong owed to the client
	closeReq   chan []byte   // the close frame that ends the stream, from the reader
	stopWriter chan struct{} // closed by the reader when it is done
	writerDone chan struct{}

	mu        sync.Mutex // orders closeSent and read deadlines between reader and writer
	closeSent bool
	graceEnd  time.Time
}

// frameReader reads a client's WebSocket frames within the configured frame and message
// sizes, with UTF-8 checked and control frames inside a fragmented message handed to
// control. Every frame counts against the flood limit, continuation and control
// frames included: count charges a frame NextFrame returned, and errTooManyFrames ends
// the stream.
func frameReader(src io.Reader, cfg *Config, control func(ws.Header, io.Reader) error) (*wsutil.Reader, func() error) {
	lim := limiter{tokens: clientFrameBurst}
	count := func() error {
		if !lim.allow(time.Now()) {
			return errTooManyFrames
		}
		return nil
	}
	return &wsutil.Reader{
		Source:         src,
		State:          ws.StateServerSide,
		CheckUTF8:      true,
		MaxFrameSize:   cfg.MaxFrameBytes,
		MaxMessageSize: cfg.MaxMessageBytes,
		OnIntermediate: func(h ws.Header, r io.Reader) error {
			if err := count(); err != nil {
				return err
			}
			return control(h, r)
		},
		OnContinuation: func(ws.Header, io.Reader) error { return count() },
	}, count
}

func (s *wsStream) readLoop() {
	cfg := &s.h.cfg
	rd, count := frameReader(s.src, cfg, s.control)
	readTimeout := cfg.PingInterval * 5 / 2
	drain := false
	for {
		if !s.extendReadDeadline(time.Now().Add(readTimeout)) {
			break
		}
		hdr, err := rd.NextFrame()
		if err == nil {
			err = count()
		}
		if err != nil {
			drain = s.readFailed(err)
			break
		}
		if hdr.OpCode.IsControl() {
			if err := s.control(hdr, rd); err != nil {
				drain = s.readFailed(err)
				break
			}
			continue
		}
		// The stream is one-way and client messages are ignored, but each is read in
		// full so that the size caps and UTF-8 are enforced (W1, W2, W6).
		if _, err := io.Copy(io.Discard, &cappedReader{r: rd, left: cfg.MaxMessageBytes}); err != nil {
			drain = s.readFailed(err)
			break
		}
	}
	close(s.stopWriter)
	<-s.writerDone
	if drain {
		// Read what the client still sends until its close frame and EOF, so that
		// closing does not reset the connection under our close frame.
		_ = s.conn.SetReadDeadline(time.Now().Add(closeGrace))
		_, _ = io.Copy(io.Discard, io.LimitReader(s.src, 1<<20))
	}
	_ = s.conn.Close()
	s.h.release(s.c)
}

// extendReadDeadline sets the next read deadline, unless the server already sent its
// close frame: then only the grace period remains. It reports false if that has passed.
func (s *wsStream) extendReadDeadline(t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closeSent {
		t = s.graceEnd
	}
	return s.conn.SetReadDeadline(t) == nil && time.Now().Before(t)
}

// controlAnswer reads a control frame's whole payload (at most 125 bytes) and encodes
// its answer (a pong, or the close frame) with wsutil.ControlFrameHandler into a buffer,
// not onto the wire. The body reader of a control frame inside a fragmented message
// reports a cut-off payload as a plain EOF, and the handler would then answer, with a
// truncated pong, a ping the client never finished sending: so the payload is read
// first. A nil buffer means the payload could not be read; otherwise err is the
// handler's (a close frame's wsutil.ClosedError).
func controlAnswer(h ws.Header, r io.Reader) (*bytes.Buffer, error) {
	if h.Length > ws.MaxControlFramePayloadSize {
		return nil, ws.ErrProtocolControlPayloadOverflow
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	buf := &bytes.Buffer{}
	err := wsutil.ControlFrameHandler(buf, ws.StateServerSide)(h, bytes.NewReader(payload))
	return buf, err
}

// control answers a control frame through the writer (W4): the pong or the close
// frame is encoded by wsutil.ControlFrameHandler into a buffer, not onto the wire.
func (s *wsStream) control(h ws.Header, r io.Reader) error {
	buf, err := controlAnswer(h, r)
	if err != nil && buf == nil {
		return err
	}
	if buf.Len() > 0 {
		switch h.OpCode {
		case ws.OpPing:
			select {
			case s.pong <- buf.Bytes():
			default: // a pong is already owed; one answer is enough (RFC 6455 5.5.3)
			}
		case ws.OpClose:
			// The echo of the client's close, or a 1002 for a malformed one.
			s.requestClose(buf.Bytes())
		}
	}
	return err
}

// readFailed maps a read error to the close frame the client gets and reports whether
// the server initiated a close handshake (then the input is drained before closing).
func (s *wsStream) readFailed(err error) (drain bool) {
	var closed wsutil.ClosedError
	var proto ws.ProtocolError
	switch {
	case errors.As(err, &closed):
		return false // the client closed; control() queued the echo
	case errors.Is(err, wsutil.ErrFrameTooLarge), errors.Is(err, wsutil.ErrMessageTooLarge), errors.Is(err, errMessageTooLarge):
		s.requestClose(wsCloseFrame(closeTooBig, "message too big"))
	case errors.Is(err, errTooManyFrames):
		s.requestClose(wsCloseFrame(closeRateLimited, "too many frames"))
	case errors.Is(err, wsutil.ErrInvalidUTF8):
		s.requestClose(wsCloseFrame(closeInvalidUTF8, "invalid UTF-8"))
	case errors.As(err, &proto):
		s.requestClose(wsCloseFrame(closeProtocolFail, string(proto)))
	case errors.Is(err, ws.ErrHeaderLengthMSB), errors.Is(err, ws.ErrHeaderLengthUnexpected):
		// A 64-bit length with its top bit set (RFC 6455 5.2): gobwas reports it as a
		// plain error, not a ProtocolError, but it is one all the same.
		s.requestClose(wsCloseFrame(closeProtocolFail, "invalid frame length"))
	default:
		return false // EOF, reset, read timeout (no pong for 2.5 pings): just close
	}
	return true
}

func (s *wsStream) requestClose(frame []byte) {
	select {
	case s.closeReq <- bytes.Clone(frame):
	default: // the first close frame wins
	}
}

func (s *wsStream) writeLoop() {
	defer close(s.writerDone)
	h, c := s.h, s.c
	ping := time.NewTicker(h.cfg.PingInterval)
	defer ping.Stop()
	// Close at the token's exp exactly: the parser's leeway is for clock skew between
	// services, not for extending a stream.
	expiry := time.NewTimer(time.Until(c.expires))
	defer expiry.Stop()

	if !s.write(wsTextFrame(connectedJSON(c.projectID))) {
		return
	}
	for {
		select {
		case <-c.queue.ready:
			b := getBatch()
			var more bool
			b.msgs, more = c.queue.pop(b.msgs, writeBatch, writeBatchBytes)
			events := 0
			for _, m := range b.msgs {
				b.bufs = s.appendFrame(b.bufs, m, &events)
			}
			ok := len(b.bufs) == 0 || s.writeBufs(b.bufs)
			putBatch(b)
			if !ok {
				return
			}
			c.tm.sent.Add(float64(events))
			if more {
				// Back through the select, so that pings, pongs and a kill are not
				// held up behind a long backlog.
				c.queue.signal()
				continue
			}
			if missed := c.takeMissed(); missed != 0 {
				h.m.resyncs.WithLabelValues(string(transportWS), resyncReason(missed)).Inc()
				if !s.write(wsTextFrame(resyncJSON(missed))) {
					return
				}
			}
		case p := <-s.pong:
			if !s.write(p) {
				return
			}
		case <-ping.C:
			if !s.write(wsPingFrame) {
				return
			}
		case <-expiry.C:
			s.sendClose(wsCloseFrame(closeTokenExpired, "token expired"))
			return
		case <-c.killed:
			if c.slowReason != "" {
				h.m.slowClosed.WithLabelValues(string(transportWS), c.slowReason).Inc()
			}
			s.sendClose(wsCloseFrame(c.killCode, c.killReason))
			return
		case f := <-s.closeReq:
			s.sendClose(f)
			return
		case <-s.stopWriter:
			// The reader is done; it may have queued a final close frame just before.
			select {
			case f := <-s.closeReq:
				s.sendClose(f)
			default:
			}
			return
		}
	}
}

// appendFrame adds m's frame; resync markers count toward the resync metric. (Resync
// frames are written in the batch, in queue order.)
func (s *wsStream) appendFrame(bufs net.Buffers, m *message, events *int) net.Buffers {
	if m.missed != 0 {
		s.h.m.resyncs.WithLabelValues(string(transportWS), resyncReason(m.missed)).Inc()
		return append(bufs, wsTextFrame(resyncJSON(m.missed)))
	}
	*events++
	return append(bufs, m.ws)
}

func resyncReason(missed int64) string {
	if missed < 0 {
		return resyncReconnect
	}
	return resyncOverflow
}

func (s *wsStream) write(frame []byte) bool {
	return s.writeBufs(net.Buffers{frame})
}

// writeBufs writes with a deadline (W5): a client that stops reading fails the write
// after WriteTimeout and is disconnected, freeing its goroutines and queue.
func (s *wsStream) writeBufs(bufs net.Buffers) bool {
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.h.cfg.WriteTimeout))
	if _, err := bufs.WriteTo(s.conn); err != nil {
		if isTimeout(err) {
			s.h.m.slowClosed.WithLabelValues(string(transportWS), slowWriteTimeout).Inc()
			s.h.logger.Info("live: WebSocket client stopped reading; disconnected", "timeout", s.h.cfg.WriteTimeout)
		}
		_ = s.conn.Close() // unblocks the reader
		return false
	}
	return true
}

// sendClose writes the server's close frame and gives the client closeGrace to answer.
func (s *wsStream) sendClose(frame []byte) {
	if !s.write(frame) {
		return
	}
	s.mu.Lock()
	s.closeSent = true
	s.graceEnd = time.Now().Add(closeGrace)
	_ = s.conn.SetReadDeadline(s.graceEnd)
	s.mu.Unlock()
}

var errTooManyFrames = errors.New("live: client frame flood")

// errMessageTooLarge is cappedReader's own limit, kept in addition to the reader's
// MaxMessageSize so that no future change of the library can make a message unbounded.
var errMessageTooLarge = errors.New("live: client message too large")

type cappedReader struct {
	r    io.Reader
	left int64
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more than allowed tells "exactly at the cap" from "over it".
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			return 0, errMessageTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// limiter is a token bucket for frames from one client; reader-only.
type limiter struct {
	tokens float64
	last   time.Time
}

func (l *limiter) allow(now time.Time) bool {
	if !l.last.IsZero() {
		l.tokens += now.Sub(l.last).Seconds() * clientFramesPerS
		if l.tokens > clientFrameBurst {
			l.tokens = clientFrameBurst
		}
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
