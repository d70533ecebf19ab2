package clientip

import (
	"net/netip"
	"testing"
)

func TestParseTrusted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "", want: nil},
		{in: " , ", want: nil},
		{in: "10.0.0.0/8", want: []string{"10.0.0.0/8"}},
		{in: "10.1.2.3/8, 192.0.2.1 ,::1", want: []string{"10.0.0.0/8", "192.0.2.1/32", "::1/128"}},
		{in: "::ffff:192.0.2.1", want: []string{"192.0.2.1/32"}},
		{in: "2001:db8::/32", want: []string{"2001:db8::/32"}},
		{in: "10.0.0.0/33", wantErr: true},
		{in: "::ffff:10.0.0.0/104", wantErr: true},
		{in: "localhost", wantErr: true},
		{in: "10.0.0.1, nope", wantErr: true},
	} {
		got, err := ParseTrusted(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParseTrusted(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTrusted(%q): %v", tc.in, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("ParseTrusted(%q) = %v, want %v", tc.in, got, tc.want)
			continue
		}
		for i := range got {
			if got[i].String() != tc.want[i] {
				t.Errorf("ParseTrusted(%q)[%d] = %v, want %v", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func TestParseHeader(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Header{"": XForwardedFor, "x-forwarded-for": XForwardedFor, " X-Forwarded-For ": XForwardedFor, "Forwarded": Forwarded, "FORWARDED": Forwarded} {
		got, err := ParseHeader(in)
		if err != nil || got != want {
			t.Errorf("ParseHeader(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"X-Real-IP", "True-Client-IP", "xff"} {
		if _, err := ParseHeader(in); err == nil {
			t.Errorf("ParseHeader(%q) accepted", in)
		}
	}
}

func TestClientAddr(t *testing.T) {
	t.Parallel()
	trusted, err := ParseTrusted("10.0.0.0/8, 2001:db8:ffff::/48")
	if err != nil {
		t.Fatal(err)
	}
	xff, fwd := New(trusted, XForwardedFor), New(trusted, Forwarded)
	const proxy, stranger = "10.0.0.5", "198.51.100.9"
	for _, tc := range []struct {
		name   string
		r      *Resolver
		peer   string
		values []string
		want   string
	}{
		// Never from an untrusted peer.
		{"untrusted peer's XFF ignored", xff, stranger, []string{"203.0.113.7"}, stranger},
		{"untrusted peer's Forwarded ignored", fwd, stranger, []string{"for=203.0.113.7"}, stranger},
		{"nil resolver trusts no one", nil, proxy, []string{"203.0.113.7"}, proxy},
		{"no trusted proxies", New(nil, XForwardedFor), proxy, []string{"203.0.113.7"}, proxy},
		{"untrusted IPv4-mapped peer is unmapped", xff, "::ffff:198.51.100.9", []string{"203.0.113.7"}, stranger},

		// X-Forwarded-For from a trusted proxy.
		{"no header", xff, proxy, nil, proxy},
		{"empty header", xff, proxy, []string{""}, proxy},
		{"one hop", xff, proxy, []string{"203.0.113.7"}, "203.0.113.7"},
		{"trusted IPv4-mapped peer", xff, "::ffff:10.0.0.5", []string{"203.0.113.7"}, "203.0.113.7"},
		{"client-written entries left of the client are ignored", xff, proxy, []string{"1.2.3.4, 5.6.7.8, 203.0.113.7"}, "203.0.113.7"},
		{"trusted hops skipped from the right", xff, proxy, []string{"1.2.3.4, 203.0.113.7, 10.9.9.9, 10.0.0.7"}, "203.0.113.7"},
		{"several header lines are one list", xff, proxy, []string{"1.2.3.4, 203.0.113.7", "10.0.0.7"}, "203.0.113.7"},
		{"all trusted: left-most", xff, proxy, []string{"10.1.1.1, 10.2.2.2"}, "10.1.1.1"},
		{"with port", xff, proxy, []string{"203.0.113.7:5555"}, "203.0.113.7"},
		{"IPv6", xff, proxy, []string{"2001:db8::1"}, "2001:db8::1"},
		{"bracketed IPv6 with port", xff, proxy, []string{"[2001:db8::1]:443"}, "2001:db8::1"},
		{"bracketed IPv6", xff, proxy, []string{"[2001:db8::1]"}, "2001:db8::1"},
		{"IPv6 trusted hop", xff, "2001:db8:ffff::1", []string{"203.0.113.7, 2001:db8:ffff::2"}, "203.0.113.7"},
		{"IPv4-mapped entry unmapped", xff, proxy, []string{"::ffff:203.0.113.7"}, "203.0.113.7"},
		{"empty entries skipped", xff, proxy, []string{" , 203.0.113.7 ,"}, "203.0.113.7"},
		{"garbage falls back to peer", xff, proxy, []string{"203.0.113.7, not-an-ip"}, proxy},
		{"hostname falls back to peer", xff, proxy, []string{"example.com"}, proxy},
		{"unknown falls back to peer", xff, proxy, []string{"unknown"}, proxy},
		{"zone falls back to peer", xff, proxy, []string{"fe80::1%eth0"}, proxy},
		{"garbage on another line falls back", xff, proxy, []string{"203.0.113.7", "x"}, proxy},

		// Forwarded (RFC 7239) from a trusted proxy.
		{"fwd one hop", fwd, proxy, []string{"for=203.0.113.7"}, "203.0.113.7"},
		{"fwd case and spaces", fwd, proxy, []string{" For = 203.0.113.7 ;Proto=https"}, "203.0.113.7"},
		{"fwd quoted IPv6 with port", fwd, proxy, []string{`for="[2001:db8::1]:4711"`}, "2001:db8::1"},
		{"fwd other params", fwd, proxy, []string{"by=10.0.0.5;for=203.0.113.7;host=example.com;proto=https"}, "203.0.113.7"},
		{"fwd chain", fwd, proxy, []string{"for=1.2.3.4, for=203.0.113.7;proto=https, for=10.0.0.7"}, "203.0.113.7"},
		{"fwd several lines", fwd, proxy, []string{"for=1.2.3.4", "for=203.0.113.7"}, "203.0.113.7"},
		{"fwd obfuscated node falls back", fwd, proxy, []string{"for=_hidden"}, proxy},
		{"fwd unknown falls back", fwd, proxy, []string{"for=unknown"}, proxy},
		{"fwd element without for falls back", fwd, proxy, []string{"for=1.2.3.4, proto=https"}, proxy},
		{"fwd two for in one element falls back", fwd, proxy, []string{"for=1.2.3.4;for=203.0.113.7"}, proxy},
		{"fwd pair without = falls back", fwd, proxy, []string{"for=203.0.113.7;junk"}, proxy},
		{"fwd unquoted IPv6 with port falls back", fwd, proxy, []string{"for=[2001:db8::1]:4711x"}, proxy},
		{"fwd resolver ignores X-Forwarded-For syntax", fwd, proxy, []string{"203.0.113.7"}, proxy},
	} {
		peer := netip.MustParseAddr(tc.peer)
		got := tc.r.ClientAddr(peer, tc.values)
		if got.String() != tc.want {
			t.Errorf("%s: ClientAddr(%s, %q) = %v, want %s", tc.name, tc.peer, tc.values, got, tc.want)
		}
	}
}

func FuzzClientAddr(f *testing.F) {
	for _, s := range []string{"203.0.113.7", "for=203.0.113.7", `for="[2001:db8::1]:4711"`, "1.2.3.4, 10.0.0.1", ""} {
		f.Add(s)
	}
	trusted, _ := ParseTrusted("10.0.0.0/8")
	peer := netip.MustParseAddr("10.0.0.5")
	f.Fuzz(func(t *testing.T, v string) {
		for _, h := range []Header{XForwardedFor, Forwarded} {
			got := New(trusted, h).ClientAddr(peer, []string{v})
			if !got.IsValid() || got.Zone() != "" || got.Is4In6() {
				t.Fatalf("ClientAddr(%q) = %v", v, got)
			}
		}
	})
}
