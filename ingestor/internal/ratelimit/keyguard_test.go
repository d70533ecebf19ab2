package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

// The enumeration warning (B34) fires exactly once, when an address takes its last
// attempt: after that Blocked refuses it before any lookup, so Failed is not called
// again for it and a later "first time out" would never come.
func TestKeyGuardWarnsWhenTheLastAttemptIsTaken(t *testing.T) {
	t.Parallel()
	g := NewKeyGuard(0.001, 3)
	addr, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	now := time.Now()
	var warned []bool
	for range 3 {
		if _, blocked := g.Blocked(addr, now); blocked {
			t.Fatal("blocked before its attempts were used")
		}
		warned = append(warned, g.Failed(addr, now))
	}
	if want := []bool{false, false, true}; warned[0] != want[0] || warned[1] != want[1] || warned[2] != want[2] {
		t.Fatalf("warnings %v, want %v", warned, want)
	}
	if _, blocked := g.Blocked(addr, now); !blocked {
		t.Fatal("not blocked after its last attempt")
	}
	if g.Failed(addr, now) {
		t.Fatal("warned twice for one address")
	}
	if _, blocked := g.Blocked(other, now); blocked {
		t.Fatal("another address is blocked")
	}
}

// An IPv6 client is limited by its /64: rotating the interface identifier buys no
// attempts, while the next /64 has its own.
func TestKeyGuardGroupsIPv6ByPrefix(t *testing.T) {
	t.Parallel()
	g := NewKeyGuard(0.001, 2)
	now := time.Now()
	g.Failed(netip.MustParseAddr("2001:db8:1:2::1"), now)
	g.Failed(netip.MustParseAddr("2001:db8:1:2:ffff::9"), now)
	if _, blocked := g.Blocked(netip.MustParseAddr("2001:db8:1:2:abcd::5"), now); !blocked {
		t.Fatal("another address of the same /64 is not blocked")
	}
	if _, blocked := g.Blocked(netip.MustParseAddr("2001:db8:1:3::1"), now); blocked {
		t.Fatal("the next /64 is blocked")
	}
	g.Failed(netip.MustParseAddr("192.0.2.1"), now)
	g.Failed(netip.MustParseAddr("192.0.2.1"), now)
	if _, blocked := g.Blocked(netip.MustParseAddr("192.0.2.2"), now); blocked {
		t.Fatal("IPv4 neighbours share a bucket")
	}
}
