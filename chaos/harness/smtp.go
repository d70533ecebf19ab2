package harness

import (
	"bytes"
	"io"
	"net"
	netmail "net/mail"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Mail is one message an SMTPServer accepted (answered 250 to its DATA).
type Mail struct {
	From string
	To   []string
	// MessageID is the Message-ID header without angle brackets: the alerter derives it
	// from what the email is about ("alert-<uuid>@pulseboard", "digest-<uuid>@pulseboard"),
	// so a duplicate sent in the documented window has the same one.
	MessageID string
	Subject   string
	At        time.Time
}

// SMTPServer is a real SMTP server (emersion/go-smtp) in the test process, on a fixed
// loopback port, that the alerter processes send to (SMTP_HOST, SMTP_PORT,
// SMTP_TLS=none). Down takes it away the way a crashed mail server goes: the listener
// closes (connections are refused) and sessions in progress are cut; Up brings it back
// on the same port.
type SMTPServer struct {
	t    testing.TB
	Host string
	Port int

	mu    sync.Mutex
	srv   *smtp.Server
	done  chan struct{}
	mails []Mail
	downs int
}

// StartSMTP starts an SMTP server on a fixed port; it is closed when the test ends.
func StartSMTP(t testing.TB) *SMTPServer {
	t.Helper()
	s := &SMTPServer{t: t, Host: "127.0.0.1", Port: Port(t)}
	s.Up()
	t.Cleanup(s.Down)
	return s
}

// Env is the alerter's environment for this server.
func (s *SMTPServer) Env() []string {
	return []string{"SMTP_HOST=" + s.Host, "SMTP_PORT=" + strconv.Itoa(s.Port), "SMTP_TLS=none",
		"SMTP_FROM=PulseBoard <alerts@pulseboard.test>"}
}

// Up starts serving (again) on the server's port; a no-op when it is up.
func (s *SMTPServer) Up() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &smtpSession{s: s}, nil
	}))
	srv.Domain = "localhost"
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = 10 << 20
	var ln net.Listener
	var err error
	// The port was free when the server went down; something may hold it for a moment
	// (a connection in TIME_WAIT does not, but be patient with the kernel anyway).
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", Addr(s.Port)); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("harness: SMTP server on %d: %v", s.Port, err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	s.srv, s.done = srv, done
}

// Down closes the listener and every session in progress; a no-op when it is down.
func (s *SMTPServer) Down() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv, s.done = nil, nil
	if srv != nil {
		s.downs++
	}
	s.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	<-done
}

// Mails returns what was accepted so far, in order.
func (s *SMTPServer) Mails() []Mail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Mail{}, s.mails...)
}

// ByMessageID counts the accepted mails per Message-ID.
func (s *SMTPServer) ByMessageID() map[string]int {
	out := map[string]int{}
	for _, m := range s.Mails() {
		out[m.MessageID]++
	}
	return out
}

// WaitMails waits until at least n mails were accepted (false on timeout).
func (s *SMTPServer) WaitMails(n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for len(s.Mails()) < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

type smtpSession struct {
	s    *SMTPServer
	from string
	to   []string
}

func (x *smtpSession) Reset()        { x.from, x.to = "", nil }
func (x *smtpSession) Logout() error { return nil }

func (x *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	x.from = from
	return nil
}

func (x *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	x.to = append(x.to, to)
	return nil
}

func (x *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := Mail{From: x.from, To: append([]string{}, x.to...), At: time.Now()}
	if msg, err := netmail.ReadMessage(bytes.NewReader(b)); err == nil {
		m.MessageID = strings.Trim(strings.TrimSpace(msg.Header.Get("Message-Id")), "<>")
		m.Subject = msg.Header.Get("Subject")
	}
	x.s.mu.Lock()
	x.s.mails = append(x.s.mails, m)
	x.s.mu.Unlock()
	return nil
}
