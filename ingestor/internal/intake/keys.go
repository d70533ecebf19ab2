package intake

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/keycache"
	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// API keys: resolving them (the key cache), and the unknown-key guard (B34, issue 16
// item 5) that keys on the client address and on the key prefix.

// resolve returns the project of key, or answers 401 (unknown), 429 (the guard) or 503
// (the lookup failed) and returns false.
func (h *Handler) resolve(ctx *fasthttp.RequestCtx, route, key string) (pgstore.KeyProject, bool) {
	if h.guarding() {
		var addr netip.Addr // only the address guard needs it
		if h.guard != nil && h.guard.Active() {
			addr = h.clientAddr(ctx)
		}
		if wait, refused := h.keyRefused(addr, key); refused {
			h.guardRefused(ctx, route, wait, 1)
			return pgstore.KeyProject{}, false
		}
	}
	p, err := h.keys.Resolve(context.Background(), key)
	switch {
	case err == nil:
		return p, true
	case errors.Is(err, keycache.ErrUnknownKey):
		h.unknownKey(ctx, key)
		h.fail(ctx, route, httperr.InvalidAPIKey, "Invalid API key", 1)
	default:
		h.logger.Warn("API key lookup failed", "err", err)
		h.unavailable(ctx, route, "API keys cannot be checked right now; retry", 1)
	}
	return p, false
}

// unknownKey counts an unknown key against the client's address (B34) and against the
// key's prefix (issue 16 item 5).
func (h *Handler) unknownKey(ctx *fasthttp.RequestCtx, key string) {
	now := h.now()
	if h.guard != nil {
		addr := h.clientAddr(ctx)
		if h.guard.Failed(addr, now) {
			// The key itself is never logged; the address is what an operator acts on.
			h.logger.Warn("many requests with unknown API keys from one address: possible key enumeration; answering 429 to its keys not known valid",
				"client", addr.String(), "peer", peerAddr(ctx).String())
		}
	}
	if h.prefixes != nil {
		if prefix, first := h.prefixes.Failed(key, now); first {
			// Never the whole key: only its prefix, or, for a key that is its own prefix
			// (shorter than a PulseBoard key's), the prefix's hash.
			attr := slog.String("key_prefix", prefix)
			if len(prefix) >= len(key) {
				attr = slog.String("key_prefix_sha256", apikey.HashOf(prefix).String())
			}
			h.logger.Warn("many requests with unknown API keys sharing one prefix: possible key enumeration or a revoked key in wide use; answering 429 to its keys not known valid",
				attr, "client", h.clientAddr(ctx).String(), "peer", peerAddr(ctx).String())
		}
	}
}

// guarding reports whether the unknown-key guard may refuse anything yet: until some
// address or key prefix was charged an unknown key, nothing is blocked and a request
// needs neither its client address nor any lock.
func (h *Handler) guarding() bool {
	return (h.guard != nil && h.guard.Active()) || (h.prefixes != nil && h.prefixes.Active())
}

// guardMessage answers a key the unknown-key guard refused.
const guardMessage = "Too many requests with invalid API keys from this address or for this key prefix; retry after the Retry-After delay"

// keyRefused is the unknown-key guard's rule (B34, issue 16 item 5): a key presented from
// addr is refused before any lookup when addr has used up its unknown-key attempts, or the
// key's prefix has (ratelimit.PrefixGuard), and the key is not known valid, i.e. it did
// not resolve to a project recently (a local cache entry, no I/O). So other clients' bad
// keys at the same address (a NAT, a proxy nobody configured as trusted) or with the same
// prefix never refuse a valid key in use, while a blocked address or prefix still cannot
// have keys looked up: a guess passes only if it is a key somebody is using, which with
// 190-bit keys is no guess at all. A valid key that this ingestor has not seen in the last
// cache TTLs is still refused from a blocked address, or with a blocked prefix, until the
// bucket refills. addr is unused (may be the zero Addr) while the address guard is not
// Active.
func (h *Handler) keyRefused(addr netip.Addr, key string) (time.Duration, bool) {
	now := h.now()
	var wait time.Duration
	var blocked bool
	if h.guard != nil {
		wait, blocked = h.guard.Blocked(addr, now)
	}
	if h.prefixes != nil {
		if w, b := h.prefixes.Blocked(key, now); b {
			wait, blocked = max(wait, w), true
		}
	}
	if !blocked || (h.known != nil && h.known.Known(key)) {
		return 0, false
	}
	return wait, true
}

// guardRefused answers 429 for a key the guard refused.
func (h *Handler) guardRefused(ctx *fasthttp.RequestCtx, route string, wait time.Duration, n int) {
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(wait))))
	h.fail(ctx, route, httperr.RateLimited, guardMessage, n)
}

// clientAddr is the address the guard keys on: the TCP peer's, or, when the peer is a
// trusted proxy (INGEST_TRUSTED_PROXIES), the client address its X-Forwarded-For or
// Forwarded header reports (pkg/clientip: the right-most entry that is not a trusted
// proxy; a malformed header gives the peer). From any other peer the header is ignored,
// so a client cannot pick the address it is limited by.
func (h *Handler) clientAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	peer := peerAddr(ctx)
	if !h.clientIP.Enabled() || !h.clientIP.Trusted(peer) {
		return peer
	}
	var values []string
	for _, v := range ctx.Request.Header.PeekAll(h.clientIP.Header().String()) {
		values = append(values, string(v))
	}
	return h.clientIP.ClientAddr(peer, values)
}

// peerAddr is the TCP peer's address.
func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}
