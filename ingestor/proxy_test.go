package ingestor_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/testenv/nginx"
)

// clientFrom is an HTTP client whose connections come from the loopback address ip.
func clientFrom(ip string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)},
	}).DialContext}}
}

// postFrom posts a single event with key to base+"/ingest" from c, with an optional
// X-Forwarded-For, and returns the status.
func postFrom(t *testing.T, c *http.Client, base, key, xff string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, base+"/ingest", bytes.NewReader(mustJSON(t, validEvent(key))))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// reverseProxy starts a real nginx (pkg/testenv/nginx) on 127.0.0.1 in front of target,
// configured as production configs are: it appends the address it received each request
// from to X-Forwarded-For ($proxy_add_x_forwarded_for) and reaches target from 127.0.0.1.
func reverseProxy(t *testing.T, target string) string {
	t.Helper()
	return nginx.Start(t, nginx.Options{Upstream: strings.TrimPrefix(target, "http://")}).URL
}

func badKey(t *testing.T) string {
	t.Helper()
	k, err := apikey.Generate()
	require.NoError(t, err)
	return k
}

// Issue 16 item 5 through a real reverse proxy: with the proxy trusted
// (INGEST_TRUSTED_PROXIES=127.0.0.1/32), a client flooding bad keys, each request with a
// different spoofed X-Forwarded-For, is limited by its own address (the proxy appends the
// real one, and the right-most untrusted entry is what counts), and a valid key sent
// through the same proxy from another client is never refused; nor is a valid key in use
// sent from the flooding client's own address.
func TestUnknownKeyGuardBehindTrustedProxy(t *testing.T) {
	t.Parallel()
	const burst = 5
	b := setup(t, withConfig(func(c *ingestor.Config) {
		c.UnknownKeyRate, c.UnknownKeyBurst, c.TrustedProxies = 0.01, burst, "127.0.0.1/32"
	}))
	proxy := reverseProxy(t, b.url)
	attacker, victim := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")

	unauthorized, limited := 0, 0
	for i := range 100 {
		switch got := postFrom(t, attacker, proxy, badKey(t), "198.51.100."+strconv.Itoa(i%250+1)); got {
		case http.StatusUnauthorized:
			unauthorized++
		case http.StatusTooManyRequests:
			limited++
		default:
			t.Fatalf("bad key %d: status %d", i, got)
		}
		if i%10 == 9 {
			// Interleaved: the victim's valid key through the same proxy.
			require.Equal(t, http.StatusAccepted, postFrom(t, victim, proxy, b.project.APIKey, ""), "valid key after %d bad ones", i+1)
		}
	}
	require.Equal(t, burst, unauthorized, "spoofed X-Forwarded-For entries must not buy more attempts")
	require.Equal(t, 100-burst, limited)

	// A second victim, whose key was never used: still accepted from its own address.
	cold := b.newProject(t, "cold").APIKey
	require.Equal(t, http.StatusAccepted, postFrom(t, clientFrom("127.0.0.4"), proxy, cold, ""))
	// From the flooding client's own address: the key in use passes, guesses do not.
	require.Equal(t, http.StatusAccepted, postFrom(t, attacker, proxy, b.project.APIKey, ""))
	require.Equal(t, http.StatusTooManyRequests, postFrom(t, attacker, proxy, badKey(t), ""))
	// The proxy's own address was never charged: a client connecting directly from it
	// (127.0.0.1, trusted, no header) still has its attempts.
	require.Equal(t, http.StatusUnauthorized, postFrom(t, clientFrom("127.0.0.1"), b.url, badKey(t), ""))
	// A peer that is not a trusted proxy cannot choose its address with the header.
	direct := clientFrom("127.0.0.5")
	for i := range burst {
		require.Equal(t, http.StatusUnauthorized, postFrom(t, direct, b.url, badKey(t), "192.0.2."+strconv.Itoa(i+1)))
	}
	require.Equal(t, http.StatusTooManyRequests, postFrom(t, direct, b.url, badKey(t), "192.0.2.99"))
}

// Without INGEST_TRUSTED_PROXIES (the default) X-Forwarded-For is ignored: a client sending
// it directly cannot rotate it to evade the guard, and behind an untrusted proxy everyone
// shares the proxy's address, yet a valid key in use still passes while the address is
// blocked.
func TestUnknownKeyGuardIgnoresForwardedForByDefault(t *testing.T) {
	t.Parallel()
	const burst = 5
	b := setup(t, withConfig(func(c *ingestor.Config) { c.UnknownKeyRate, c.UnknownKeyBurst = 0.01, burst }))
	require.Empty(t, b.cfg.TrustedProxies)
	victim := clientFrom("127.0.0.3")
	proxy := reverseProxy(t, b.url)
	require.Equal(t, http.StatusAccepted, postFrom(t, victim, proxy, b.project.APIKey, ""))

	attacker := clientFrom("127.0.0.1")
	for i := range burst {
		require.Equal(t, http.StatusUnauthorized, postFrom(t, attacker, b.url, badKey(t), "192.0.2."+strconv.Itoa(i+1)), "attempt %d", i)
	}
	for i := range 20 {
		require.Equal(t, http.StatusTooManyRequests, postFrom(t, attacker, b.url, badKey(t), "198.51.100."+strconv.Itoa(i+1)), "rotated X-Forwarded-For %d", i)
	}
	// The proxy reaches the ingestor from 127.0.0.1, the blocked address: the victim's
	// valid key in use passes anyway, a guess does not.
	for range 5 {
		require.Equal(t, http.StatusAccepted, postFrom(t, victim, proxy, b.project.APIKey, ""))
	}
	require.Equal(t, http.StatusTooManyRequests, postFrom(t, victim, proxy, badKey(t), ""))
}

// A malformed proxy list or header name is a configuration error, not "trust no one".
func TestTrustedProxyConfigIsValidated(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse[ingestor.Config](config.Env{})
	require.NoError(t, err)
	cfg.Kafka.Brokers = []string{"127.0.0.1:9092"}
	require.NoError(t, cfg.Validate())
	for _, tc := range []struct{ proxies, header, want string }{
		{"10.0.0.0/33", "X-Forwarded-For", "INGEST_TRUSTED_PROXIES"},
		{"proxy.internal", "X-Forwarded-For", "INGEST_TRUSTED_PROXIES"},
		{"10.0.0.0/8", "X-Real-IP", "INGEST_CLIENT_IP_HEADER"},
	} {
		c := cfg
		c.TrustedProxies, c.ClientIPHeader = tc.proxies, tc.header
		err := c.Validate()
		require.Error(t, err, "%+v", tc)
		require.Contains(t, err.Error(), tc.want)
	}
	c := cfg
	c.TrustedProxies, c.ClientIPHeader = "10.0.0.0/8, 192.0.2.1, ::1", "forwarded"
	require.NoError(t, c.Validate())
}
