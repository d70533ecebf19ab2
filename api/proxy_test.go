package api_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv/nginx"
)

// Issue 16 item 5 through a real reverse proxy: the api behind nginx, which appends the
// address each request came from to X-Forwarded-For, with nginx's address trusted
// (API_TRUSTED_PROXIES=127.0.0.1). The login and register throttles key on the client
// nginx saw, not on nginx itself: one client guessing passwords (rotating a spoofed
// X-Forwarded-For of its own) is locked out, while other clients through the same proxy
// log in and register; and an attacker connecting directly cannot choose its address.
func TestThrottlesKeyOnClientsBehindNginx(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv(
		"API_TRUSTED_PROXIES", "127.0.0.1",
		"API_LOGIN_IP_FREE_FAILURES", "3",
		"API_REGISTER_IP_LIMIT", "2",
	))
	proxy := nginx.Start(t, nginx.Options{Upstream: strings.TrimPrefix(b.base, "http://")})
	attacker, user := b.via(proxy.URL, "127.0.0.2"), b.via(proxy.URL, "127.0.0.3")
	a := user.register("Someone", "someone@example.com", "right-password")

	// Four wrong guesses from the attacker, each claiming another address: the spoofed
	// entries are left of nginx's own and are not believed.
	for i := range 4 {
		attacker.do("POST", "/auth/login", map[string]string{"email": "guess" + strconv.Itoa(i) + "@example.com", "password": "x"},
			"X-Forwarded-For", "198.51.100."+strconv.Itoa(i+1)).requireCode(t, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	}
	r := attacker.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}, "X-Forwarded-For", "192.0.2.9")
	r.requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.NotEmpty(t, r.header.Get("Retry-After"))
	// Another client through the same proxy is not affected.
	require.Equal(t, http.StatusOK, user.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}).status)
	require.Equal(t, 1.0, b.counter("pulseboard_api_login_throttled_total", map[string]string{"scope": "ip"}))

	// Register: two accounts per address (the user already made one), the third refused
	// for that address only.
	register := func(c *client, email string, xff ...string) response {
		return c.do("POST", "/auth/register", map[string]string{"name": "Nobody", "email": email, "password": "a-long-password"}, xff...)
	}
	for _, email := range []string{"a1@example.com", "a2@example.com"} {
		r := register(attacker, email)
		require.Equal(t, http.StatusCreated, r.status, "%s: %s", email, r.body)
	}
	register(attacker, "a3@example.com", "X-Forwarded-For", "198.51.100.77").requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
	r = register(user, "u2@example.com")
	require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	require.Empty(t, proxy.ErrorLog(), "nginx reported errors")
}
