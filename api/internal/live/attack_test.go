package live_test

// The attack half of the bad-input suite (docs/reliability.md "WebSocket and SSE", issue 7)
// over real TCP: hand-made WebSocket frames that no client library sends (unmasked,
// reserved bits and opcodes, bad fragmentation, lying lengths, bad close frames, a ping
// flood), Origin look-alikes on both transports, hostile SSE Last-Event-IDs, and an SSE
// client that never reads.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// rawWS is a WebSocket client built from bytes: the server's frames are parsed here too.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRawWS upgrades with a hand-written handshake and reads the "connected" frame.
func (b *bundle) dialRawWS(t *testing.T) *rawWS {
	t.Helper()
	conn, err := net.DialTimeout("tcp", b.srv.Listener.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	require.NoError(t, conn.SetDeadline(time.Now().Add(waitFor)))
	_, err = io.WriteString(conn, "GET /realtime/"+b.project.ID.String()+"?token="+b.token+" HTTP/1.1\r\nHost: x\r\n"+
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	require.NoError(t, err)
	c := &rawWS{conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(c.br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	op, payload, err := c.read()
	require.NoError(t, err)
	require.Equal(t, byte(0x1), op)
	require.Contains(t, string(payload), `"type":"connected"`)
	return c
}

// frame encodes a client frame. length overrides the declared payload length (a lie)
// when >= 0; the mask key is fixed (the server must not care).
func frame(fin bool, rsv, op byte, masked bool, payload []byte, length int64) []byte {
	b0 := rsv<<4 | op
	if fin {
		b0 |= 0x80
	}
	n := uint64(len(payload))
	if length >= 0 {
		n = uint64(length)
	}
	out := []byte{b0}
	mask := byte(0)
	if masked {
		mask = 0x80
	}
	switch {
	case n < 126:
		out = append(out, mask|byte(n))
	case n <= math.MaxUint16:
		out = append(out, mask|126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, mask|127)
		out = binary.BigEndian.AppendUint64(out, n)
	}
	if !masked {
		return append(out, payload...)
	}
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, key[:]...)
	for i, c := range payload {
		out = append(out, c^key[i%4])
	}
	return out
}

func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// read reads one server frame (server frames are never masked, never fragmented here).
func (c *rawWS) read() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if h[1]&0x80 != 0 || n > 1<<20 {
		return 0, nil, fmt.Errorf("malformed server frame header %x (length %d)", h, n)
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.br, payload)
	return h[0] & 0x0f, payload, err
}

// closeCode reads until the server's close frame and returns its code; 0 if the server
// dropped the connection without one.
func (c *rawWS) closeCode(t *testing.T) uint16 {
	t.Helper()
	for {
		op, payload, err := c.read()
		if err != nil {
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server neither closed nor answered")
			return 0
		}
		if op == 0x8 {
			require.GreaterOrEqual(t, len(payload), 2, "a close frame with a code")
			return binary.BigEndian.Uint16(payload)
		}
	}
}

// TestHandMadeFramesAreRefused (B76–B78, W1/W2/W6): every client frame RFC 6455 forbids
// gets the close code it calls for, a lying length allocates nothing, and a ping flood
// is cut off with 1008; the connection is closed after each.
func TestHandMadeFramesAreRefused(t *testing.T) {
	t.Parallel()
	// The cases run in parallel (each waits out the server's close grace period).
	b := setup(t, func(o *setupOpts) { o.cfg.MaxConnsPerUser = 64 })
	text := []byte("hello")
	huge := int64(1<<63 - 1)
	pings := make([]byte, 0, 10_000*6)
	for range 10_000 {
		pings = append(pings, frame(true, 0, 0x9, true, nil, -1)...)
	}
	cases := []struct {
		name   string
		frames []byte
		code   uint16
		// bare: dropping the connection without a close frame is also fine (RFC 6455
		// §7.1.7: the close frame is a MAY when failing the connection).
		bare bool
	}{
		{"unmasked text frame", frame(true, 0, 0x1, false, text, -1), 1002, false},
		{"RSV1 without an extension", frame(true, 4, 0x1, true, text, -1), 1002, false},
		{"RSV2", frame(true, 2, 0x1, true, text, -1), 1002, false},
		{"RSV3", frame(true, 1, 0x1, true, text, -1), 1002, false},
		{"reserved data opcode 0x3", frame(true, 0, 0x3, true, text, -1), 1002, false},
		{"reserved control opcode 0xB", frame(true, 0, 0xB, true, nil, -1), 1002, false},
		{"ping with 126 bytes", frame(true, 0, 0x9, true, make([]byte, 126), -1), 1002, false},
		{"fragmented ping", frame(false, 0, 0x9, true, text, -1), 1002, false},
		{"continuation without a start", frame(true, 0, 0x0, true, text, -1), 1002, false},
		{"new message inside a fragmented one", append(frame(false, 0, 0x1, true, text, -1), frame(true, 0, 0x1, true, text, -1)...), 1002, false},
		{"declared length 2^63-1", frame(true, 0, 0x2, true, nil, huge), 1009, false},
		{"declared length 64 KiB, 10 bytes sent", frame(true, 0, 0x1, true, []byte("0123456789"), 64<<10), 1009, false},
		{"64-bit length with the top bit set", append(append([]byte{0x82, 0xff}, 0x80, 0, 0, 0, 0, 0, 0, 1), 1, 2, 3, 4), 1002, true},
		{"close with a 1-byte payload", frame(true, 0, 0x8, true, []byte{3}, -1), 1002, false},
		{"close with code 999", frame(true, 0, 0x8, true, closePayload(999, ""), -1), 1002, false},
		{"close with code 1005 (reserved)", frame(true, 0, 0x8, true, closePayload(1005, ""), -1), 1002, false},
		{"close with code 1016 (reserved, unassigned)", frame(true, 0, 0x8, true, closePayload(1016, ""), -1), 1002, false},
		{"close with code 2999 (reserved, unassigned)", frame(true, 0, 0x8, true, closePayload(2999, ""), -1), 1002, false},
		{"close with an invalid UTF-8 reason", frame(true, 0, 0x8, true, closePayload(1000, "\xc3\x28"), -1), 1002, false},
		{"invalid UTF-8 across two fragments", append(frame(false, 0, 0x1, true, []byte{'a', 0xe2, 0x82}, -1), frame(true, 0, 0x0, true, []byte{0x28}, -1)...), 1007, false},
		{"10,000 pings", pings, 1008, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ws := b.dialRawWS(t)
			go func() { _, _ = ws.conn.Write(c.frames) }()
			code := ws.closeCode(t)
			if !(c.bare && code == 0) {
				require.Equal(t, c.code, code)
			}
			// The server closes the TCP connection too (after its grace period).
			_, err := io.Copy(io.Discard, ws.br)
			require.NoError(t, err, "the connection must end with EOF, not a timeout")
		})
	}
	// A well-formed close is echoed (1000), and a client that stays valid stays open.
	t.Run("valid close is echoed", func(t *testing.T) {
		ws := b.dialRawWS(t)
		_, err := ws.conn.Write(frame(true, 0, 0x8, true, closePayload(1000, "bye"), -1))
		require.NoError(t, err)
		require.Equal(t, uint16(1000), ws.closeCode(t))
	})
	t.Run("ping, binary and fragmented text are fine", func(t *testing.T) {
		ws := b.dialRawWS(t)
		pong := func(want string) {
			op, payload, err := ws.read()
			require.NoError(t, err)
			require.Equal(t, byte(0xA), op, "a pong")
			require.Equal(t, want, string(payload))
		}
		_, err := ws.conn.Write(frame(true, 0, 0x9, true, []byte("p1"), -1))
		require.NoError(t, err)
		pong("p1")
		msgs := frame(true, 0, 0x2, true, []byte{0, 1, 2}, -1)
		msgs = append(msgs, frame(false, 0, 0x1, true, []byte("frag"), -1)...)
		msgs = append(msgs, frame(true, 0, 0x9, true, []byte("p2"), -1)...) // a control frame between fragments
		msgs = append(msgs, frame(true, 0, 0x0, true, []byte("ment"), -1)...)
		_, err = ws.conn.Write(msgs)
		require.NoError(t, err)
		pong("p2")
		e := b.publish(t, b.newEvent("still-open", `{}`))
		op, payload, err := ws.read()
		require.NoError(t, err)
		require.Equal(t, byte(0x1), op)
		require.Equal(t, e, string(payload))
	})
}

// TestOriginLookAlikes (W3, CSWSH): only the allowed origin (in any case, with or
// without a trailing slash) may open a stream; look-alikes, other schemes and ports,
// "null" and a second Origin header are refused with 403 before any upgrade, on both
// transports. Non-browser clients send no Origin and are let in.
func TestOriginLookAlikes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pid := b.project.ID.String()
	refused := [][]string{
		{"https://evil.example"},
		{"null"},
		{""},
		{allowedOrigin + ".evil.example"},
		{"https://evil.example/" + allowedOrigin},
		{"http://dash.example"},
		{allowedOrigin + ":8443"},
		{"https://sub.dash.example"},
		{"https://dash.example@evil.example"},
		{allowedOrigin, "https://evil.example"},
		{"https://evil.example", allowedOrigin},
	}
	for _, origins := range refused {
		h := http.Header{"Origin": origins}
		dctx, cancel := context.WithTimeout(context.Background(), waitFor)
		c, resp, err := websocket.Dial(dctx, b.wsURL(pid)+"?token="+b.token, &websocket.DialOptions{HTTPHeader: h})
		cancel()
		require.Error(t, err, "%q", origins)
		require.Nil(t, c)
		requireJSONError(t, resp, http.StatusForbidden, "FORBIDDEN_ORIGIN")
		requireSSERefused(t, b.sseURL(pid)+"?token="+b.token, h, http.StatusForbidden, "FORBIDDEN_ORIGIN")
	}
	for _, origin := range []string{allowedOrigin, strings.ToUpper(allowedOrigin), allowedOrigin + "/"} {
		b.dialWSWith(t, b.wsURL(pid)+"?token="+b.token, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
	}
	b.dialWS(t) // no Origin at all
	require.Equal(t, 4.0, b.sumMetric(t, "pulseboard_api_live_connections"))
	for _, transport := range []string{"ws", "sse"} {
		require.Equal(t, float64(len(refused)), b.metric(t, "pulseboard_api_live_rejected_total", map[string]string{"transport": transport, "reason": "forbidden_origin"}))
	}
}

// TestHostileLastEventID (B83): a Last-Event-ID that is garbage, huge, at the edges of
// time, or a real cursor of another tenant's event never fails the stream and never
// replays anything but the caller's own project's events.
func TestHostileLastEventID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	other, err := pgstore.UpsertUser(ctx, b.pool, "Mallory", "mallory-"+uuid.NewString()+"@example.com", "x")
	require.NoError(t, err)
	theirs, err := pgstore.CreateProject(ctx, b.pool, other.ID, "mallory's")
	require.NoError(t, err)

	// Mallory's events bracket Ada's in time; Ada's stream learns the cursor of Mallory's
	// first one (as if it had leaked) and reconnects with it.
	base := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Millisecond)
	mk := func(project uuid.UUID, name string, at time.Duration) string {
		e := b.newEvent(name, `{}`)
		e.ProjectID = project
		e.ReceivedAt = base.Add(at)
		b.store(t, e)
		return string(e.AppendJSON(nil))
	}
	theirFirst := b.newEvent("theirs-0", `{}`)
	theirFirst.ProjectID, theirFirst.ReceivedAt = theirs.ID, base
	b.store(t, theirFirst)
	mine := mk(b.project.ID, "mine-1", time.Second)
	mk(theirs.ID, "theirs-2", 2*time.Second)
	mineLater := mk(b.project.ID, "mine-3", 3*time.Second)

	// The cursor of Mallory's event, as Mallory's own stream would have sent it.
	var raw [24]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(theirFirst.ReceivedAt.UnixMicro()))
	copy(raw[8:], theirFirst.ID[:])
	leaked := base64.RawURLEncoding.EncodeToString(raw[:])
	s := b.openSSE(t, http.Header{"Last-Event-ID": {leaked}}, "?token="+b.token)
	require.Equal(t, mine, s.next(t).data)
	require.Equal(t, mineLater, s.next(t).data)
	live := b.publish(t, b.newEvent("live", `{}`))
	require.Equal(t, live, s.next(t).data, "nothing of the other project was replayed")

	cursorAt := func(micros uint64) string {
		var c [24]byte
		binary.BigEndian.PutUint64(c[:8], micros)
		return base64.RawURLEncoding.EncodeToString(c[:])
	}
	for name, id := range map[string]string{
		"garbage":               "' OR 1=1 --",
		"6 KiB":                 strings.Repeat("A", 6<<10),
		"base64 of 23 bytes":    base64.RawURLEncoding.EncodeToString(make([]byte, 23)),
		"time zero":             cursorAt(0),
		"the largest time":      cursorAt(math.MaxInt64),
		"the smallest time":     cursorAt(1 << 63),
		"all bits set":          cursorAt(math.MaxUint64),
		"padded base64 cursor":  leaked + "==",
		"standard base64 chars": strings.NewReplacer("-", "+", "_", "/").Replace(leaked) + "+/",
	} {
		s := b.openSSE(t, http.Header{"Last-Event-ID": {id}}, "?token="+b.token)
		e := b.publish(t, b.newEvent("after-"+name, `{}`))
		for {
			ev := s.next(t)
			if ev.data == e {
				break
			}
			// Before the live event: a resync, or Ada's own events; never Mallory's.
			typ, m := typeOf(t, ev.data)
			if typ == "resync" {
				continue
			}
			require.Empty(t, typ, "%s: %s", name, ev.data)
			require.Equal(t, b.project.ID.String(), m["projectId"], "%s: another project's event", name)
		}
	}
}

// TestSSEClientThatNeverReads (B84): an SSE client that stops reading is dropped after
// the write deadline; a client reading alongside gets every event meanwhile.
func TestSSEClientThatNeverReads(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.WriteTimeout = time.Second; o.cfg.QueueSize = 16 })
	stalled, err := net.DialTimeout("tcp", b.srv.Listener.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer stalled.Close()
	_, err = io.WriteString(stalled, "GET /realtime/"+b.project.ID.String()+"/sse?token="+b.token+" HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	fast := b.openSSE(t, nil, "?token="+b.token)
	eventually(t, func() bool {
		return b.metric(t, "pulseboard_api_live_connections", map[string]string{"transport": "sse"}) == 2
	},
		"the stalled stream never opened")

	big := `{"blob":"` + strings.Repeat("x", 32<<10) + `"}`
	sent := 0
	deadline := time.Now().Add(waitFor)
	for b.metric(t, "pulseboard_api_live_slow_clients_closed_total", map[string]string{"transport": "sse", "reason": "write_timeout"}) == 0 {
		require.True(t, time.Now().Before(deadline), "the stalled SSE client was never disconnected")
		e := b.publish(t, b.newEvent("big", big))
		sent++
		require.Equal(t, e, fast.next(t).data, "the reading client gets every event while the other stalls")
	}
	eventually(t, func() bool {
		return b.metric(t, "pulseboard_api_live_connections", map[string]string{"transport": "sse"}) == 1
	},
		"the stalled stream was not released")
	e := b.publish(t, b.newEvent("after", `{}`))
	require.Equal(t, e, fast.next(t).data)
	t.Logf("stalled SSE client disconnected after %d events of 32 KiB", sent)
}

// TestLoggedOutSessionEndsItsStreams (B55, B81): streams opened with a token of a
// session end (4001) within RevocationCheckInterval once that session is logged out
// (its refresh-token family revoked), and the token opens no new stream; a stream of the
// same user's other session stays.
func TestLoggedOutSessionEndsItsStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.RevocationCheckInterval = 50 * time.Millisecond })
	ctx := context.Background()
	session := func() (uuid.UUID, string) {
		family := uuid.New()
		_, err := b.pool.Exec(ctx, `INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
			VALUES ($1, $2, $3, $4, now(), now() + interval '1 day')`, uuid.New(), b.user.ID, family, family[:])
		require.NoError(t, err)
		tok, _, err := b.tokens.IssueForSession(b.user.ID, "ada@example.com", family, time.Now())
		require.NoError(t, err)
		return family, tok
	}
	family, loggedOut := session()
	_, kept := session()
	pid := b.project.ID.String()
	ws := b.dialWSWith(t, b.wsURL(pid)+"?token="+loggedOut, nil)
	sse := b.openSSE(t, nil, "?token="+loggedOut)
	other := b.dialWSWith(t, b.wsURL(pid)+"?token="+kept, nil)

	_, err := b.pool.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1`, family)
	require.NoError(t, err)
	require.Equal(t, websocket.StatusCode(4001), readWSClose(t, ws))
	sse.ended(t)
	dctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	_, resp, err := websocket.Dial(dctx, b.wsURL(pid)+"?token="+loggedOut, nil)
	require.Error(t, err)
	requireJSONError(t, resp, http.StatusUnauthorized, "UNAUTHORIZED")
	requireSSERefused(t, b.sseURL(pid)+"?token="+loggedOut, nil, http.StatusUnauthorized, "UNAUTHORIZED")

	e := b.publish(t, b.newEvent("still-here", `{}`))
	require.Equal(t, e, readWS(t, other), "the other session's stream stays")
}
