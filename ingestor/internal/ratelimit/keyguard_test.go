package ratelimit

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
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

func TestKeyPrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ key, want string }{
		{"pb_live_AbCdEfGh0123456789012345678901234", "pb_live_AbCdEfGh"},
		{"pb_live_AbCdEfGhZZZZZZZZZZZZZZZZZZZZZZZZ", "pb_live_AbCdEfGh"},
		{"legacy-key-0123456789abcdef", "legacy-key-01234"},
		{"short-key", "short-key"},
		{"pb_live_AbCdEfGh", "pb_live_AbCdEfGh"},
		{"", ""},
	} {
		if got := KeyPrefix(tc.key); got != tc.want {
			t.Errorf("KeyPrefix(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}

// Issue 16 item 5, bad keys keyed on their prefix: unknown keys sharing a prefix empty
// its bucket whatever addresses they come from (the address guard sees each address
// once), and any key with that prefix is then blocked, however its tail differs; the
// warning fires once per prefix.
func TestPrefixGuardFillsAcrossAddresses(t *testing.T) {
	t.Parallel()
	const burst = 5
	addrs := NewKeyGuard(0.001, burst)
	g := NewPrefixGuard(0.001, burst)
	now := time.Now()
	var warned []bool
	for i := range burst {
		// A new address and a new tail each time: only the prefix repeats.
		addr := netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})
		key := "pb_live_SharedPf" + strings.Repeat(string(rune('a'+i)), 24)
		if _, blocked := g.Blocked(key, now); blocked {
			t.Fatalf("key %d blocked before the prefix's attempts were used", i)
		}
		if addrs.Failed(addr, now) {
			t.Fatalf("address %d ran out after one attempt", i)
		}
		prefix, first := g.Failed(key, now)
		if prefix != "pb_live_SharedPf" {
			t.Fatalf("charged to %q", prefix)
		}
		warned = append(warned, first)
	}
	if want := []bool{false, false, false, false, true}; !slices.Equal(warned, want) {
		t.Fatalf("warnings %v, want %v", warned, want)
	}
	wait, blocked := g.Blocked("pb_live_SharedPfAnotherTailNeverSeenBefore0", now)
	if !blocked {
		t.Fatal("a fresh key with the flooded prefix is not blocked")
	}
	if wait < 999*time.Second || wait > 1000*time.Second {
		t.Fatalf("wait %v, want about 1000s (one token at 0.001/s)", wait)
	}
	if _, first := g.Failed("pb_live_SharedPfYetAnother", now); first {
		t.Fatal("warned twice for one prefix")
	}
	if _, blocked := addrs.Blocked(netip.MustParseAddr("198.51.100.1"), now); blocked {
		t.Fatal("the address guard alone would have blocked: the test proves nothing")
	}
	// The bucket refills at its rate.
	if _, blocked := g.Blocked("pb_live_SharedPfx", now.Add(1001*time.Second)); blocked {
		t.Fatal("still blocked after the refill time")
	}
}

// Distinct prefixes have distinct buckets, and keys that are not plausible (refused
// without a lookup anyway; the empty key of every keyless request) are never charged.
func TestPrefixGuardPrefixesAreIndependent(t *testing.T) {
	t.Parallel()
	g := NewPrefixGuard(0.001, 2)
	now := time.Now()
	g.Failed("pb_live_FloodedA000000000000000000000000", now)
	g.Failed("pb_live_FloodedA111111111111111111111111", now)
	if _, blocked := g.Blocked("pb_live_FloodedA222222222222222222222222", now); !blocked {
		t.Fatal("the flooded prefix is not blocked")
	}
	for _, key := range []string{"pb_live_FloodedB000000000000000000000000", "pb_live_FloodedC", "pb_live_Flooded", "legacy-FloodedA-0000"} {
		if _, blocked := g.Blocked(key, now); blocked {
			t.Errorf("%q is blocked by another prefix", key)
		}
	}
	for range 5 {
		if p, first := g.Failed("", now); p != "" || first {
			t.Fatal("the empty key was charged")
		}
		g.Failed("short", now)
	}
	if _, blocked := g.Blocked("", now); blocked {
		t.Fatal("the empty key is blocked")
	}
	if _, blocked := g.Blocked("short", now); blocked {
		t.Fatal("an implausible key is blocked")
	}
}

func TestPrefixGuardDisabled(t *testing.T) {
	t.Parallel()
	for _, r := range []float64{0, -1} {
		if g := NewPrefixGuard(r, 20); g != nil {
			t.Fatalf("NewPrefixGuard(%v, 20) = %v, want nil (disabled)", r, g)
		}
	}
	if g := NewPrefixGuard(1, 20); g == nil {
		t.Fatal("NewPrefixGuard(1, 20) is disabled")
	}
}

// Before any unknown key the guard takes no lock and needs no LRU lookup; the LRU holds
// at most guardEntries prefixes, evicting the least recently charged.
func TestPrefixGuardIsBounded(t *testing.T) {
	t.Parallel()
	g := NewPrefixGuard(0.001, 1)
	now := time.Now()
	if g.Active() {
		t.Fatal("active before any unknown key")
	}
	key := func(i int) string { return fmt.Sprintf("pb_live_%08d000000000000000000000000", i) }
	for i := range guardEntries + 10 {
		g.Failed(key(i), now)
	}
	if !g.Active() {
		t.Fatal("not active after unknown keys")
	}
	if n := g.prefixes.lru.Len(); n != guardEntries {
		t.Fatalf("%d prefixes held, want the bound %d", n, guardEntries)
	}
	if _, blocked := g.Blocked(key(0), now); blocked {
		t.Fatal("the oldest prefix was not evicted")
	}
	if _, blocked := g.Blocked(key(guardEntries+9), now); !blocked {
		t.Fatal("the newest prefix is not held")
	}
}
