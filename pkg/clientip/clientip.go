// Package clientip finds the address of the client behind trusted reverse proxies.
//
// A request's X-Forwarded-For or Forwarded (RFC 7239) header is honoured only when the
// TCP peer is one of the configured trusted proxies; from anyone else it is ignored, so a
// client cannot choose the address it is limited by. Each proxy appends the address it
// received the request from, so the header is read from the right: the client is the
// right-most address that is not itself a trusted proxy. Entries to its left were written
// by the client or by proxies nobody vouches for and are never used. Only one header is
// read (the operator names it): a proxy that writes X-Forwarded-For passes a client's
// Forwarded through untouched, and reading that one would let the client pick its address.
// A malformed or empty header gives the TCP peer's address.
package clientip

import (
	"fmt"
	"net/netip"
	"strings"
)

// Header names the header a Resolver reads.
type Header int

const (
	XForwardedFor Header = iota // X-Forwarded-For: 203.0.113.7, 10.0.0.2
	Forwarded                   // RFC 7239 Forwarded: for=203.0.113.7;proto=https, for="[2001:db8::1]:4711"
)

// ParseHeader accepts "X-Forwarded-For" or "Forwarded" (any case); "" is X-Forwarded-For.
func ParseHeader(s string) (Header, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "x-forwarded-for":
		return XForwardedFor, nil
	case "forwarded":
		return Forwarded, nil
	}
	return 0, fmt.Errorf("client address header must be X-Forwarded-For or Forwarded, got %q", s)
}

// String is the header's canonical name.
func (h Header) String() string {
	if h == Forwarded {
		return "Forwarded"
	}
	return "X-Forwarded-For"
}

// ParseTrusted parses a comma-separated list of CIDRs or single addresses
// ("10.0.0.0/8, 192.0.2.1, ::1"). The empty string trusts no one.
func ParseTrusted(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if strings.Contains(f, "/") {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", f, err)
			}
			if p.Addr().Is4In6() {
				return nil, fmt.Errorf("trusted proxy %q: write IPv4 networks in IPv4 form", f)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", f, err)
		}
		a = a.Unmap().WithZone("")
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Resolver picks a request's client address. The zero value and nil trust no one.
type Resolver struct {
	trusted []netip.Prefix
	header  Header
}

// New returns a Resolver that honours header from peers in trusted.
func New(trusted []netip.Prefix, header Header) *Resolver {
	return &Resolver{trusted: trusted, header: header}
}

// Header is the header r reads.
func (r *Resolver) Header() Header {
	if r == nil {
		return XForwardedFor
	}
	return r.header
}

// Enabled reports whether any proxy is trusted; when not, ClientAddr is always the peer
// and callers need not read the header at all.
func (r *Resolver) Enabled() bool { return r != nil && len(r.trusted) > 0 }

// Trusted reports whether a is a trusted proxy.
func (r *Resolver) Trusted(a netip.Addr) bool {
	if r == nil || !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range r.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ClientAddr returns the client's address given the TCP peer's and the values of the
// header r reads, in the order they arrived (a header sent on several lines is one list).
// It is the peer unless the peer is trusted and the header names an untrusted address.
// When every address in the header is a trusted proxy, the left-most one is the client.
func (r *Resolver) ClientAddr(peer netip.Addr, values []string) netip.Addr {
	peer = peer.Unmap()
	if !r.Trusted(peer) || len(values) == 0 {
		return peer
	}
	var addrs []netip.Addr
	for _, v := range values {
		var ok bool
		if r.header == Forwarded {
			addrs, ok = appendForwarded(addrs, v)
		} else {
			addrs, ok = appendXFF(addrs, v)
		}
		if !ok {
			return peer
		}
	}
	if len(addrs) == 0 {
		return peer
	}
	for i := len(addrs) - 1; i >= 0; i-- {
		if !r.Trusted(addrs[i]) {
			return addrs[i]
		}
	}
	return addrs[0]
}

// appendXFF appends the addresses of one X-Forwarded-For value; false if any is not an
// IP address (with an optional port, as some proxies write).
func appendXFF(addrs []netip.Addr, v string) ([]netip.Addr, bool) {
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		a, ok := parseNode(f)
		if !ok {
			return addrs, false
		}
		addrs = append(addrs, a)
	}
	return addrs, true
}

// appendForwarded appends the for= addresses of one Forwarded value (RFC 7239 section 4:
// elements separated by commas, pairs by semicolons). An element without for= or with an
// obfuscated or "unknown" node makes the header unusable: the hop it stands for cannot be
// attributed, so the peer is used instead.
func appendForwarded(addrs []netip.Addr, v string) ([]netip.Addr, bool) {
	for elem := range strings.SplitSeq(v, ",") {
		if strings.TrimSpace(elem) == "" {
			continue
		}
		found := false
		for pair := range strings.SplitSeq(elem, ";") {
			name, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok {
				if strings.TrimSpace(pair) == "" {
					continue
				}
				return addrs, false
			}
			if !strings.EqualFold(strings.TrimSpace(name), "for") {
				continue
			}
			if found {
				return addrs, false // two for= in one element
			}
			val = strings.TrimSpace(val)
			if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
				val = val[1 : len(val)-1]
			}
			a, ok := parseNode(val)
			if !ok {
				return addrs, false
			}
			addrs = append(addrs, a)
			found = true
		}
		if !found {
			return addrs, false
		}
	}
	return addrs, true
}

// parseNode parses "192.0.2.1", "192.0.2.1:4711", "2001:db8::1", "[2001:db8::1]" or
// "[2001:db8::1]:4711".
func parseNode(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return norm(a)
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return norm(ap.Addr())
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return norm(a)
		}
	}
	return netip.Addr{}, false
}

func norm(a netip.Addr) (netip.Addr, bool) {
	if a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
