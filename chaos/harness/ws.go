package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/google/uuid"
)

// LiveMsg is one message a live client received.
type LiveMsg struct {
	At   time.Time
	Data []byte
}

// Type is the message's "type" field: "connected" or "resync" for the stream's own
// messages, the event's type (error, event, metric) for an event.
func (m LiveMsg) Type() string {
	var v struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(m.Data, &v)
	return v.Type
}

// EventID is the id of the event the message carries (uuid.Nil for the stream's own
// messages).
func (m LiveMsg) EventID() uuid.UUID {
	var v struct {
		ID uuid.UUID `json:"id"`
	}
	_ = json.Unmarshal(m.Data, &v)
	return v.ID
}

// LiveClient is a live-stream client of the api that reads everything it is sent: a
// WebSocket (gobwas/ws, answering pings) or an SSE stream. It keeps every message.
type LiveClient struct {
	// OnMessage, when set before messages arrive, is called for each (from the reading
	// goroutine).
	onMessage func(LiveMsg)
	close     func()
	done      chan struct{}

	mu   sync.Mutex
	msgs []LiveMsg
	err  error
}

// DialLive opens a WebSocket stream of project on the api at apiURL (http://host:port)
// with a bearer token; onMessage may be nil. It is closed when the test ends.
func DialLive(t testing.TB, apiURL string, project uuid.UUID, token string, onMessage func(LiveMsg)) *LiveClient {
	t.Helper()
	u := "ws" + strings.TrimPrefix(apiURL, "http") + "/realtime/" + project.String()
	d := ws.Dialer{
		Header:  ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + token}}),
		Timeout: 30 * time.Second,
	}
	conn, br, _, err := d.Dial(context.Background(), u)
	if err != nil {
		t.Fatalf("harness: dialling %s: %v", u, err)
	}
	c := &LiveClient{onMessage: onMessage, done: make(chan struct{}), close: func() { _ = conn.Close() }}
	var r io.Reader = conn
	if br != nil { // frames the server sent right after the handshake
		r = br
	}
	rw := struct {
		io.Reader
		io.Writer
	}{r, conn}
	go func() {
		defer close(c.done)
		for {
			b, _, err := wsutil.ReadServerData(rw) // answers pings with pongs
			if err != nil {
				c.finish(err)
				return
			}
			c.add(LiveMsg{At: time.Now(), Data: b})
		}
	}()
	t.Cleanup(c.Close)
	return c
}

// DialSSE opens an SSE stream of project; onMessage may be nil. It is closed when the
// test ends.
func DialSSE(t testing.TB, apiURL string, project uuid.UUID, token string, onMessage func(LiveMsg)) *LiveClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/realtime/"+project.String()+"/sse", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("harness: opening the SSE stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("harness: opening the SSE stream: %d %s", resp.StatusCode, b)
	}
	c := &LiveClient{onMessage: onMessage, done: make(chan struct{}), close: cancel}
	go func() {
		defer close(c.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		var data bytes.Buffer
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if data.Len() > 0 {
					c.add(LiveMsg{At: time.Now(), Data: bytes.Clone(data.Bytes())})
					data.Reset()
				}
			case strings.HasPrefix(line, "data:"):
				if data.Len() > 0 {
					data.WriteByte('\n')
				}
				data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			}
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		c.finish(err)
	}()
	t.Cleanup(c.Close)
	return c
}

func (c *LiveClient) add(m LiveMsg) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	if c.onMessage != nil {
		c.onMessage(m)
	}
}

func (c *LiveClient) finish(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Close closes the stream and waits for the reader (idempotent).
func (c *LiveClient) Close() {
	c.close()
	<-c.done
}

// Closed reports whether the stream has ended, and why.
func (c *LiveClient) Closed() (bool, error) {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return true, c.err
	default:
		return false, nil
	}
}

// Messages returns what was received so far.
func (c *LiveClient) Messages() []LiveMsg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]LiveMsg{}, c.msgs...)
}

// WaitMessage waits until a message received at or after since satisfies pred and
// returns it (false on timeout or when the stream ended without one).
func (c *LiveClient) WaitMessage(since time.Time, timeout time.Duration, pred func(LiveMsg) bool) (LiveMsg, bool) {
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range c.Messages() {
			if !m.At.Before(since) && pred(m) {
				return m, true
			}
		}
		if closed, _ := c.Closed(); closed || time.Now().After(deadline) {
			return LiveMsg{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DialStalledWS opens a WebSocket stream of project over a raw TCP connection that
// completes the upgrade and then never reads again (F17): its receive buffer is made
// small (SO_RCVBUF) before connecting, so the server's writes stall after a few
// kilobytes. It reads the handshake answer byte by byte, so not one byte of what follows
// is consumed. The caller closes the connection.
func DialStalledWS(apiURL string, project uuid.UUID, token string) (net.Conn, error) {
	host := strings.TrimPrefix(apiURL, "http://")
	return dialStalled(host, "GET /realtime/"+url.PathEscape(project.String())+" HTTP/1.1\r\n"+
		"Host: "+host+"\r\n"+
		"Upgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"+
		"Authorization: Bearer "+token+"\r\n\r\n", "HTTP/1.1 101")
}

// SendQueued returns the bytes the kernel holds unsent or unacknowledged in the send
// queues of the TCP sockets bound to local port port (server side: its clients'
// connections, including ones closed but not yet finished), and how many such sockets
// there are, from /proc/net/tcp and /proc/net/tcp6. That memory is the kernel's, not in
// the process's RSS.
func SendQueued(port int) (bytes int64, sockets int, err error) {
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, rerr := os.ReadFile(f)
		if rerr != nil {
			err = errors.Join(err, rerr)
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 5 {
				continue
			}
			_, lport, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			if p, perr := strconv.ParseInt(lport, 16, 32); perr != nil || int(p) != port {
				continue
			}
			tx, _, _ := strings.Cut(fields[4], ":")
			n, perr := strconv.ParseInt(tx, 16, 64)
			if perr != nil {
				continue
			}
			bytes += n
			sockets++
		}
	}
	return bytes, sockets, err
}
