package ratelimit

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// guardEntries bounds each guard's LRU: the buckets of the addresses (or key prefixes)
// that presented unknown keys most recently.
const guardEntries = 100_000

// KeyGuard slows down clients that present unknown API keys (docs/reliability.md B34): every
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
	addrs buckets[netip.Addr]
}

// NewKeyGuard allows burst unknown-key attempts per address, refilled at perSecond.
// perSecond <= 0 disables the guard (nil is returned).
func NewKeyGuard(perSecond float64, burst int) *KeyGuard {
	if perSecond <= 0 {
		return nil
	}
	g := &KeyGuard{}
	g.addrs.init(perSecond, burst, guardEntries)
	return g
}

// Active reports whether any address has presented an unknown key yet; until then no
// address is blocked and callers need not even find the client's address.
func (g *KeyGuard) Active() bool { return g.addrs.tracking.Load() }

// Blocked reports whether addr has used up its unknown-key attempts, and when it may try
// again.
func (g *KeyGuard) Blocked(addr netip.Addr, now time.Time) (time.Duration, bool) {
	return g.addrs.blocked(guardAddr(addr), now)
}

// Failed records an unknown key from addr. It returns true the first time the address
// runs out of attempts, so the caller logs one warning per address (possible key
// enumeration), not one per request.
func (g *KeyGuard) Failed(addr netip.Addr, now time.Time) bool {
	return g.addrs.failed(guardAddr(addr), now)
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

// PrefixGuard is the unknown-key guard's second dimension (issue 16 item 5: "for bad
// keys, on the key prefix too"): every unknown key also takes a token from the bucket of
// its prefix (KeyPrefix), whatever address it came from, and a key whose prefix bucket is
// empty is refused with 429 before any lookup unless it is known valid (intake's
// keyRefused), exactly as from a blocked address. So one bad key, or keys built around one
// leaked prefix, sent from many addresses (a botnet, rotating proxies, a /64 per request
// being no longer possible) is held to the prefix's refill rate in total. Keys guessed at
// random have random prefixes and are held by the address buckets instead. Buckets live
// in a bounded LRU.
type PrefixGuard struct {
	prefixes buckets[string]
}

// NewPrefixGuard allows burst unknown keys per key prefix, refilled at perSecond.
// perSecond <= 0 disables it (nil is returned).
func NewPrefixGuard(perSecond float64, burst int) *PrefixGuard {
	if perSecond <= 0 {
		return nil
	}
	g := &PrefixGuard{}
	g.prefixes.init(perSecond, burst, guardEntries)
	return g
}

// Active reports whether any unknown key has been seen yet; until then no prefix is
// blocked.
func (g *PrefixGuard) Active() bool { return g.prefixes.tracking.Load() }

// Blocked reports whether the prefix of key has used up its unknown-key attempts, and
// when it may be tried again. Keys that are not Plausible are never blocked by their
// prefix (see Failed).
func (g *PrefixGuard) Blocked(key string, now time.Time) (time.Duration, bool) {
	if !g.prefixes.tracking.Load() || !apikey.Plausible(key) {
		return 0, false
	}
	return g.prefixes.blocked(KeyPrefix(key), now)
}

// Failed records an unknown key. It returns the key's prefix and true the first time the
// prefix runs out of attempts, so the caller logs one warning per prefix. A key that is
// not apikey.Plausible (empty, too short, too long) is not charged: it is refused without
// any lookup anyway, and every request without a key would otherwise share the empty
// prefix's bucket.
func (g *PrefixGuard) Failed(key string, now time.Time) (prefix string, first bool) {
	if !apikey.Plausible(key) {
		return "", false
	}
	prefix = KeyPrefix(key)
	// The LRU keeps its key: a copy, so that the request's key (which may alias a
	// reused buffer) is not retained.
	return prefix, g.prefixes.failed(strings.Clone(prefix), now)
}

// prefixRandom is how many bytes of a key's random part count as its prefix: 8 base62
// characters (about 48 bits), enough that unrelated keys practically never share a
// prefix, while a key repeated or varied only in its tail keeps one.
const prefixRandom = 8

// KeyPrefix is the prefix an unknown key is charged to: its first
// len(apikey.Prefix)+prefixRandom bytes (16), which for a PulseBoard key is the "pb_live_"
// marker and the first prefixRandom characters of its random part, and for any other key
// (the old backend's) just as many bytes; a key no longer than that is its own prefix.
// It is a substring of key.
func KeyPrefix(key string) string {
	const n = len(apikey.Prefix) + prefixRandom
	if len(key) <= n {
		return key
	}
	return key[:n]
}

// buckets is a bounded set of unknown-key token buckets, one per K.
type buckets[K comparable] struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	lru   *lru.Cache[K, *guarded]
	// tracking is set once any K presented an unknown key. Until then blocked needs
	// neither the lock nor the LRU, which every request would otherwise contend on.
	tracking atomic.Bool
}

type guarded struct {
	lim    *rate.Limiter
	warned bool
}

func (b *buckets[K]) init(perSecond float64, burst, size int) {
	b.lru, _ = lru.New[K, *guarded](size)
	b.rate, b.burst = rate.Limit(perSecond), max(1, burst)
}

func (b *buckets[K]) blocked(k K, now time.Time) (time.Duration, bool) {
	if !b.tracking.Load() {
		return 0, false
	}
	b.mu.Lock()
	g, ok := b.lru.Get(k)
	b.mu.Unlock()
	if !ok {
		return 0, false
	}
	tokens := g.lim.TokensAt(now)
	if tokens >= 1 {
		return 0, false
	}
	return time.Duration((1 - tokens) / float64(b.rate) * float64(time.Second)), true
}

func (b *buckets[K]) failed(k K, now time.Time) bool {
	b.mu.Lock()
	g, ok := b.lru.Get(k)
	if !ok {
		g = &guarded{lim: rate.NewLimiter(b.rate, b.burst)}
		b.lru.Add(k, g)
		b.tracking.Store(true)
	}
	b.mu.Unlock()
	// Running out is taking the last token: the next request for this K is refused by
	// blocked before any lookup, so it never gets here to be warned about.
	if g.lim.AllowN(now, 1) && g.lim.TokensAt(now) >= 1 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	first := !g.warned
	g.warned = true
	return first
}
