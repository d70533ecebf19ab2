package live

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/google/uuid"
)

// FuzzWSClientFrames feeds arbitrary bytes, as a client would send them after the
// upgrade, to the server's WebSocket read loop (the real wsStream over an in-memory
// connection, with the default frame and message caps) and checks what the server
// answers against an independent model of RFC 6455 and the limits in doc.go:
//
//   - the server never panics or hangs: it ends the stream and releases the client;
//   - everything it sends is a well-formed server frame: final, unmasked, no RSV bits,
//     "connected" first, then only pongs echoing pings the client sent, in order;
//   - it closes with the right code: the echo of a valid client close, 1002 for
//     protocol errors (unmasked or reserved frames, bad fragmentation, bad close
//     payloads, a 64-bit length with its top bit set), 1007 for invalid UTF-8 text,
//     1009 for a frame or message over the caps, 1008 for a flood of frames; and
//     without a close frame only when the input ended before a decision was possible.
//
// The input ends like a client that half-closes after sending it.
func FuzzWSClientFrames(f *testing.F) {
	for _, seed := range wsSeeds() {
		f.Add(seed)
	}
	h := fuzzHub()
	f.Fuzz(func(t *testing.T, in []byte) {
		want := modelClientFrames(in)
		out := runWSStream(t, h, in)
		checkServerFrames(t, in, want, out)
	})
}

// fuzzHub is a Hub with the default limits and no Redis or Postgres: the read and
// write loops of a stream need neither.
func fuzzHub() *Hub {
	return &Hub{
		cfg:     Config{MaxConnsPerUser: 1 << 20}.withDefaults(),
		logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		m:       newMetrics(nil),
		origin:  map[string]struct{}{},
		topics:  map[string]*topic{},
		perUser: map[uuid.UUID]int{},
		clients: map[*client]struct{}{},
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
}

// wsIterationLimit bounds one input: far above what any input needs (no timer of the
// stream is shorter than the 10 s write timeout), so hitting it means a hang.
const wsIterationLimit = 5 * time.Second

// runWSStream runs one stream: the client writes in and then half-closes (the server's
// reader sees EOF after in), while everything the server writes is collected until it
// closes the connection.
func runWSStream(t *testing.T, h *Hub, in []byte) []byte {
	t.Helper()
	now := time.Now()
	c := newClient(transportWS, h.m.byTransport[transportWS], uuid.New(), uuid.New(), now, now.Add(time.Hour), 4, 1<<20)
	if ok, _ := h.admit(c); !ok {
		t.Fatal("admit refused the stream")
	}
	server, cl := net.Pipe()
	newWSStream(h, c, server, io.LimitReader(server, int64(len(in)))).start()

	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = cl.Write(in) // fails once the server closed without reading everything
	}()
	_ = cl.SetReadDeadline(time.Now().Add(wsIterationLimit))
	out, err := io.ReadAll(cl)
	_ = cl.Close()
	<-wrote
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server neither finished nor closed within %s (input %x)", wsIterationLimit, in)
		}
		t.Fatalf("reading the server's frames: %v", err)
	}
	released := make(chan struct{})
	go func() { h.streams.Wait(); close(released) }()
	select {
	case <-released:
	case <-time.After(wsIterationLimit):
		t.Fatalf("the stream's goroutines did not end after the connection closed (input %x)", in)
	}
	return out
}

// wsOutcome is how the model expects the server to end a stream.
type wsOutcome struct {
	// close is the close frame's status code; 0 for an empty close payload (the echo of
	// an empty client close); -1 when the server must not send a close frame.
	close int
	// alsoOK is a second acceptable code (-2 when there is none): codes whose validity
	// RFC 6455 leaves open (1012-1014, 5000 and above).
	alsoOK int
	// mayFlood: more than clientFrameBurst frames were counted, so 1008 is acceptable
	// too (the bucket refills with time, so whether it trips is timing-dependent).
	mayFlood bool
	// pings are the payloads of the pings the server read completely, in order.
	pings [][]byte
}

// modelClientFrames is the reference: RFC 6455 section 5 plus the server's caps, written
// from the RFC rather than from gobwas/ws.
func modelClientFrames(in []byte) (o wsOutcome) {
	o.alsoOK = -2
	cfg := Config{}.withDefaults()
	var (
		fragmented bool
		textMsg    bool
		msgLen     int64
		text       []byte // the text message so far (for UTF-8 validation)
		counted    int
	)
	end := func(code int) wsOutcome {
		o.close = code
		o.mayFlood = counted > clientFrameBurst
		return o
	}
	p := in
	for {
		if len(p) < 2 {
			return end(-1) // EOF, clean or inside a header: no decision possible
		}
		b0, b1 := p[0], p[1]
		fin, rsv, op := b0&0x80 != 0, b0&0x70, ws.OpCode(b0&0x0f)
		masked, l7 := b1&0x80 != 0, int64(b1&0x7f)
		hdrLen := 2
		switch l7 {
		case 126:
			hdrLen += 2
		case 127:
			hdrLen += 8
		}
		if masked {
			hdrLen += 4
		}
		if len(p) < hdrLen {
			return end(-1)
		}
		length := l7
		switch l7 {
		case 126:
			length = int64(binary.BigEndian.Uint16(p[2:4]))
		case 127:
			u := binary.BigEndian.Uint64(p[2:10])
			if u>>63 != 0 {
				return end(int(ws.StatusProtocolError)) // RFC 6455 5.2: the MSB MUST be 0
			}
			length = int64(u)
		}
		var mask [4]byte
		if masked {
			copy(mask[:], p[hdrLen-4:hdrLen])
		}
		p = p[hdrLen:]

		control := op&0x8 != 0
		reserved := (op >= 3 && op <= 7) || op >= 0xb
		switch {
		case reserved, control && length > 125, control && !fin, rsv != 0, !masked,
			fragmented && (op == ws.OpText || op == ws.OpBinary),
			!fragmented && op == ws.OpContinuation:
			return end(int(ws.StatusProtocolError))
		}
		if length > cfg.MaxFrameBytes {
			return end(int(ws.StatusMessageTooBig))
		}
		if !fragmented {
			msgLen = 0
		}
		if !control {
			if length > cfg.MaxMessageBytes-msgLen {
				return end(int(ws.StatusMessageTooBig))
			}
			msgLen += length
		}
		counted++

		avail := min(int64(len(p)), length)
		payload := bytes.Clone(p[:avail])
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		p = p[avail:]
		if !control && !fragmented {
			textMsg = op == ws.OpText
			text = text[:0]
		}
		if avail < length {
			// The input ends inside the payload: only invalid UTF-8 already seen counts.
			if !control && textMsg && !utf8Prefix(append(text, payload...)) {
				return end(int(ws.StatusInvalidFramePayloadData))
			}
			return end(-1)
		}
		switch op {
		case ws.OpPing:
			o.pings = append(o.pings, payload)
		case ws.OpPong:
		case ws.OpClose:
			if len(payload) == 0 {
				return end(0)
			}
			if len(payload) == 1 {
				return end(int(ws.StatusProtocolError))
			}
			code := int(binary.BigEndian.Uint16(payload))
			if !utf8.Valid(payload[2:]) {
				return end(int(ws.StatusProtocolError))
			}
			switch {
			case code >= 1000 && code <= 1003, code >= 1007 && code <= 1011, code >= 3000 && code <= 4999:
				return end(code)
			case code >= 1012 && code <= 1014, code >= 5000:
				o.alsoOK = int(ws.StatusProtocolError)
				return end(code)
			default:
				return end(int(ws.StatusProtocolError))
			}
		default: // data
			if textMsg {
				text = append(text, payload...)
				if !utf8Prefix(text) || fin && !utf8.Valid(text) {
					return end(int(ws.StatusInvalidFramePayloadData))
				}
			}
			fragmented = !fin
		}
	}
}

// utf8Prefix reports whether b can still become valid UTF-8: it is valid up to at most
// one incomplete but so far well-formed sequence at its end.
func utf8Prefix(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 {
			return !utf8.FullRune(b)
		}
		b = b[n:]
	}
	return true
}

type serverFrame struct {
	op      ws.OpCode
	payload []byte
}

// parseServerFrames splits what the server sent into frames, failing on anything that
// is not a well-formed server frame: final, unmasked, without RSV bits.
func parseServerFrames(t *testing.T, in, out []byte) []serverFrame {
	t.Helper()
	var frames []serverFrame
	for p := out; len(p) > 0; {
		if len(p) < 2 {
			t.Fatalf("truncated server frame header %x (input %x)", p, in)
		}
		b0, b1 := p[0], p[1]
		if b0&0x80 == 0 || b0&0x70 != 0 || b1&0x80 != 0 {
			t.Fatalf("server frame not final, with RSV bits or masked: %x (input %x)", p[:2], in)
		}
		n, hl := int(b1&0x7f), 2
		switch n {
		case 126:
			if len(p) < 4 {
				t.Fatalf("truncated server frame header %x", p)
			}
			n, hl = int(binary.BigEndian.Uint16(p[2:4])), 4
		case 127:
			t.Fatalf("server sent a 64-bit length: %x", p)
		}
		if len(p) < hl+n {
			t.Fatalf("truncated server frame %x (input %x)", p, in)
		}
		frames = append(frames, serverFrame{op: ws.OpCode(b0 & 0x0f), payload: p[hl : hl+n]})
		p = p[hl+n:]
	}
	return frames
}

// checkServerFrames checks the server's frames against the model.
func checkServerFrames(t *testing.T, in []byte, want wsOutcome, out []byte) {
	t.Helper()
	frames := parseServerFrames(t, in, out)
	if len(frames) == 0 || frames[0].op != ws.OpText {
		t.Fatalf("the first server frame must be the connected message, got %v (input %x)", frames, in)
	}
	var connected struct{ Type string }
	if err := json.Unmarshal(frames[0].payload, &connected); err != nil || connected.Type != "connected" {
		t.Fatalf("the first server frame is not {\"type\":\"connected\"}: %q", frames[0].payload)
	}
	pings := want.pings
	gotClose := -1
	for i, fr := range frames[1:] {
		switch fr.op {
		case ws.OpPong:
			// Pongs answer pings in order; one may be skipped while another is owed.
			for len(pings) > 0 && !bytes.Equal(pings[0], fr.payload) {
				pings = pings[1:]
			}
			if len(pings) == 0 {
				t.Fatalf("pong %q answers no ping the client sent (input %x)", fr.payload, in)
			}
			pings = pings[1:]
		case ws.OpClose:
			if i != len(frames)-2 {
				t.Fatalf("the server sent frames after its close frame (input %x)", in)
			}
			switch len(fr.payload) {
			case 0:
				gotClose = 0
			case 1:
				t.Fatalf("close frame with a 1-byte payload (input %x)", in)
			default:
				gotClose = int(binary.BigEndian.Uint16(fr.payload))
				if !utf8.Valid(fr.payload[2:]) {
					t.Fatalf("close reason is not UTF-8: %q", fr.payload)
				}
			}
		default:
			t.Fatalf("unexpected server frame opcode %v after connected (input %x)", fr.op, in)
		}
	}
	ok := gotClose == want.close || gotClose == want.alsoOK ||
		want.mayFlood && gotClose == int(ws.StatusPolicyViolation)
	if !ok {
		t.Fatalf("server closed with %d, want %d (or %d, flood possible: %v) (input %x)",
			gotClose, want.close, want.alsoOK, want.mayFlood, in)
	}
}

// Found by FuzzWSClientFrames: a 64-bit frame length with its top bit set is a protocol
// error (RFC 6455 5.2), but gobwas/ws reports it as a plain error, and the server used to
// drop the connection without a close frame instead of closing with 1002.
func TestWSFrameLengthWithTopBitSetClosesWithProtocolError(t *testing.T) {
	in := []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 0x11, 0x22, 0x33, 0x44}
	frames := parseServerFrames(t, in, runWSStream(t, fuzzHub(), in))
	last := frames[len(frames)-1]
	if last.op != ws.OpClose || len(last.payload) < 2 || binary.BigEndian.Uint16(last.payload) != uint16(ws.StatusProtocolError) {
		t.Fatalf("want a 1002 close frame last, got %v", frames)
	}
}

// Found by FuzzWSClientFrames: a ping cut off inside a fragmented message (the client
// half-closed mid-payload) was answered with a pong carrying the partial payload; the
// body reader of such a control frame reports the cut as a plain EOF.
func TestWSTruncatedPingInsideFragmentedMessageIsNotAnswered(t *testing.T) {
	in := append(clientFrame(false, ws.OpText, []byte("part")), clientFrame(true, ws.OpPing, []byte("ab"))...)
	in = in[:len(in)-1]
	for _, fr := range parseServerFrames(t, in, runWSStream(t, fuzzHub(), in)) {
		if fr.op == ws.OpPong {
			t.Fatalf("pong %q sent for an incomplete ping", fr.payload)
		}
	}
}

// clientFrame encodes one masked client frame.
func clientFrame(fin bool, op ws.OpCode, payload []byte) []byte {
	return rawFrame(fin, 0, op, true, payload)
}

func rawFrame(fin bool, rsv byte, op ws.OpCode, masked bool, payload []byte) []byte {
	b0 := byte(op) | rsv<<4
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	var mb byte
	if masked {
		mb = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, mb|byte(n))
	case n <= 0xffff:
		out = append(out, mb|126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, mb|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	if masked {
		out = append(out, mask[:]...)
	}
	for i, c := range payload {
		if masked {
			c ^= mask[i%4]
		}
		out = append(out, c)
	}
	return out
}

func wsSeeds() [][]byte {
	closeBody := func(code uint16, reason string) []byte {
		return append(binary.BigEndian.AppendUint16(nil, code), reason...)
	}
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	flood := make([][]byte, 0, 120)
	for range 120 {
		flood = append(flood, clientFrame(true, ws.OpPong, nil))
	}
	return [][]byte{
		nil,
		clientFrame(true, ws.OpText, []byte("hello")),
		cat(clientFrame(true, ws.OpPing, []byte("p1")), clientFrame(true, ws.OpPing, []byte("p2")),
			clientFrame(true, ws.OpClose, closeBody(1000, "bye"))),
		clientFrame(true, ws.OpClose, nil),
		clientFrame(true, ws.OpClose, []byte{3}),
		clientFrame(true, ws.OpClose, closeBody(1005, "")),
		clientFrame(true, ws.OpClose, closeBody(4000, "\xff")),
		clientFrame(true, ws.OpText, []byte("ok\xc3\x28")),
		cat(clientFrame(false, ws.OpText, []byte("caf\xc3")), clientFrame(true, ws.OpPing, []byte("mid")),
			clientFrame(true, ws.OpContinuation, []byte("\xa9!"))),
		cat(clientFrame(false, ws.OpText, []byte("x")), clientFrame(true, ws.OpText, []byte("y"))),
		clientFrame(true, ws.OpContinuation, []byte("orphan")),
		clientFrame(true, ws.OpBinary, bytes.Repeat([]byte{0xff}, 4097)),
		cat(clientFrame(false, ws.OpBinary, make([]byte, 3000)), clientFrame(true, ws.OpContinuation, make([]byte, 1200))),
		{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, // 64-bit length with the top bit set
		rawFrame(true, 0, ws.OpText, false, []byte("unmasked")),
		rawFrame(true, 4, ws.OpText, true, []byte("rsv")),
		clientFrame(true, 0x3, nil),
		clientFrame(false, ws.OpPing, nil),
		clientFrame(true, ws.OpPing, make([]byte, 126)),
		cat(flood...),
		clientFrame(true, ws.OpText, []byte("truncated"))[:9],
	}
}
