package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// DialStalledSSE opens an SSE stream of project with Last-Event-ID lastEventID (none
// when empty) over a raw TCP connection that never reads past the response head: its
// receive buffer is made small (SO_RCVBUF) before connecting, so the server's writes
// (a replay) stall after a few kilobytes. The head is read byte by byte, so not one
// byte of the body is consumed. The caller closes the connection.
func DialStalledSSE(apiURL string, project uuid.UUID, token, lastEventID string) (net.Conn, error) {
	host := strings.TrimPrefix(apiURL, "http://")
	req := "GET /realtime/" + url.PathEscape(project.String()) + "/sse HTTP/1.1\r\n" +
		"Host: " + host + "\r\nAccept: text/event-stream\r\n" +
		"Authorization: Bearer " + token + "\r\n"
	if lastEventID != "" {
		req += "Last-Event-ID: " + lastEventID + "\r\n"
	}
	return dialStalled(host, req+"\r\n", "HTTP/1.1 200")
}

// dialStalled sends req over a raw TCP connection to host whose receive buffer is made
// small (SO_RCVBUF) before connecting, and reads the response head byte by byte, so not
// one byte after it is consumed; the head must start with want. The stalled streams
// (DialStalledSSE, DialStalledWS) are this with their own request.
func dialStalled(host, req, want string) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := io.ReadFull(conn, one); err != nil {
			conn.Close()
			return nil, fmt.Errorf("reading the response head: %w (got %q)", err, head)
		}
		head = append(head, one[0])
		if len(head) > 8<<10 {
			conn.Close()
			return nil, fmt.Errorf("response head too long: %q", head[:200])
		}
	}
	_ = conn.SetDeadline(time.Time{})
	if !bytes.HasPrefix(head, []byte(want)) {
		conn.Close()
		return nil, fmt.Errorf("stream refused: %q", head)
	}
	return conn, nil
}
