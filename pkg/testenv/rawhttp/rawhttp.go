// Package rawhttp talks HTTP/1.1 over a plain TCP connection, for tests of what a
// well-behaved client library never sends: request smuggling, obsolete line folding,
// malformed framing, slow clients. It reports every answer the server wrote on the
// connection and whether the server closed it, which is what those attacks are judged
// by (a smuggled request shows up as a second answer). Production code never imports it.
package rawhttp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Answer is one response read off the connection.
type Answer struct {
	Status int
	Header http.Header
	Body   []byte
}

// Result is everything the server did on one connection.
type Result struct {
	Answers []Answer
	// Closed: the server closed (or reset) the connection before the wait ran out.
	Closed bool
	// Elapsed from the first byte written until the close (or the wait ran out).
	Elapsed time.Duration
}

// Exchange dials addr, writes request and reads answers until the server closes the
// connection or wait passes. The request is written from a goroutine, so a server that
// answers before reading everything (a 413, a 431) cannot deadlock the test.
func Exchange(addr string, request []byte, wait time.Duration) (Result, error) {
	conn, start, err := dial(addr, wait)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	go func() { _, _ = conn.Write(request) }()
	return read(conn, start)
}

// dial connects with a deadline of wait for the whole conversation.
func dial(addr string, wait time.Duration) (net.Conn, time.Time, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, time.Time{}, err
	}
	start := time.Now()
	if err := conn.SetDeadline(start.Add(wait)); err != nil {
		_ = conn.Close()
		return nil, time.Time{}, err
	}
	return conn, start, nil
}

// Trickle dials addr, writes head at once and then body one byte per interval, never
// finishing if body is longer than the server is patient: a slowloris client. It stops
// when the server closes the connection or after wait; answers written before the close
// (a 408) are in the result.
func Trickle(addr string, head, body []byte, interval, wait time.Duration) (Result, error) {
	conn, start, err := dial(addr, wait)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		if _, err := conn.Write(head); err != nil {
			return
		}
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := 0; i < len(body); i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if _, err := conn.Write(body[i : i+1]); err != nil {
				return
			}
		}
	}()
	return read(conn, start)
}

func read(conn net.Conn, start time.Time) (Result, error) {
	var res Result
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			res.Answers = append(res.Answers, Answer{Status: resp.StatusCode, Header: resp.Header, Body: body})
			if err == nil {
				continue
			}
		}
		res.Elapsed = time.Since(start)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return res, nil
		}
		// EOF, an unexpected EOF inside an answer, or a reset: the server closed.
		res.Closed = true
		return res, nil
	}
}

// Smuggled is a request hidden inside another one in each Smuggling case; if a server
// ever parses it as a request of its own, it shows up as a second answer.
type Smuggled struct {
	Method, Path string
	Header       []string // "Name: value" lines
	Body         string
}

func (s Smuggled) text(host string, extra ...string) string {
	var b strings.Builder
	b.WriteString(s.Method + " " + s.Path + " HTTP/1.1\r\nHost: " + host + "\r\n")
	for _, h := range append(s.Header, extra...) {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: " + strconv.Itoa(len(s.Body)) + "\r\n\r\n" + s.Body)
	return b.String()
}

// Alone is the smuggled request on its own, well framed, asking for a close: sent
// through Exchange it proves the oracle, since it must be served.
func (s Smuggled) Alone(host string) []byte { return []byte(s.text(host, "Connection: close")) }

// Case is one malformed or ambiguous request.
type Case struct {
	Name    string
	Request []byte
}

// Smuggling returns the request-smuggling and malformed-framing cases of docs/reliability.md
// H6/B40 against method and path on host: each front request carries the smuggled one
// where a parser that disagrees with another one (a proxy in front) would find it.
// header lines go on the front request (e.g. its Content-Type and credentials).
//
// A correct server answers each with at most one response, never 2xx for an ambiguous
// frame, and closes the connection (RFC 9112 §6.1, §6.3: a request with both
// Transfer-Encoding and Content-Length MUST be followed by a close).
func Smuggling(method, path, host string, header []string, smuggled Smuggled) []Case {
	s := smuggled.text(host)
	hdr := ""
	for _, h := range header {
		hdr += h + "\r\n"
	}
	front := func(extra string) string {
		return method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" + hdr + extra
	}
	chunkedS := strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n0\r\n\r\n"
	clte := "0\r\n\r\n" + s
	return []Case{
		// The front end believes Content-Length, the back end Transfer-Encoding.
		{"CL.TE", []byte(front("Content-Length: " + strconv.Itoa(len(clte)) + "\r\nTransfer-Encoding: chunked\r\n\r\n" + clte))},
		// The front end believes Transfer-Encoding, the back end Content-Length.
		{"TE.CL", []byte(front("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunkedS))},
		// Transfer-Encoding hidden from one of two parsers.
		{"TE twice", []byte(front("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: " + strconv.Itoa(len(clte)) + "\r\n\r\n" + clte))},
		{"TE chunked, identity", []byte(front("Transfer-Encoding: chunked, identity\r\nContent-Length: " + strconv.Itoa(len(clte)) + "\r\n\r\n" + clte))},
		{"TE xchunked", []byte(front("Transfer-Encoding: xchunked\r\nContent-Length: " + strconv.Itoa(len(clte)) + "\r\n\r\n" + clte))},
		{"TE with space before colon", []byte(front("Transfer-Encoding : chunked\r\nContent-Length: " + strconv.Itoa(len(clte)) + "\r\n\r\n" + clte))},
		{"TE with vertical tab", []byte(front("Transfer-Encoding:\x0bchunked\r\nContent-Length: " + strconv.Itoa(len(clte)) + "\r\n\r\n" + clte))},
		{"TE obs-folded", []byte(front("Transfer-Encoding: identity\r\n chunked\r\nContent-Length: " + strconv.Itoa(len(clte)) + "\r\n\r\n" + clte))},
		{"TE on HTTP/1.0", []byte(strings.Replace(front("Transfer-Encoding: chunked\r\nContent-Length: "+strconv.Itoa(len(clte))+"\r\n\r\n"+clte), "HTTP/1.1", "HTTP/1.0", 1))},
		// Two lengths: which one frames the body?
		{"duplicate Content-Length", []byte(front("Content-Length: 0\r\nContent-Length: " + strconv.Itoa(len(s)) + "\r\n\r\n" + s))},
		{"Content-Length list", []byte(front("Content-Length: 0, " + strconv.Itoa(len(s)) + "\r\n\r\n" + s))},
		{"Content-Length with sign", []byte(front("Content-Length: +0\r\n\r\n" + s))},
		{"Content-Length obs-folded", []byte(front("Content-Length: 0\r\n " + strconv.Itoa(len(s)) + "\r\n\r\n" + s))},
		{"Content-Length with space before colon", []byte(front("Content-Length : 0\r\n\r\n" + s))},
		// Chunk framing (fasthttp PR #1899 and its kind).
		{"chunk size overflow", []byte(front("Transfer-Encoding: chunked\r\n\r\n" + "1" + strings.Repeat("0", 16) + "\r\n" + s + "\r\n0\r\n\r\n"))},
		{"chunk extension with bare LF", []byte(front("Transfer-Encoding: chunked\r\n\r\n" + "0;ext\n\r\n" + s))},
		{"chunk size with bare LF", []byte(front("Transfer-Encoding: chunked\r\n\r\n" + "0\n\n" + s))},
		{"negative chunk size", []byte(front("Transfer-Encoding: chunked\r\n\r\n" + "-1\r\n" + s + "\r\n0\r\n\r\n"))},
		// Header lines that are not header lines.
		{"bare CR in a header value", []byte(front("X-Note: a\rContent-Length: 0\r\nContent-Length: " + strconv.Itoa(len(s)) + "\r\n\r\n" + s))},
		{"NUL in a header value", []byte(front("X-Note: a\x00b\r\nContent-Length: 0\r\n\r\n" + s))},
		{"header line without a colon", []byte(front("Content-Length 0\r\nContent-Length: " + strconv.Itoa(len(s)) + "\r\n\r\n" + s))},
	}
}

// Refused checks what every Smuggling case must get: at most one answer (a second one
// means the smuggled request ran), no 2xx, and a closed connection.
func (r Result) Refused() error {
	switch {
	case len(r.Answers) > 1:
		return fmt.Errorf("%d answers: a request hidden in the body was served (%s)", len(r.Answers), r)
	case len(r.Answers) == 1 && r.Answers[0].Status < 300:
		return fmt.Errorf("an ambiguous request was accepted (%s)", r)
	case !r.Closed:
		return fmt.Errorf("the connection stayed open after an ambiguous request (%s)", r)
	}
	return nil
}

func (r Result) String() string {
	var b strings.Builder
	for i, a := range r.Answers {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%d %q", a.Status, a.Body)
	}
	fmt.Fprintf(&b, "; closed=%v after %s", r.Closed, r.Elapsed)
	return b.String()
}

// SlowPost writes a request (head, then body) on c as a client on a slow link does: the
// head and the body's first part, then the rest in 256 KiB parts 150 ms apart (longer in
// all than net/http's 500 ms rstAvoidanceDelay), and reads the answer. A server that
// answered early (a 413) and closed without reading on makes a write fail: that error
// is returned, so a test can require that the server drains the body before closing.
func SlowPost(c net.Conn, path string, body []byte, first int) (*http.Response, []byte, error) {
	head := "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	first = min(first, len(body))
	if _, err := c.Write(append([]byte(head), body[:first]...)); err != nil {
		return nil, nil, fmt.Errorf("writing the head: %w", err)
	}
	for rest := body[first:]; len(rest) > 0; {
		time.Sleep(150 * time.Millisecond)
		n := min(len(rest), 256<<10)
		if _, err := c.Write(rest[:n]); err != nil {
			return nil, nil, fmt.Errorf("writing the body (%d bytes left): %w", len(rest), err)
		}
		rest = rest[n:]
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the answer: %w", err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	return resp, rb, err
}
