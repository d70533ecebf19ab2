package intake

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/clientip"
)

// knownFuzzKeys is fuzzKeys whose cache has seen fuzzKeyA resolve; fuzzKeyB is valid but
// cold (not resolved recently).
type knownFuzzKeys struct{ fuzzKeys }

func (knownFuzzKeys) Known(key string) bool { return key == fuzzKeyA }

const badKey = "pb_live_notAKeyOfAnyProject0000000000"

type guardReq struct {
	peer   string
	xff    []string // X-Forwarded-For lines
	route  string   // "/ingest" or "/ingest/batch"
	header string   // X-API-Key (batch)
	body   string
}

func guardHandler(t *testing.T, burst int) *Handler {
	t.Helper()
	h := New(fuzzLimits, knownFuzzKeys{}, &fuzzProducer{}, ratelimit.New(0, fuzzLimits.MaxBatchEvents), slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	h.now = func() time.Time { return fuzzNow }
	h.SetKeyGuard(ratelimit.NewKeyGuard(0.001, burst))
	return h
}

func serveGuard(h *Handler, r guardReq) int {
	return serveGuardCtx(h, r).Response.StatusCode()
}

func single(key string) string {
	return `{"apiKey":"` + key + `","type":"event","name":"page_view","payload":{}}`
}

// The guard's rule (B34, issue 16 item 5): once an address used up its unknown-key
// attempts, keys that are not known valid are refused with 429 before any lookup, on every
// route, while a key that resolved recently keeps working from that address; other
// addresses are untouched.
func TestGuardRefusesOnlyKeysNotKnownValid(t *testing.T) {
	t.Parallel()
	h := guardHandler(t, 3)
	const attacker, neighbour = "192.0.2.1", "192.0.2.2"
	for i := range 3 {
		if got := serveGuard(h, guardReq{peer: attacker, body: single(badKey)}); got != fasthttp.StatusUnauthorized {
			t.Fatalf("bad key %d: %d, want 401", i, got)
		}
	}
	for _, tc := range []struct {
		name string
		r    guardReq
		want int
	}{
		{"bad key from the blocked address", guardReq{peer: attacker, body: single(badKey)}, fasthttp.StatusTooManyRequests},
		{"no key from the blocked address", guardReq{peer: attacker, body: `{"type":"event","name":"x"}`}, fasthttp.StatusTooManyRequests},
		{"known-valid key from the blocked address", guardReq{peer: attacker, body: single(fuzzKeyA)}, fasthttp.StatusAccepted},
		{"known-valid header key, batch", guardReq{peer: attacker, route: "/ingest/batch", header: fuzzKeyA, body: "[" + single(fuzzKeyA) + "]"}, fasthttp.StatusAccepted},
		{"known-valid event keys, batch", guardReq{peer: attacker, route: "/ingest/batch", body: "[" + single(fuzzKeyA) + "]"}, fasthttp.StatusAccepted},
		{"one bad event key refuses the batch", guardReq{peer: attacker, route: "/ingest/batch", body: "[" + single(fuzzKeyA) + "," + single(badKey) + "]"}, fasthttp.StatusTooManyRequests},
		{"bad header key, batch", guardReq{peer: attacker, route: "/ingest/batch", header: badKey, body: "[" + single(fuzzKeyA) + "]"}, fasthttp.StatusTooManyRequests},
		// The documented limit: a valid key this ingestor has not seen recently is not
		// looked up for a blocked address either (otherwise 2xx/429 would tell guesses apart).
		{"cold valid key from the blocked address", guardReq{peer: attacker, body: single(fuzzKeyB)}, fasthttp.StatusTooManyRequests},
		{"another address: bad key", guardReq{peer: neighbour, body: single(badKey)}, fasthttp.StatusUnauthorized},
		{"another address: cold valid key", guardReq{peer: neighbour, body: single(fuzzKeyB)}, fasthttp.StatusAccepted},
	} {
		if got := serveGuard(h, tc.r); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// Behind trusted proxies the guard keys on the client address they report; a header from
// any other peer is ignored, so rotating X-Forwarded-For does not evade the guard.
func TestGuardKeysOnTrustedClientAddress(t *testing.T) {
	t.Parallel()
	h := guardHandler(t, 2)
	trusted, err := clientip.ParseTrusted("10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	h.SetClientIP(clientip.New(trusted, clientip.XForwardedFor))
	const proxy = "10.0.0.1"
	bad := func(peer string, xff ...string) int {
		return serveGuard(h, guardReq{peer: peer, xff: xff, body: single(badKey)})
	}
	// One client behind the proxy, spoofing the left of the header: keyed on 192.0.2.9.
	for i, want := range []int{401, 401, 429, 429} {
		if got := bad(proxy, "198.51.100."+string(rune('1'+i))+", 192.0.2.9"); got != want {
			t.Fatalf("client behind the proxy, request %d: %d, want %d", i, got, want)
		}
	}
	// Another client behind the same proxy: its own budget, and its valid keys pass.
	if got := bad(proxy, "192.0.2.10"); got != 401 {
		t.Fatalf("other client behind the proxy: %d, want 401", got)
	}
	if got := serveGuard(h, guardReq{peer: proxy, xff: []string{"192.0.2.11"}, body: single(fuzzKeyB)}); got != 202 {
		t.Fatalf("valid key of a third client behind the proxy: %d, want 202", got)
	}
	// The blocked client's own known-valid key still passes.
	if got := serveGuard(h, guardReq{peer: "10.0.0.2", xff: []string{"192.0.2.9"}, body: single(fuzzKeyA)}); got != 202 {
		t.Fatalf("known-valid key of the blocked client: %d, want 202", got)
	}
	// An untrusted peer's header is ignored: rotating it gets two attempts, not more.
	for i, want := range []int{401, 401, 429, 429} {
		if got := bad("203.0.113.5", "192.0.2."+string(rune('a'+i))); got != want {
			t.Fatalf("untrusted peer rotating X-Forwarded-For, request %d: %d, want %d", i, got, want)
		}
	}
	// A malformed header from the proxy is the proxy's address.
	for i, want := range []int{401, 401, 429} {
		if got := bad(proxy, "not an address"); got != want {
			t.Fatalf("malformed header, request %d: %d, want %d", i, got, want)
		}
	}
	if got, want := peerOf(h, proxy, "192.0.2.1, 10.0.0.7"), netip.MustParseAddr("192.0.2.1"); got != want {
		t.Fatalf("clientAddr = %v, want %v", got, want)
	}
}

func peerOf(h *Handler, peer string, xff string) netip.Addr {
	var req fasthttp.Request
	req.Header.Set("X-Forwarded-For", xff)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP(peer), Port: 1}, nil)
	return h.clientAddr(&ctx)
}

// Issue 16 item 5, bad keys keyed on their prefix too: unknown keys sharing a prefix
// (fuzzKeyA's and fuzzKeyB's, "pb_live_fuzzProj"), each from a different client address
// so that no address runs out, empty the prefix's bucket; then keys with that prefix that
// are not known valid get 429 with Retry-After before any lookup, from any address and on
// every route, while the known-valid key with that prefix keeps being accepted and other
// prefixes are untouched. One warning names the prefix, never a whole key.
func TestGuardRefusesFloodedKeyPrefix(t *testing.T) {
	t.Parallel()
	const prefixBurst = 4
	h := guardHandler(t, 100)
	var logs bytes.Buffer
	h.logger = slog.New(slog.NewTextHandler(&logs, nil))
	h.SetPrefixGuard(ratelimit.NewPrefixGuard(0.001, prefixBurst))
	const prefix = "pb_live_fuzzProj"
	if ratelimit.KeyPrefix(fuzzKeyA) != prefix || ratelimit.KeyPrefix(fuzzKeyB) != prefix {
		t.Fatal("the fake resolver's keys no longer share a prefix")
	}
	bad := func(i int) string { return prefix + "ectZ" + strings.Repeat(strconv.Itoa(i%10), 17) }
	addr := func(i int) string { return "198.51.100." + strconv.Itoa(i+1) }
	for i := range prefixBurst {
		if got := serveGuard(h, guardReq{peer: addr(i), body: single(bad(i))}); got != fasthttp.StatusUnauthorized {
			t.Fatalf("unknown key %d with the prefix: %d, want 401", i, got)
		}
	}
	// The next unknown key with that prefix, from yet another address: refused before
	// lookup, with the guard's answer.
	ctx := serveGuardCtx(h, guardReq{peer: addr(prefixBurst), body: single(bad(prefixBurst))})
	if got := ctx.Response.StatusCode(); got != fasthttp.StatusTooManyRequests {
		t.Fatalf("unknown key with the flooded prefix from a fresh address: %d, want 429", got)
	}
	if ra, err := strconv.Atoi(string(ctx.Response.Header.Peek("Retry-After"))); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q, want a positive number of seconds", ctx.Response.Header.Peek("Retry-After"))
	}
	if body := string(ctx.Response.Body()); !strings.Contains(body, `"RATE_LIMITED"`) {
		t.Fatalf("body %s, want code RATE_LIMITED", body)
	}
	other := "pb_live_otherPfx" + strings.Repeat("0", 21)
	for _, tc := range []struct {
		name string
		r    guardReq
		want int
	}{
		{"unknown key with the prefix, another fresh address", guardReq{peer: "203.0.113.77", body: single(bad(7))}, fasthttp.StatusTooManyRequests},
		{"unknown header key with the prefix, batch", guardReq{peer: "203.0.113.78", route: "/ingest/batch", header: bad(8), body: "[" + single(fuzzKeyA) + "]"}, fasthttp.StatusTooManyRequests},
		{"unknown event key with the prefix, batch", guardReq{peer: "203.0.113.79", route: "/ingest/batch", body: "[" + single(fuzzKeyA) + "," + single(bad(9)) + "]"}, fasthttp.StatusTooManyRequests},
		{"known-valid key with the prefix", guardReq{peer: "203.0.113.80", body: single(fuzzKeyA)}, fasthttp.StatusAccepted},
		{"known-valid key with the prefix, from an address that flooded it", guardReq{peer: addr(0), body: single(fuzzKeyA)}, fasthttp.StatusAccepted},
		{"known-valid header key with the prefix, batch", guardReq{peer: "203.0.113.81", route: "/ingest/batch", header: fuzzKeyA, body: "[" + single(fuzzKeyA) + "]"}, fasthttp.StatusAccepted},
		{"known-valid event keys with the prefix, batch", guardReq{peer: "203.0.113.82", route: "/ingest/batch", body: "[" + single(fuzzKeyA) + "]"}, fasthttp.StatusAccepted},
		// The documented limit, as for a blocked address: a valid key with the flooded
		// prefix that this ingestor has not resolved recently is not looked up either.
		{"cold valid key with the prefix", guardReq{peer: "203.0.113.83", body: single(fuzzKeyB)}, fasthttp.StatusTooManyRequests},
		{"unknown key with another prefix", guardReq{peer: "203.0.113.84", body: single(other)}, fasthttp.StatusUnauthorized},
		{"unknown key with another prefix, again", guardReq{peer: "203.0.113.84", body: single(other)}, fasthttp.StatusUnauthorized},
		{"no key at all", guardReq{peer: "203.0.113.85", body: `{"type":"event","name":"x"}`}, fasthttp.StatusUnauthorized},
	} {
		if got := serveGuard(h, tc.r); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "sharing one prefix"); n != 1 {
		t.Fatalf("%d prefix warnings, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "key_prefix="+prefix) {
		t.Fatalf("the warning does not name the prefix:\n%s", out)
	}
	for i := range prefixBurst + 10 {
		if strings.Contains(out, bad(i)) {
			t.Fatalf("a whole key is logged:\n%s", out)
		}
	}
}

// serveGuardCtx is serveGuard returning the whole response.
func serveGuardCtx(h *Handler, r guardReq) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetMethod(fasthttp.MethodPost)
	if r.route == "" {
		r.route = "/ingest"
	}
	req.SetRequestURI(r.route)
	req.Header.SetContentType("application/json")
	if r.header != "" {
		req.Header.Set("X-API-Key", r.header)
	}
	for _, v := range r.xff {
		req.Header.Add("X-Forwarded-For", v)
	}
	req.SetBodyString(r.body)
	ctx := new(fasthttp.RequestCtx)
	ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP(r.peer), Port: 40000}, nil)
	h.ServeFastHTTP(ctx)
	return ctx
}
