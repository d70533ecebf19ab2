package api_test

// Issue 16 item 6 ("Accounts"): atomic login throttle, throttled registration on its own
// hashing slots, logout by Bearer, log out everywhere, production refusals.

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/pkg/config"
)

// concurrently runs n requests at once (released together) and returns their answers.
func concurrently(n int, do func(i int) response) []response {
	out := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = do(i)
		}()
	}
	close(start)
	wg.Wait()
	return out
}

func statusCounts(t *testing.T, rs []response) map[int]int {
	t.Helper()
	m := map[int]int{}
	for _, r := range rs {
		m[r.status]++
		if r.status == http.StatusTooManyRequests {
			r.requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
			require.NotEmpty(t, r.header.Get("Retry-After"))
		}
	}
	return m
}

// The login throttle's check and count are one atomic step: N concurrent wrong guesses
// get exactly the free failures (plus the one that locks) evaluated, not N; and once
// the lock expires, N concurrent guesses get exactly one.
func TestLoginThrottleIsAtomicUnderConcurrency(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_LOGIN_ACCOUNT_FREE_FAILURES", "3", "API_LOGIN_IP_FREE_FAILURES", "1000",
		"API_LOGIN_BACKOFF_BASE", "4s", "API_LOGIN_BACKOFF_MAX", "60s", "API_TRUSTED_PROXIES", "127.0.0.1/32",
		"API_HASH_CONCURRENCY", "16"))
	c := b.client()
	victim := c.register("Victim", "atomic-victim@example.com", "right-password")
	guess := func(i int) response {
		return b.client().do("POST", "/auth/login", map[string]string{"email": victim.email, "password": "wrong-" + strconv.Itoa(i)},
			"X-Forwarded-For", "198.51.100."+strconv.Itoa(i%250+1))
	}
	const n = 12
	got := statusCounts(t, concurrently(n, guess))
	require.Equal(t, map[int]int{http.StatusUnauthorized: 4, http.StatusTooManyRequests: n - 4}, got,
		"3 free failures and the one that locks are evaluated; the rest see the lock")

	b.clock.Advance(4 * time.Second) // the lock has expired: one guess, then 8 s
	got = statusCounts(t, concurrently(n, guess))
	require.Equal(t, map[int]int{http.StatusUnauthorized: 1, http.StatusTooManyRequests: n - 1}, got,
		"after a lock, exactly one guess per unlocked moment")

	b.clock.Advance(8 * time.Second)
	requireSession(t, c.do("POST", "/auth/login", map[string]string{"email": victim.email, "password": victim.password}),
		http.StatusOK, victim.name, victim.email)
	require.Equal(t, float64(2*n-5), b.counter("pulseboard_api_login_throttled_total", map[string]string{"scope": "account"}))
}

// A successful login (and a failure that is not a wrong password) does not count against
// the client address: only wrong guesses do.
func TestSuccessfulLoginsDoNotCountAgainstTheAddress(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_LOGIN_IP_FREE_FAILURES", "2"))
	c := b.client()
	a := c.register("Often", "often@example.com", "right-password")
	for range 6 {
		require.Equal(t, http.StatusOK, c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}).status)
	}
	for range 3 {
		c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": "wrong"}).requireCode(t, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	}
	c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}).requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
}

// Registration is limited per client address and for all clients together (fixed
// windows), with 429, Retry-After and the api's error JSON; the window's end lifts it.
func TestRegisterThrottledPerAddressAndGlobally(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_REGISTER_IP_LIMIT", "2", "API_REGISTER_GLOBAL_LIMIT", "3", "API_REGISTER_WINDOW", "1m",
		"API_TRUSTED_PROXIES", "127.0.0.1/32"))
	c := b.client()
	reg := func(ip string) response {
		return c.do("POST", "/auth/register", map[string]string{"name": "Someone", "email": "r-" + uuid.NewString()[:8] + "@example.com", "password": "password-1"},
			"X-Forwarded-For", ip)
	}
	const a, bb = "203.0.113.1", "2001:db8:7::1"
	require.Equal(t, http.StatusCreated, reg(a).status)
	require.Equal(t, http.StatusCreated, reg(a).status)
	r := reg(a)
	r.requireError(t, http.StatusTooManyRequests, "RATE_LIMITED", "Too many registrations; retry after the Retry-After delay")
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	require.NoError(t, err)
	require.True(t, ra >= 1 && ra <= 60, "Retry-After %d within the window", ra)
	require.Equal(t, http.StatusCreated, reg(bb).status, "another address has its own budget")
	reg(bb).requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED") // the global limit (3) is reached
	reg("198.51.100.9").requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.Equal(t, 1.0, b.counter("pulseboard_api_register_throttled_total", map[string]string{"scope": "ip"}))
	require.Equal(t, 2.0, b.counter("pulseboard_api_register_throttled_total", map[string]string{"scope": "global"}))
	require.Equal(t, 3, b.count(`SELECT count(*) FROM users`))

	b.clock.Advance(time.Minute)
	require.Equal(t, http.StatusCreated, reg(a).status, "a new window")
}

// The report: one client with 12 threads registering made 12 of 13 real logins
// fail with 503. Registrations now hash on slots of their own, so logins during a
// registration flood all succeed.
func TestRegisterFloodDoesNotStarveLogins(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_BCRYPT_COST", "8", "API_HASH_CONCURRENCY", "1", "API_REGISTER_HASH_CONCURRENCY", "1", "API_HASH_WAIT", "2s"))
	c := b.client()
	a := c.register("Real User", "real.user@example.com", "password-1")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	flood := map[int]int{}
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fc := b.client()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := fc.do("POST", "/auth/register", map[string]string{"name": "Flood", "email": "f-" + uuid.NewString()[:12] + "@example.com", "password": "password-1"})
				mu.Lock()
				flood[r.status]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // the flood is under way
	var logins []int
	for range 13 {
		logins = append(logins, b.client().do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}).status)
	}
	close(stop)
	wg.Wait()
	for i, s := range logins {
		require.Equal(t, http.StatusOK, s, "login %d during the flood: %v (flood answers %v)", i, logins, flood)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Positive(t, flood[http.StatusCreated], "the flood did register: %v", flood)
	for s := range flood {
		require.Contains(t, []int{http.StatusCreated, http.StatusServiceUnavailable}, s, "flood answers %v", flood)
	}
}

// POST /auth/logout with only a Bearer access token revokes that token's session: the
// token stops working and the session's refresh cookie no longer refreshes. Another
// session is untouched, and a token that does not verify still gets `true`.
func TestLogoutByBearerRevokesThatSession(t *testing.T) {
	t.Parallel()
	b := setup(t)
	laptop := b.client()
	a := laptop.register("Bearer Only", "bearer.only@example.com", "password-1")
	phone := b.client()
	phone.token = phone.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}).data(t)["accessToken"].(string)

	bearerOnly := b.client() // no cookie jar content: just the access token
	bearerOnly.token = laptop.token
	r := bearerOnly.do("POST", "/auth/logout", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "true", string(r.body))

	laptop.do("GET", "/me", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
	laptop.token = ""
	laptop.do("POST", "/auth/refresh", nil).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	require.Equal(t, http.StatusOK, phone.do("GET", "/me", nil).status, "another session is untouched")
	require.Equal(t, http.StatusOK, phone.do("POST", "/auth/refresh", nil).status)

	garbage := b.client()
	garbage.token = "not-a-token"
	r = garbage.do("POST", "/auth/logout", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "true", string(r.body))
}

// closingLive is a LiveStreams that can close one user's streams (like the live Hub).
type closingLive struct {
	*fakeLive
	mu     sync.Mutex
	closed []uuid.UUID
}

func (l *closingLive) CloseUser(id uuid.UUID) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = append(l.closed, id)
	return 1
}

var _ api.UserStreams = (*closingLive)(nil)

// POST /auth/logout-all revokes every session of the caller (access tokens and refresh
// cookies of all devices), clears the cookie, closes the caller's live streams, and
// leaves other users alone; signing in again works.
func TestLogoutAllRevokesEverySessionAndClosesStreams(t *testing.T) {
	t.Parallel()
	lv := &closingLive{fakeLive: newFakeLive()}
	b := setup(t, withLive(lv))
	laptop := b.client()
	a := laptop.register("Everywhere", "everywhere@example.com", "password-1")
	phone := b.client()
	phone.token = phone.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}).data(t)["accessToken"].(string)
	other, _ := b.newUser("Bystander")

	b.client().do("POST", "/auth/logout-all", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")

	r := laptop.do("POST", "/auth/logout-all", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, "true", string(r.body))
	require.Contains(t, r.header.Get("Set-Cookie"), "refreshToken=; Max-Age=0")

	for _, c := range []*client{laptop, phone} {
		c.do("GET", "/me", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
		c.token = ""
	}
	phone.do("POST", "/auth/refresh", nil).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	require.Zero(t, b.count(`SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL`, uuid.MustParse(a.id)))
	require.Equal(t, http.StatusOK, other.do("GET", "/me", nil).status, "other users are untouched")
	lv.mu.Lock()
	require.Equal(t, []uuid.UUID{uuid.MustParse(a.id)}, lv.closed)
	lv.mu.Unlock()

	requireSession(t, laptop.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}), http.StatusOK, a.name, a.email)
}

// Production refuses low-entropy JWT secrets (not only short ones) and localhost
// origins, which the api always allows with credentials.
func TestProductionRefusesWeakSecretsAndLocalhostOrigins(t *testing.T) {
	t.Parallel()
	validate := func(secret, origins string) error {
		cfg, err := config.Parse[api.Config](config.Env{"PULSEBOARD_ENV": "production", "JWT_ACCESS_SECRET": secret, "CORS_ORIGIN": origins, "API_PUBLIC_URL": "https://api.example.com"})
		require.NoError(t, err)
		return cfg.Validate()
	}
	good := "kq3Zt9vB1xR-pL7mW2sYc8Hn4Fj6Dg0aE5uTiOoQbNw" // 43 bytes of base64url
	require.NoError(t, validate(good, "https://app.example.com,https://dash.example.com:8443"))
	require.NoError(t, validate(testSecret, "https://app.example.com"))
	for _, weak := range []string{
		strings.Repeat("a", 32), strings.Repeat("ab", 32), strings.Repeat("password", 6), strings.Repeat("0123", 12),
	} {
		require.ErrorContains(t, validate(weak, "https://app.example.com"), "JWT_ACCESS_SECRET looks low-entropy", weak)
	}
	require.ErrorContains(t, validate("short", "https://app.example.com"), "at least 32 bytes")
	for _, o := range []string{
		"http://localhost:3001", "https://LOCALHOST", "http://dash.localhost:8080", "http://127.0.0.1:3001",
		"http://127.1.2.3", "http://[::1]:3001", "http://0.0.0.0:3001",
	} {
		require.ErrorContains(t, validate(good, "https://app.example.com,"+o), fmt.Sprintf("CORS_ORIGIN: %q is a localhost origin", o), o)
	}
	// The verification link's base: the localhost default is refused in production.
	for _, u := range []string{"", "http://localhost:3000", "http://127.0.0.1:3000/base"} {
		cfg, err := config.Parse[api.Config](config.Env{"PULSEBOARD_ENV": "production", "JWT_ACCESS_SECRET": good, "CORS_ORIGIN": "https://app.example.com", "API_PUBLIC_URL": u})
		require.NoError(t, err)
		require.ErrorContains(t, cfg.Validate(), "API_PUBLIC_URL", u)
	}
	// Development keeps its defaults (a localhost dashboard, a random secret).
	cfg, err := config.Parse[api.Config](config.Env{"JWT_ACCESS_SECRET": strings.Repeat("a", 32)})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.True(t, api.HighEntropySecret(good))
	require.False(t, api.HighEntropySecret(strings.Repeat("a", 64)))
}
