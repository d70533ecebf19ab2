package ratelimit

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// KeyGuard slows down clients that present unknown API keys (RELIABILITY.md B34): every
// 401 takes a token from the client address's bucket, and an address whose bucket is
// empty is refused with 429 before any key lookup until it refills. A client with a valid
// key never touches its bucket, so a mistyped key costs a real SDK nothing it would notice,
// while guessing keys is held to the refill rate. Buckets live in a bounded LRU.
//
// The address is the client's as trusted proxies report it (pkg/clientip,
// INGEST_TRUSTED_PROXIES), and a blocked address is refused only keys that are not known
// valid (intake's keyRefused): other clients' bad keys from a shared address never refuse
// a valid key in use (issue 16 item 5).
type KeyGuard struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	addrs *lru.Cache[netip.Addr, *guarded]
	// tracking is set once any address presented an unknown key. Until then Blocked
	// needs neither the lock nor the LRU, which every request would otherwise contend on.
	tracking atomic.Bool
}

type guarded struct {
	lim    *rate.Limiter
	warned bool
}

// NewKeyGuard allows burst unknown-key attempts per address, refilled at perSecond.
// perSecond <= 0 disables the guard (nil is returned).
func NewKeyGuard(perSecond float64, burst int) *KeyGuard {
	if perSecond <= 0 {
		return nil
	}
	c, _ := lru.New[netip.Addr, *guarded](100_000)
	return &KeyGuard{rate: rate.Limit(perSecond), burst: max(1, burst), addrs: c}
}

// Active reports whether any address has presented an unknown key yet; until then no
// address is blocked and callers need not even find the client's address.
func (g *KeyGuard) Active() bool { return g.tracking.Load() }

// Blocked reports whether addr has used up its unknown-key attempts, and when it may try
// again.
func (g *KeyGuard) Blocked(addr netip.Addr, now time.Time) (time.Duration, bool) {
	if !g.tracking.Load() {
		return 0, false
	}
	g.mu.Lock()
	b, ok := g.addrs.Get(guardAddr(addr))
	g.mu.Unlock()
	if !ok {
		return 0, false
	}
	tokens := b.lim.TokensAt(now)
	if tokens >= 1 {
		return 0, false
	}
	return time.Duration((1 - tokens) / float64(g.rate) * float64(time.Second)), true
}

// Failed records an unknown key from addr. It returns true the first time the address
// runs out of attempts, so the caller logs one warning per address (possible key
// enumeration), not one per request.
func (g *KeyGuard) Failed(addr netip.Addr, now time.Time) bool {
	addr = guardAddr(addr)
	g.mu.Lock()
	b, ok := g.addrs.Get(addr)
	if !ok {
		b = &guarded{lim: rate.NewLimiter(g.rate, g.burst)}
		g.addrs.Add(addr, b)
		g.tracking.Store(true)
	}
	g.mu.Unlock()
	// Running out is taking the last token: the next request from this address is
	// refused by Blocked before any lookup, so it never gets here to be warned about.
	if b.lim.AllowN(now, 1) && b.lim.TokensAt(now) >= 1 {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	first := !b.warned
	b.warned = true
	return first
}

// guardAddr is the bucket an address is charged to: an IPv4 address is its own, an IPv6
// address shares its /64 with its neighbours, since one subscriber is routinely given a
// whole /64 and could otherwise take a fresh address, and fresh attempts, per request
// (the api's login and register throttles group addresses the same way).
func guardAddr(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
