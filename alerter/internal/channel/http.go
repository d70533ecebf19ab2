package channel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MaxAnswer bounds how much of an answer is read (kept, truncated, in last_error).
const MaxAnswer = 4 << 10

// HTTP is the client the HTTP channels share: one per replica, safe for concurrent use.
//
//   - Every request is bounded by the timeout (connect, TLS, headers, body).
//   - Redirects are not followed: a 3xx is a permanent failure (a receiver that moved
//     must be reconfigured, and following one would let it point us anywhere).
//   - At most MaxAnswer bytes of an answer are read.
//   - No proxy from the environment: the SSRF guard must see the real peer.
//   - The SSRF guard: unless allowPrivate, connections to loopback, private (RFC 1918,
//     fc00::/7), link-local, unspecified, multicast, CGNAT (100.64.0.0/10) and other
//     reserved addresses are refused. It runs at dial time on the address actually
//     dialled (net.Dialer.Control), after DNS resolution, so a name that resolves to a
//     public address when checked and a private one when used (DNS rebinding) cannot
//     get past it.
type HTTP struct {
	client *http.Client
}

// NewHTTP returns the client; allowPrivate turns the SSRF guard off (tests, a receiver
// on the same machine or network: ALERT_WEBHOOK_ALLOW_PRIVATE).
func NewHTTP(timeout time.Duration, allowPrivate bool) *HTTP {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		dialer.Control = guard
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           16,
		IdleConnTimeout:        90 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &HTTP{client: &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}
}

// CloseIdleConnections closes the client's idle connections.
func (h *HTTP) CloseIdleConnections() { h.client.CloseIdleConnections() }

// RefusedError is the SSRF guard's refusal.
type RefusedError struct{ Addr netip.Addr }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refusing to connect to %s: not a public address (ALERT_WEBHOOK_ALLOW_PRIVATE)", e.Addr)
}

// reserved are ranges refused besides what netip classifies (loopback, private,
// link-local, multicast, unspecified).
var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),  // CGNAT shared space
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	netip.MustParsePrefix("100::/64"),       // discard-only
	netip.MustParsePrefix("2002::/16"),      // 6to4 (embeds any IPv4 address)
	netip.MustParsePrefix("2001::/32"),      // Teredo (likewise)
	netip.MustParsePrefix("fec0::/10"),      // deprecated site-local
}

// nat64 is the well-known NAT64 prefix: the IPv4 address it embeds is checked.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Refused reports whether the SSRF guard refuses addr.
func Refused(addr netip.Addr) bool {
	addr = addr.Unmap()
	if nat64.Contains(addr) {
		b := addr.As16()
		addr = netip.AddrFrom4([4]byte(b[12:16]))
	}
	if !addr.IsValid() || addr.IsLoopback() || addr.IsPrivate() || addr.IsLinkLocalUnicast() ||
		addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast() || addr.IsMulticast() || addr.IsUnspecified() {
		return true
	}
	for _, p := range reserved {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// guard is the dialer's Control: it sees the resolved address about to be connected.
func guard(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("dialling %q: not an IP address", address)
	}
	if Refused(addr) {
		return &RefusedError{Addr: addr.Unmap()}
	}
	return nil
}

// Post sends body to rawURL with headers and classifies the answer: nil for 2xx; a
// permanent *Error for other 4xx, 3xx, a refused address or a bad URL; a retryable
// *Error for 5xx, 408, 429 (with Retry-After) and network errors.
func (h *HTTP) Post(ctx context.Context, rawURL string, body []byte, headers http.Header) (int, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return 0, permanent("the channel URL is not an http(s) URL")
	}
	if u.User != nil {
		return 0, permanent("the channel URL carries credentials (user info), which are not sent")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, permanent("building the request: %w", err)
	}
	req.Header = headers.Clone()
	req.Header.Set("User-Agent", "PulseBoard-Alerter/1")
	resp, err := h.client.Do(req)
	if err != nil {
		var refused *RefusedError
		if errors.As(err, &refused) {
			return 0, &Error{Permanent: true, Err: refused}
		}
		// Redact the URL (its path may be the credential) from the error text.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return 0, &Error{Err: fmt.Errorf("POST %s: %w", redact(u), err)}
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	st := resp.StatusCode
	if st >= 200 && st < 300 {
		return st, nil
	}
	e := &Error{Status: st, Err: fmt.Errorf("POST %s: %s: %s", redact(u), resp.Status, printable(answer))}
	switch {
	case st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable:
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
	case st >= 500, st == http.StatusRequestTimeout:
	default: // 3xx (not followed), other 4xx
		e.Permanent = true
	}
	return st, e
}

// retryAfter parses a Retry-After value: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, 7*24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func redact(u *url.URL) string {
	s := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		s += "/…"
	}
	return s
}

// printable makes an answer safe for last_error: valid UTF-8, no control characters.
func printable(b []byte) string {
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(b) == MaxAnswer {
		s += "…"
	}
	return strings.TrimSpace(s)
}
