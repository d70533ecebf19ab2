package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// One public origin in the all-in-one (issue 17 item 2): SDKs pointed at the api's
// origin, as they were at the old backend's, must lose nothing. Unless API_INGEST_URL
// says otherwise, the api forwards the ingest routes (/ingest, /ingest/batch,
// /analytics/…) to this process's own ingest listener over loopback, and the ingestor
// trusts exactly that address (added to INGEST_TRUSTED_PROXIES) to report the client,
// so its unknown-key guard keys on the client the api saw rather than on the api. The
// price: a local process that connects to the ingest port from that address may name
// its own client address in X-Forwarded-For.
type oneOrigin struct {
	dial netip.Addr // the address the api dials and the ingestor trusts; invalid: off
}

// planOneOrigin decides, before the ingestor is built, whether the api forwards to it,
// and if so adds the address it will dial from to the ingestor's trusted proxies.
func planOneOrigin(cfg *allConfig) oneOrigin {
	if cfg.API.IngestURL != "" {
		return oneOrigin{} // forwarded elsewhere, as configured
	}
	a := loopbackFor(cfg.Ingestor.Host)
	trusted := strings.TrimSpace(cfg.Ingestor.TrustedProxies)
	if trusted != "" {
		trusted += ","
	}
	cfg.Ingestor.TrustedProxies = trusted + a.String()
	return oneOrigin{dial: a}
}

// loopbackFor is the address that reaches an ingest listener bound to host from this
// machine, which is also the source address of such a connection: loopback for the
// unspecified address (the default, 0.0.0.0) or a name that does not resolve, else the
// host's own address.
func loopbackFor(host string) netip.Addr {
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil && host != "" && host != "localhost" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		addrs, lerr := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		cancel()
		if lerr == nil && len(addrs) > 0 {
			a, err = addrs[0], nil
		}
	}
	switch {
	case err != nil:
		return netip.MustParseAddr("127.0.0.1")
	case a.Unmap().IsUnspecified() && a.Is6() && !a.Is4In6():
		return netip.IPv6Loopback()
	case a.Unmap().IsUnspecified():
		return netip.MustParseAddr("127.0.0.1")
	}
	return a.Unmap().WithZone("")
}

// apply points the api at the ingest listener, once it is bound (its port may be 0).
func (o oneOrigin) apply(cfg *allConfig, ingest net.Addr, logger *slog.Logger) {
	if !o.dial.IsValid() {
		return
	}
	ta, _ := ingest.(*net.TCPAddr)
	if ta == nil {
		return
	}
	if bound, ok := netip.AddrFromSlice(ta.IP); ok && !bound.Unmap().IsUnspecified() && bound.Unmap() != o.dial {
		logger.Warn("the ingest listener is bound to another address than the api forwards from: its unknown-key guard will see the api, not the client; set INGEST_HOST to an address",
			"bound", bound.String(), "api_dials", o.dial.String())
	}
	cfg.API.IngestURL = "http://" + net.JoinHostPort(o.dial.String(), strconv.Itoa(ta.Port))
}
