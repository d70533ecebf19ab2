// Package mail sends PulseBoard's emails: through an SMTP server with
// github.com/wneessen/go-mail, or, when no SMTP server is configured, to the log. Every
// message has one recipient, a plain-text and an HTML part, and a Message-ID derived
// from what it is about (so that the duplicate a crash can cause in the documented
// window is recognisable). Nothing user-supplied reaches a header raw: the recipient
// must parse as exactly one bare address, and the subject is sanitised (SanitizeHeader)
// before go-mail encodes it.
package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"
)

// Transports, as recorded in email_deliveries.
const (
	TransportSMTP = "smtp"
	TransportLog  = "log"
)

// Message is one email to one recipient.
type Message struct {
	// Kind is what the email is about ("threshold", "resolved", "digest"); a bounded
	// metric label.
	Kind string
	// ID is a stable identifier of what is being sent (e.g. "alert-<uuid>"); it becomes
	// the Message-ID "<ID@pulseboard>".
	ID string
	// To is the recipient: one bare address, no display name, no list.
	To      string
	Subject string
	Text    string
	HTML    string
}

// MessageID is the Message-ID header value (without angle brackets) of m.
func (m Message) MessageID() string { return m.ID + "@pulseboard" }

// Config is the SMTP configuration (the old backend's variable names).
type Config struct {
	// Host is the SMTP server; empty means "write mails to the log".
	Host string `env:"SMTP_HOST"`
	// Port [587]. 465 means implicit TLS unless SMTP_TLS says otherwise.
	Port int `env:"SMTP_PORT" envDefault:"587"`
	// User and Pass enable SMTP AUTH (the strongest mechanism the server offers).
	User string `env:"SMTP_USER"`
	Pass string `env:"SMTP_PASS"`
	// From is the sender [PulseBoard <alerts@pulseboard.local>].
	From string `env:"SMTP_FROM" envDefault:"PulseBoard <alerts@pulseboard.local>"`
	// TLS: auto (implicit TLS on port 465, else STARTTLS when the server offers it),
	// starttls (required), tls (implicit), none [auto]. Use starttls or tls in
	// production: auto lets an active attacker strip STARTTLS.
	TLS string `env:"SMTP_TLS" envDefault:"auto"`
	// Timeout bounds one delivery: connect, and every SMTP command [30s].
	Timeout time.Duration `env:"SMTP_TIMEOUT" envDefault:"30s"`
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Host == "" {
		return nil
	}
	if strings.ContainsAny(c.Host, " \r\n/") {
		errs = append(errs, fmt.Errorf("SMTP_HOST %q is not a host name", c.Host))
	}
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("SMTP_PORT must be a port number, got %d", c.Port))
	}
	if _, err := parseFrom(c.From); err != nil {
		errs = append(errs, err)
	}
	switch c.TLS {
	case "auto", "starttls", "tls", "none":
	default:
		errs = append(errs, fmt.Errorf("SMTP_TLS must be auto, starttls, tls or none, got %q", c.TLS))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("SMTP_TIMEOUT must be positive, got %s", c.Timeout))
	}
	if (c.User == "") != (c.Pass == "") {
		errs = append(errs, errors.New("SMTP_USER and SMTP_PASS must be set together"))
	}
	return errors.Join(errs...)
}

func parseFrom(from string) (*netmail.Address, error) {
	a, err := netmail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("SMTP_FROM %q is not an address: %w", from, err)
	}
	return a, nil
}

// SMTP delivers through an SMTP server, one connection per message (alerts are rare,
// and a fresh connection heals by itself after the server restarts). Safe for
// concurrent use.
type SMTP struct {
	cfg  Config
	from *netmail.Address
}

// NewSMTP returns an SMTP mailer for cfg (whose Host must be set).
func NewSMTP(cfg Config) (*SMTP, error) {
	if cfg.Host == "" {
		return nil, errors.New("mail: SMTP_HOST is not set")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	from, _ := parseFrom(cfg.From)
	return &SMTP{cfg: cfg, from: from}, nil
}

// Transport implements the alerter's Mailer.
func (s *SMTP) Transport() string { return TransportSMTP }

// Send delivers m. Errors that retrying cannot fix (an invalid recipient, a 5xx answer)
// satisfy IsPermanent; everything else (connection refused, 4xx, timeouts) is worth a
// retry.
func (s *SMTP) Send(ctx context.Context, m Message) error {
	rcpt, err := Recipient(m.To)
	if err != nil {
		return err
	}
	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	msg.FromMailAddress(s.from)
	msg.ToMailAddress(rcpt)
	msg.Subject(SanitizeHeader(m.Subject, 200))
	msg.SetMessageIDWithValue(m.MessageID())
	msg.SetDate()
	msg.SetGenHeader(gomail.HeaderXAutoResponseSuppress, "All")
	msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	msg.AddAlternativeString(gomail.TypeTextHTML, m.HTML)

	opts := []gomail.Option{gomail.WithPort(s.cfg.Port), gomail.WithTimeout(s.cfg.Timeout)}
	switch {
	case s.cfg.TLS == "tls" || (s.cfg.TLS == "auto" && s.cfg.Port == 465):
		opts = append(opts, gomail.WithSSL())
	case s.cfg.TLS == "starttls":
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	case s.cfg.TLS == "none":
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	default:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSOpportunistic))
	}
	if s.cfg.User != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(s.cfg.User), gomail.WithPassword(s.cfg.Pass))
	}
	client, err := gomail.NewClient(s.cfg.Host, opts...)
	if err != nil {
		return Permanent(fmt.Errorf("configuring the SMTP client: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		var se *gomail.SendError
		if errors.As(err, &se) && !se.IsTemp() && se.ErrorCode() >= 500 && se.ErrorCode() < 600 {
			return Permanent(fmt.Errorf("SMTP %s: %w", serverAddr(s.cfg), err))
		}
		return fmt.Errorf("SMTP %s: %w", serverAddr(s.cfg), err)
	}
	return nil
}

func serverAddr(c Config) string { return fmt.Sprintf("%s:%d", c.Host, c.Port) }

// Log writes mails to the log instead of sending them (SMTP_HOST unset). The JSON log
// handler escapes every value, so a CR/LF in a subject cannot forge a log line.
type Log struct {
	Logger *slog.Logger
}

// Transport implements the alerter's Mailer.
func (l *Log) Transport() string { return TransportLog }

// Send logs m.
func (l *Log) Send(ctx context.Context, m Message) error {
	rcpt, err := Recipient(m.To)
	if err != nil {
		return err
	}
	l.Logger.LogAttrs(ctx, slog.LevelInfo, "email not sent: SMTP_HOST is unset, so it is written here",
		slog.String("kind", m.Kind), slog.String("to", rcpt.Address),
		slog.String("subject", SanitizeHeader(m.Subject, 200)),
		slog.String("message_id", m.MessageID()), slog.String("text", m.Text))
	return nil
}

// Recipient parses to as exactly one bare address (no display name, no list, no
// CR/LF); anything else is a permanent error.
func Recipient(to string) (*netmail.Address, error) {
	a, err := netmail.ParseAddress(to)
	if err != nil || a.Name != "" || a.Address != strings.TrimSpace(to) {
		return nil, Permanent(fmt.Errorf("recipient %q is not a single address", SanitizeHeader(to, 100)))
	}
	return &netmail.Address{Address: a.Address}, nil
}

// SameAddress reports whether a and b are the same address, ignoring ASCII case (the
// api stores addresses lower-cased and trimmed).
func SameAddress(a, b string) bool {
	return strings.EqualFold(strings.TrimSpace(a), strings.TrimSpace(b))
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying cannot fix.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err (or an error it wraps) was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// SanitizeHeader makes s safe and readable as a one-line header value: control
// characters (CR and LF included) and Unicode line and paragraph separators become
// spaces, runs of spaces collapse, and the result is cut to max characters (with "…").
// Invalid UTF-8 becomes U+FFFD.
func SanitizeHeader(s string, maxChars int) string {
	s = OneLine(s)
	if utf8.RuneCountInString(s) > maxChars {
		r := []rune(s)
		s = strings.TrimSpace(string(r[:maxChars-1])) + "…"
	}
	return s
}

// OneLine replaces control characters and line separators with spaces, collapses runs
// of white space and trims the result.
func OneLine(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == '\u2028' || r == '\u2029' {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}
