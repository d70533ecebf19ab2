package api_test

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/pkg/config"
)

var (
	sessionBody = regexp.MustCompile(`^\{"success":true,"data":\{"accessToken":"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+","user":\{"id":"[0-9a-f-]{36}","name":"([^"]*)","email":"([^"]*)"\}\}\}$`)
	setCookie   = regexp.MustCompile(`^refreshToken=([A-Za-z0-9_-]{43}); Max-Age=604800; Path=/auth; HttpOnly; SameSite=Strict$`)
	clearCookie = "refreshToken=; Max-Age=0; Path=/auth; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Strict"
)

// requireSession checks a compat auth answer byte for byte (body shape and field order,
// headers, the exact cookie) and returns the refresh token.
func requireSession(t *testing.T, r response, status int, name, email string) string {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	m := sessionBody.FindSubmatch(r.body)
	require.NotNil(t, m, "body: %s", r.body)
	require.Equal(t, name, string(m[1]))
	require.Equal(t, email, string(m[2]))
	require.Equal(t, "application/json; charset=utf-8", r.header.Get("Content-Type"))
	require.Equal(t, "nosniff", r.header.Get("X-Content-Type-Options"))
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	cookies := r.header.Values("Set-Cookie")
	require.Len(t, cookies, 1)
	cm := setCookie.FindStringSubmatch(cookies[0])
	require.NotNil(t, cm, "Set-Cookie: %s", cookies[0])
	require.NotContains(t, string(r.body), cm[1], "the refresh token never appears in a body")
	return cm[1]
}

// An old-backend client (browser with a cookie jar) works unchanged: register 201, login
// 200, refresh rotates, logout answers `true` and clears the cookie (acceptance 1).
func TestCompatSessionLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()

	r := c.do("POST", "/auth/register", map[string]any{"name": "Ada Lovelace", "email": "  Ada@Example.COM ", "password": "analytical", "extra": "ignored"})
	rt1 := requireSession(t, r, http.StatusCreated, "Ada Lovelace", "ada@example.com")

	r = c.do("POST", "/auth/login", map[string]string{"email": "ada@example.com", "password": "analytical"})
	rt2 := requireSession(t, r, http.StatusOK, "Ada Lovelace", "ada@example.com")
	require.NotEqual(t, rt1, rt2)
	c.token = r.data(t)["accessToken"].(string)

	me := c.do("GET", "/me", nil)
	require.Equal(t, http.StatusOK, me.status, "body: %s", me.body)
	require.Regexp(t, `^\{"success":true,"data":\{"id":"[0-9a-f-]{36}","name":"Ada Lovelace","email":"ada@example.com","createdAt":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","emailVerified":false,"emailVerifiedAt":null\}\}$`, string(me.body))

	// The jar sends the cookie (Path=/auth); each refresh rotates it. {} is accepted.
	r = c.do("POST", "/auth/refresh", "{}", "Origin", dashboardOrigin)
	rt3 := requireSession(t, r, http.StatusOK, "Ada Lovelace", "ada@example.com")
	require.NotEqual(t, rt2, rt3)
	require.Equal(t, dashboardOrigin, r.header.Get("Access-Control-Allow-Origin"))
	require.Equal(t, "true", r.header.Get("Access-Control-Allow-Credentials"))
	r = c.do("POST", "/auth/refresh", nil)
	rt4 := requireSession(t, r, http.StatusOK, "Ada Lovelace", "ada@example.com")
	c.token = r.data(t)["accessToken"].(string)
	require.Equal(t, http.StatusOK, c.do("GET", "/me", nil).status, "the refreshed access token works")

	r = c.do("POST", "/auth/logout", nil, "Origin", dashboardOrigin)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "true", string(r.body))
	require.Equal(t, "application/json; charset=utf-8", r.header.Get("Content-Type"))
	require.Equal(t, []string{clearCookie}, r.header.Values("Set-Cookie"))

	// The jar dropped the cookie: no refresh token at all.
	c.do("POST", "/auth/refresh", nil).requireError(t, http.StatusUnauthorized, "NO_REFRESH_TOKEN", "No refresh token")
	// The session's family is revoked: the last token is dead too.
	c.do("POST", "/auth/refresh", nil, "Cookie", "refreshToken="+rt4).
		requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	// The first session (from register) is another family and still works.
	r = c.do("POST", "/auth/refresh", nil, "Cookie", "refreshToken="+rt1)
	requireSession(t, r, http.StatusOK, "Ada Lovelace", "ada@example.com")
	// Logging out without any cookie still answers true.
	r = b.client().do("POST", "/auth/logout", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "true", string(r.body))
}

func refreshWith(c *client, token string) response {
	c.t.Helper()
	return c.do("POST", "/auth/refresh", nil, "Cookie", "refreshToken="+token)
}

// B53: RT1 → RT2, RT1 again after the grace window → 401 and the family is revoked, so
// RT2 → 401 too. Another session of the same user is unaffected.
func TestRefreshReuseRevokesFamily(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	c.register("Reuse", "reuse@example.com", "password-1")
	other := b.client()
	r := other.do("POST", "/auth/login", map[string]string{"email": "reuse@example.com", "password": "password-1"})
	otherRT := requireSession(t, r, http.StatusOK, "Reuse", "reuse@example.com")

	r = c.do("POST", "/auth/login", map[string]string{"email": "reuse@example.com", "password": "password-1"})
	rt1 := requireSession(t, r, http.StatusOK, "Reuse", "reuse@example.com")
	rt2 := requireSession(t, refreshWith(c, rt1), http.StatusOK, "Reuse", "reuse@example.com")

	b.clock.Advance(11 * time.Second) // past the 10 s grace window
	refreshWith(c, rt1).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	refreshWith(c, rt2).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	require.Equal(t, 1.0, b.counter("pulseboard_api_refresh_reuse_detected_total", nil))
	require.Contains(t, b.logs.String(), "refresh token reuse detected")
	require.Equal(t, 2, b.count(`SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NOT NULL`))

	requireSession(t, refreshWith(other, otherRT), http.StatusOK, "Reuse", "reuse@example.com")
}

// The grace policy (issue 17 item 6): a rotated token presented again within 10 s (a
// tab that refreshed at the same moment as another) is answered with the very successor
// the first refresh got, following later rotations too, so no tab is logged out and the
// family keeps one current token; after the grace it is reuse, and revokes the family.
func TestRefreshWithinGraceAnswersTheCurrentSuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	c.register("Grace", "grace@example.com", "password-1")
	r := c.do("POST", "/auth/login", map[string]string{"email": "grace@example.com", "password": "password-1"})
	rt1 := requireSession(t, r, http.StatusOK, "Grace", "grace@example.com")
	rt2 := requireSession(t, refreshWith(c, rt1), http.StatusOK, "Grace", "grace@example.com")
	require.NotEqual(t, rt1, rt2)

	b.clock.Advance(4 * time.Second)
	require.Equal(t, rt2, requireSession(t, refreshWith(c, rt1), http.StatusOK, "Grace", "grace@example.com"),
		"within the grace the old token gets the same successor")
	rt3 := requireSession(t, refreshWith(c, rt2), http.StatusOK, "Grace", "grace@example.com")
	b.clock.Advance(5 * time.Second)
	require.Equal(t, rt3, requireSession(t, refreshWith(c, rt1), http.StatusOK, "Grace", "grace@example.com"),
		"a chain of rotations within the grace is followed to the current token")
	require.Equal(t, 1, b.count(`SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NULL AND revoked_at IS NULL
		AND family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8')))`, rt1),
		"one current token in the family")
	require.Equal(t, 0.0, b.counter("pulseboard_api_refresh_reuse_detected_total", nil))

	// After the grace the old token is reuse: 401 and the family revoked.
	b.clock.Advance(2 * time.Second)
	r = refreshWith(c, rt1)
	r.requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	require.Empty(t, r.header.Values("Set-Cookie"), "a refused refresh never touches the cookie")
	refreshWith(c, rt3).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	require.Equal(t, 1.0, b.counter("pulseboard_api_refresh_reuse_detected_total", nil))
}

// B54 and issue 17 item 6: the same token from several tabs at once: every tab succeeds
// and gets the same successor, so the family never has two diverging valid tokens, and
// the successor works. Repeated, so that the requests really overlap in the database.
func TestConcurrentRefreshesAllGetTheOneSuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	c.register("Tabs", "tabs@example.com", "password-1")
	const rounds, tabs = 5, 8
	clients := make([]*client, tabs)
	for i := range clients {
		clients[i] = b.client()
	}
	for range rounds {
		r := c.do("POST", "/auth/login", map[string]string{"email": "tabs@example.com", "password": "password-1"})
		rt1 := requireSession(t, r, http.StatusOK, "Tabs", "tabs@example.com")
		results := make([]response, tabs)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range tabs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i] = refreshWith(clients[i], rt1)
			}()
		}
		close(start)
		wg.Wait()
		successors := map[string]bool{}
		for _, r := range results {
			successors[requireSession(t, r, http.StatusOK, "Tabs", "tabs@example.com")] = true
		}
		require.Len(t, successors, 1, "every tab gets the same successor")
		require.Equal(t, 1, b.count(`SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NULL AND revoked_at IS NULL
			AND family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8')))`, rt1),
			"one current token in the family")
		for rt := range successors {
			requireSession(t, refreshWith(c, rt), http.StatusOK, "Tabs", "tabs@example.com")
		}
	}
	require.Equal(t, 0.0, b.counter("pulseboard_api_refresh_reuse_detected_total", nil))
}

// forge signs claims with the api's secret (or another) and method.
func forge(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	require.NoError(t, err)
	return s
}

// B43–B50, J1–J5: every access token that must not be trusted is a 401, and tokens of
// one kind are never accepted as the other (acceptance 2).
func TestAccessTokenAttacksAre401(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	a := c.register("Mallory Target", "target@example.com", "password-1")
	good := c.token
	rt := requireSession(t, c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}), http.StatusOK, a.name, a.email)
	now := time.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims { return accessClaims(a, now, mod) }
	secret := []byte(testSecret)
	require.Equal(t, http.StatusOK, c.do("GET", "/me", nil, "Authorization", "", "Authorization", "Bearer "+forge(t, jwt.SigningMethodHS256, secret, claims(nil))).status,
		"the forging helper itself makes valid tokens")

	tampered := []byte(good)
	tampered[len(tampered)-5] ^= 1
	if tampered[len(tampered)-5] == good[len(good)-5] {
		tampered[len(tampered)-5] = 'A'
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	require.NoError(t, err)
	cases := map[string][]string{
		"expired": {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) {
			m["exp"] = now.Add(-time.Hour).Unix()
			m["iat"] = now.Add(-2 * time.Hour).Unix()
		}))},
		"no exp":         {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { delete(m, "exp") }))},
		"tampered":       {"Authorization", "Bearer " + string(tampered)},
		"alg none":       {"Authorization", "Bearer " + none},
		"HS512":          {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS512, secret, claims(nil))},
		"wrong secret":   {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 40)), claims(nil))},
		"wrong aud":      {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { m["aud"] = "pulseboard-refresh" }))},
		"no aud":         {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { delete(m, "aud") }))},
		"wrong iss":      {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { m["iss"] = "evil" }))},
		"unknown user":   {"Authorization", "Bearer " + forge(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { m["sub"] = uuid.NewString() }))},
		"refresh token":  {"Authorization", "Bearer " + rt},
		"ingest API key": {"Authorization", "Bearer pb_live_0123456789ABCDEFGHIJKLMNOPQRSTUV"}, // B66
		"basic":          {"Authorization", "Basic dXNlcjpwYXNz"},
		"two headers":    {"Authorization", "Bearer " + good, "Authorization", "Bearer " + good},
		"empty bearer":   {"Authorization", "Bearer "},
		"none at all":    {},
	}
	for name, hdrs := range cases {
		r := c.do("GET", "/me", nil, append([]string{"Authorization", ""}, hdrs...)...)
		r.requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
		_ = name
	}
	// A 1 MB bearer token is refused by the header cap before any parsing (B50).
	r := c.do("GET", "/me", nil, "Authorization", "", "Authorization", "Bearer "+strings.Repeat(".", 1<<20))
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, r.status)

	// An access token as the refresh cookie is refused, and rotates nothing.
	refreshWith(c, good).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	refreshWith(c, strings.Repeat("A", 43)).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	flipped := []byte(rt) // one character changed: still base64url, another token
	if flipped[0] == 'A' {
		flipped[0] = 'B'
	} else {
		flipped[0] = 'A'
	}
	refreshWith(c, string(flipped)).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	requireSession(t, refreshWith(c, rt), http.StatusOK, a.name, a.email)

	// Logout everywhere (tokens_valid_after): tokens issued before it are refused.
	require.Equal(t, http.StatusOK, c.do("GET", "/me", nil).status)
	_, err = b.pool.Exec(context.Background(), `UPDATE users SET tokens_valid_after = now() + interval '2 seconds' WHERE id = $1`, a.id)
	require.NoError(t, err)
	c.do("GET", "/me", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
}

// B60 and X6: password lengths; more than 72 bytes is a 400, never truncated.
func TestPasswordLengthRules(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	reg := func(email, pw string) response {
		return c.do("POST", "/auth/register", map[string]string{"name": "Pw", "email": email, "password": pw})
	}
	reg("seven@example.com", "1234567").requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", "body/password must NOT have fewer than 8 characters")
	require.Equal(t, http.StatusCreated, reg("sixtyfour@example.com", strings.Repeat("p", 64)).status)
	require.Equal(t, http.StatusCreated, reg("seventytwo@example.com", strings.Repeat("p", 72)).status)
	tooLong := "body/password must NOT be longer than 72 bytes"
	reg("seventythree@example.com", strings.Repeat("p", 73)).requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", tooLong)
	// 37 characters, 74 bytes: the limit is bcrypt's, in bytes.
	reg("accents@example.com", strings.Repeat("é", 37)).requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", tooLong)
	reg("tenkb@example.com", strings.Repeat("p", 10<<10)).requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", tooLong)
	require.Equal(t, 2, b.count(`SELECT count(*) FROM users`))

	// Never truncated: the 72-byte password plus anything is not the same password.
	c.do("POST", "/auth/login", map[string]string{"email": "seventytwo@example.com", "password": strings.Repeat("p", 73)}).
		requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", tooLong)
	r := c.do("POST", "/auth/login", map[string]string{"email": "seventytwo@example.com", "password": strings.Repeat("p", 72)})
	requireSession(t, r, http.StatusOK, "Pw", "seventytwo@example.com")
}

// B62 and the register validation messages: e-mails are one account whatever their
// case or surrounding spaces; Unicode look-alikes are refused, not a second account.
func TestRegisterValidationAndEmailVariants(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	reg := func(body any) response { return c.do("POST", "/auth/register", body) }
	reg(map[string]any{"email": "x@example.com", "password": "password"}).requireError(t, 400, "VALIDATION_FAILED", "body must have required property 'name'")
	reg(map[string]any{"name": "X", "email": "x@example.com", "password": "password"}).requireError(t, 400, "VALIDATION_FAILED", "body/name must NOT have fewer than 2 characters")
	reg(map[string]any{"name": 42, "email": "x@example.com", "password": "password"}).requireError(t, 400, "VALIDATION_FAILED", "body/name must be string")
	reg(map[string]any{"name": "Xy", "email": "not-an-email", "password": "password"}).requireError(t, 400, "VALIDATION_FAILED", `body/email must match format "email"`)
	reg(map[string]any{"name": "Xy", "email": "x@example.com"}).requireError(t, 400, "VALIDATION_FAILED", "body must have required property 'password'")
	reg(`["not","an","object"]`).requireError(t, 400, "VALIDATION_FAILED", "body must be object")

	require.Equal(t, http.StatusCreated, reg(map[string]any{"name": "Kate", "email": " Kate.Smith@Example.COM ", "password": "password"}).status)
	for _, variant := range []string{"kate.smith@example.com", "KATE.SMITH@EXAMPLE.COM", "\tkate.smith@example.com\n", "\u212Aate.smith@example.com" /* Kelvin sign lower-cases to k */} {
		reg(map[string]any{"name": "Kate", "email": variant, "password": "password"}).requireError(t, http.StatusConflict, "EMAIL_TAKEN", "Email already registered")
	}
	for _, lookalike := range []string{"ｋate.smith@example.com", "kate.smith@exаmple.com" /* Cyrillic а */} {
		reg(map[string]any{"name": "Kate", "email": lookalike, "password": "password"}).requireError(t, 400, "VALIDATION_FAILED", `body/email must match format "email"`)
	}
	require.Equal(t, 1, b.count(`SELECT count(*) FROM users`))
	r := c.do("POST", "/auth/login", map[string]string{"email": "KATE.smith@example.com ", "password": "password"})
	requireSession(t, r, http.StatusOK, "Kate", "kate.smith@example.com")
}

// B18: unknown e-mail and wrong password get the same status and body, and take about
// as long (the dummy hash), with a bcrypt cost where hashing dominates.
func TestLoginUnknownAndWrongPasswordLookAlike(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_BCRYPT_COST", "9"))
	c := b.client()
	c.register("Known", "known@example.com", "password-1")
	login := func(email, pw string) (response, time.Duration) {
		start := time.Now()
		r := c.do("POST", "/auth/login", map[string]string{"email": email, "password": pw})
		return r, time.Since(start)
	}
	var unknown, wrong []time.Duration
	for i := range 3 {
		ru, du := login("nobody"+string(rune('a'+i))+"@example.com", "password-1")
		rw, dw := login("known@example.com", "password-2")
		ru.requireError(t, http.StatusUnauthorized, "INVALID_CREDENTIALS", "Invalid credentials")
		rw.requireError(t, http.StatusUnauthorized, "INVALID_CREDENTIALS", "Invalid credentials")
		require.Equal(t, string(rw.body), string(ru.body))
		unknown, wrong = append(unknown, du), append(wrong, dw)
	}
	median := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	mu, mw := median(unknown), median(wrong)
	t.Logf("median login time: unknown e-mail %s, wrong password %s", mu, mw)
	require.Greater(t, mu, mw/3, "an unknown e-mail must cost a bcrypt comparison too")
}

// B59: 20 bad passwords on one account from rotating IPs → 429 with Retry-After per
// account (exponential backoff), the right password is refused while locked and works
// once the backoff has passed; no permanent lockout. Other accounts are unaffected.
func TestLoginThrottlingPerAccount(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_LOGIN_ACCOUNT_FREE_FAILURES", "3", "API_LOGIN_IP_FREE_FAILURES", "1000",
		"API_LOGIN_BACKOFF_BASE", "4s", "API_LOGIN_BACKOFF_MAX", "60s", "API_TRUSTED_PROXIES", "127.0.0.1/32"))
	c := b.client()
	victim := c.register("Victim", "victim@example.com", "right-password")
	bystander := c.register("Bystander", "bystander@example.com", "right-password")
	attempt := func(a account, pw string, i int) response {
		return c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": pw}, "X-Forwarded-For", "198.51.100."+strconv.Itoa(i%250+1))
	}
	var statuses []int
	for i := range 20 {
		r := attempt(victim, "wrong-password", i)
		statuses = append(statuses, r.status)
		if r.status == http.StatusTooManyRequests {
			r.requireCode(t, 429, "RATE_LIMITED")
			require.NotEmpty(t, r.header.Get("Retry-After"))
		}
	}
	require.Equal(t, []int{401, 401, 401, 401}, statuses[:4], "3 free failures, the 4th fails and locks")
	for _, s := range statuses[4:] {
		require.Equal(t, http.StatusTooManyRequests, s, "locked attempts are refused and do not extend the lock")
	}
	r := attempt(victim, "right-password", 99)
	r.requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.Equal(t, "4", r.header.Get("Retry-After"))
	require.Equal(t, http.StatusOK, attempt(bystander, "right-password", 1).status, "other accounts are unaffected")

	// Backoff doubles: after the lock, one more failure locks for 8 s.
	b.clock.Advance(4 * time.Second)
	attempt(victim, "wrong-password", 5).requireCode(t, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	r = attempt(victim, "right-password", 6)
	r.requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.Equal(t, "8", r.header.Get("Retry-After"))

	b.clock.Advance(8 * time.Second)
	requireSession(t, attempt(victim, "right-password", 7), http.StatusOK, "Victim", "victim@example.com")
	// Success forgot the failures: three more mistakes cost nothing.
	for i := range 3 {
		attempt(victim, "wrong-password", i).requireCode(t, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	}
	require.Equal(t, http.StatusOK, attempt(victim, "right-password", 1).status)
	require.Equal(t, 18.0, b.counter("pulseboard_api_login_throttled_total", map[string]string{"scope": "account"}))
}

// Per IP: many accounts guessed from one address lock that address, not others.
func TestLoginThrottlingPerIP(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_LOGIN_IP_FREE_FAILURES", "3", "API_TRUSTED_PROXIES", "127.0.0.1"))
	c := b.client()
	a := c.register("Someone", "someone@example.com", "right-password")
	const attacker, user = "203.0.113.7", "2001:db8:1:2::5"
	for i := range 4 {
		c.do("POST", "/auth/login", map[string]string{"email": "guess" + strconv.Itoa(i) + "@example.com", "password": "x"}, "X-Forwarded-For", attacker).
			requireCode(t, http.StatusUnauthorized, "INVALID_CREDENTIALS")
	}
	r := c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}, "X-Forwarded-For", attacker)
	r.requireCode(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.Equal(t, "1", r.header.Get("Retry-After"))
	require.Equal(t, http.StatusOK, c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}, "X-Forwarded-For", user).status)
	// X-Forwarded-For is believed only from trusted proxies: the proxy's own entry
	// (the right-most untrusted address) is the client.
	require.Equal(t, http.StatusOK, c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password},
		"X-Forwarded-For", attacker+", "+user).status)
	require.Equal(t, 1.0, b.counter("pulseboard_api_login_throttled_total", map[string]string{"scope": "ip"}))
}

// B61: hashing concurrency is bounded; the excess gets 503 with Retry-After, not a queue.
func TestPasswordHashingIsBounded(t *testing.T) {
	t.Parallel()
	// Every attempt counts against the account while it is in flight (the atomic
	// throttle), so 12 at once would reach the lock; this test is about hashing slots.
	b := setup(t, withEnv("API_BCRYPT_COST", "8", "API_HASH_CONCURRENCY", "1", "API_HASH_WAIT", "1ms", "API_LOGIN_ACCOUNT_FREE_FAILURES", "100"))
	c := b.client()
	a := c.register("Busy", "busy@example.com", "password-1")
	const n = 12
	results := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i] = b.client().do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password})
		}()
	}
	close(start)
	wg.Wait()
	var ok, busy int
	for _, r := range results {
		switch r.status {
		case http.StatusOK:
			ok++
		case http.StatusServiceUnavailable:
			busy++
			r.requireCode(t, 503, "UNAVAILABLE")
			require.Equal(t, "1", r.header.Get("Retry-After"))
		default:
			t.Fatalf("unexpected %d: %s", r.status, r.body)
		}
	}
	require.Positive(t, ok)
	require.Positive(t, busy)
	require.Equal(t, float64(busy), b.counter("pulseboard_api_password_hash_rejected_total", nil))
}

// B57: cross-site refresh and logout (cookie attached) are 403; the session survives.
func TestCrossSiteRefreshAndLogoutAreForbidden(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	c.register("Csrf", "csrf@example.com", "password-1")
	for _, path := range []string{"/auth/refresh", "/auth/logout"} {
		for _, h := range [][]string{
			{"Origin", evilOrigin},
			{"Origin", evilOrigin, "Content-Type", "", "Content-Type", "text/plain"},
			{"Origin", "null"},
			{"Origin", dashboardOrigin + ".evil.example"},
			{"Sec-Fetch-Site", "cross-site"},
		} {
			r := c.do("POST", path, nil, h...)
			r.requireError(t, http.StatusForbidden, "FORBIDDEN_ORIGIN", "Origin not allowed")
			require.Empty(t, r.header.Get("Access-Control-Allow-Origin"))
			require.Empty(t, r.header.Values("Set-Cookie"))
		}
	}
	// Still logged in: the allowed origins and origin-less clients may refresh.
	require.Equal(t, http.StatusOK, c.do("POST", "/auth/refresh", nil, "Origin", otherOrigin).status)
	require.Equal(t, http.StatusOK, c.do("POST", "/auth/refresh", nil).status)
}

// An account imported from the old backend (bcryptjs, $2b$, cost 12; e-mail stored in
// another case) logs in unchanged.
func TestOldBackendAccountLogsIn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.pool.Exec(context.Background(), `INSERT INTO users (id, name, email, password_hash) VALUES ($1, 'Legacy', 'Legacy@Example.com', $2)`,
		uuid.New(), "$2b$12$548MLfU7fxyjTEkbWdDjmO.mrPgz8e/phb9SXAyhGaHazJmHRc5Fu")
	require.NoError(t, err)
	r := b.client().do("POST", "/auth/login", map[string]string{"email": "legacy@example.com", "password": "correct horse battery"})
	requireSession(t, r, http.StatusOK, "Legacy", "Legacy@Example.com")
}

// The documented defaults, including bcrypt cost 12 and the old backend's lifetimes.
func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse[api.Config](config.Env{})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, 12, cfg.BcryptCost)
	require.Equal(t, 3000, cfg.Port)
	require.Equal(t, []string{"http://localhost:3001"}, cfg.CORSOrigins)
	require.Equal(t, 15*time.Minute, cfg.AccessTTL.D())
	require.Equal(t, 7*24*time.Hour, cfg.RefreshTTL.D())
	require.Equal(t, 10*time.Second, cfg.RefreshReuseGrace)
	require.Equal(t, int64(64<<10), cfg.MaxBodyBytes)
	require.False(t, cfg.Production())
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "900": 15 * time.Minute, "1h30m": 90 * time.Minute, "2w": 14 * 24 * time.Hour, "15m": 15 * time.Minute} {
		cfg, err := config.Parse[api.Config](config.Env{"JWT_REFRESH_EXPIRES": in})
		require.NoError(t, err, in)
		require.Equal(t, want, cfg.RefreshTTL.D(), in)
	}
	_, err = config.Parse[api.Config](config.Env{"JWT_ACCESS_EXPIRES": "soon"})
	require.Error(t, err)
	cfg, err = config.Parse[api.Config](config.Env{"PULSEBOARD_ENV": "production", "CORS_ORIGIN": "null,https://ok.example", "API_REFRESH_REUSE_GRACE": "30s"})
	require.NoError(t, err)
	err = cfg.Validate()
	require.ErrorContains(t, err, "JWT_ACCESS_SECRET is required")
	require.ErrorContains(t, err, `CORS_ORIGIN: "null"`)
	require.ErrorContains(t, err, "API_REFRESH_REUSE_GRACE must be in [0, 10s]")
	require.NotContains(t, fmt.Sprint(api.Config{AccessSecret: "super-secret-value"}), "super-secret-value")
}

// In production the refresh cookie is also Secure (B56).
func TestProductionCookieIsSecure(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("PULSEBOARD_ENV", "production", "API_BCRYPT_COST", "12", "CORS_ORIGIN", otherOrigin, "API_PUBLIC_URL", "https://api.example.com"))
	c := b.client()
	// The register hashes at cost 12: slow under -race (seconds, more on a loaded machine),
	// but this is the production path; give it time rather than a flaky deadline.
	c.http.Timeout = 2 * time.Minute
	r := c.do("POST", "/auth/register", map[string]string{"name": "Prod", "email": "prod@example.com", "password": "password-1"})
	require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	require.Regexp(t, `^refreshToken=[A-Za-z0-9_-]{43}; Max-Age=604800; Path=/auth; HttpOnly; Secure; SameSite=Strict$`, r.header.Get("Set-Cookie"))
	var hash string
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT password_hash FROM users`).Scan(&hash))
	require.True(t, strings.HasPrefix(hash, "$2a$12$"), "cost 12 in production: %s", hash)
	r = c.do("POST", "/auth/logout", nil, "Cookie", "refreshToken=x")
	require.Equal(t, "refreshToken=; Max-Age=0; Path=/auth; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Secure; SameSite=Strict", r.header.Get("Set-Cookie"))
}

// A refresh token lives JWT_REFRESH_EXPIRES (7 d) from its issue; each refresh issues a
// new one with a full lifetime.
func TestRefreshTokenExpires(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	c.register("Expiring", "expiring@example.com", "password-1")
	r := c.do("POST", "/auth/login", map[string]string{"email": "expiring@example.com", "password": "password-1"})
	rt := requireSession(t, r, http.StatusOK, "Expiring", "expiring@example.com")
	b.clock.Advance(6 * 24 * time.Hour)
	rt = requireSession(t, refreshWith(c, rt), http.StatusOK, "Expiring", "expiring@example.com")
	b.clock.Advance(6 * 24 * time.Hour)
	rt = requireSession(t, refreshWith(c, rt), http.StatusOK, "Expiring", "expiring@example.com")
	b.clock.Advance(7*24*time.Hour + time.Second)
	refreshWith(c, rt).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
}
