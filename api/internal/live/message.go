package live

import (
	"bytes"
	"strconv"

	"github.com/gobwas/ws"
)

// message is one item of a client's queue. An event message is built once per published
// event and shared, read-only, by every client of the project: its WebSocket frame and
// its SSE block are encoded once, so fan-out costs one pointer per client.
type message struct {
	// missed != 0 marks a resync marker: the number of messages dropped before it, or
	// -1 when unknown (a Redis reconnect). Such markers are per client.
	missed int64
	cur    cursor // the event's position, for SSE ids and the replay splice
	hasCur bool
	ws     []byte // a complete unmasked text frame carrying the event
	sse    []byte // "id: <cursor>\ndata: <event>\n\n"
	// sio is the Engine.IO message packet of a Socket.IO client: `42["event",<event>]`
	// for an event (framed per transport by the writer), or a Socket.IO reply queued for
	// one socket (sioReply set: "subscribed", "error", ...; not counted as an event).
	sio      []byte
	sioReply bool
	// project is the project a resync marker is about (Socket.IO names it; a socket can
	// have several).
	project string
}

// newEventMessage builds the shared message for a published event (exactly the bytes
// published). Only the encodings some client of the project needs are built, and the
// cursor is only parsed for SSE clients.
func newEventMessage(payload string, needWS, needSSE, needSIO bool) *message {
	m := &message{}
	if needWS {
		m.ws = wsTextFrame(payload)
	}
	if needSIO {
		m.sio = sioEventPacket(payload)
	}
	if needSSE {
		m.cur, m.hasCur = eventCursor([]byte(payload))
		id := ""
		if m.hasCur {
			id = m.cur.String()
		}
		m.sse = appendSSE(make([]byte, 0, len(payload)+64), id, payload)
	}
	return m
}

// wsTextFrame encodes a complete, final, unmasked text frame (server to client).
func wsTextFrame[S string | []byte](payload S) []byte {
	h := ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(payload))}
	b := bytes.NewBuffer(make([]byte, 0, ws.HeaderSize(h)+len(payload)))
	_ = ws.WriteHeader(b, h) // writes to a bytes.Buffer cannot fail
	return append(b.Bytes(), payload...)
}

// wsCloseFrame encodes a close frame with a status code and reason.
func wsCloseFrame(code ws.StatusCode, reason string) []byte {
	return ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason)))
}

var wsPingFrame = ws.MustCompileFrame(ws.NewPingFrame(nil))

// connectedJSON is the first message of every stream.
func connectedJSON(projectID string) []byte {
	b := make([]byte, 0, 64+len(projectID))
	b = append(b, `{"type":"connected","projectId":"`...)
	b = append(b, projectID...) // a canonical UUID, nothing to escape
	return append(b, `"}`...)
}

// resyncJSON tells a client it missed messages: missed is how many, or -1 when the
// server cannot know (a Redis reconnect).
func resyncJSON(missed int64) []byte {
	b := append(make([]byte, 0, 40), `{"type":"resync","missed":`...)
	b = strconv.AppendInt(b, missed, 10)
	return append(b, '}')
}

// appendSSE appends one SSE event: an optional id line, the data split into data lines
// (a newline in data would otherwise end the field), and the blank line that dispatches
// it. There is deliberately no event: field, so EventSource.onmessage receives it.
func appendSSE[S string | []byte](dst []byte, id string, data S) []byte {
	if id != "" {
		dst = append(dst, "id: "...)
		dst = append(dst, id...)
		dst = append(dst, '\n')
	}
	for {
		i := indexNewline(data)
		if i < 0 {
			break
		}
		dst = append(dst, "data: "...)
		dst = append(dst, data[:i]...)
		dst = append(dst, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	return append(dst, '\n', '\n')
}

func indexNewline[S string | []byte](s S) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' || s[i] == '\r' {
			return i
		}
	}
	return -1
}
