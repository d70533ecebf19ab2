package api_test

// The attack half of the bad-input suite (docs/reliability.md "Bad input and attacks", issue
// 7) for the api: smuggling and malformed HTTP over raw TCP, slow clients, header
// injection, forged JWTs beyond TestAccessTokenAttacksAre401, cookies on Bearer-only
// routes, and account enumeration through register and the login lockout.

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/auth"
	"github.com/pulseboard/pulseboard/pkg/testenv/rawhttp"
)

func (b *bundle) host() string { return strings.TrimPrefix(b.base, "http://") }

// requireNoInternal checks a raw answer: net/http's own answers to malformed requests
// are plain text (they are written before any handler runs); the api's are JSON and
// never INTERNAL, since a malformed request is the client's fault.
func requireNoInternal(t *testing.T, a rawhttp.Answer, name string) {
	t.Helper()
	if !strings.HasPrefix(a.Header.Get("Content-Type"), "application/json") {
		return
	}
	var env struct{ Code string }
	require.NoError(t, json.Unmarshal(a.Body, &env), "%s: %s", name, a.Body)
	require.NotEqual(t, "INTERNAL", env.Code, "%s: a malformed request is not a server error: %s", name, a.Body)
}

// TestAPIRequestSmuggling (B40, H6): every ambiguous or malformed frame gets at most one
// 400 (or net/http's 501 for an unknown Transfer-Encoding) and a closed connection; the
// register hidden in it never runs. The same register on its own works, so the oracle
// would have seen it.
func TestAPIRequestSmuggling(t *testing.T) {
	t.Parallel()
	b := setup(t)
	register := `{"name":"Smuggled","email":"smuggled@example.com","password":"password-1"}`
	hidden := rawhttp.Smuggled{Method: "POST", Path: "/auth/register", Header: []string{"Content-Type: application/json"}, Body: register}
	for _, c := range rawhttp.Smuggling("POST", "/auth/login", b.host(), []string{"Content-Type: application/json"}, hidden) {
		res, err := rawhttp.Exchange(b.host(), c.Request, 10*time.Second)
		require.NoError(t, err, c.Name)
		require.NoError(t, res.Refused(), c.Name)
		for _, a := range res.Answers {
			require.Contains(t, []int{http.StatusBadRequest, http.StatusNotImplemented}, a.Status, "%s: %s", c.Name, res)
			requireNoInternal(t, a, c.Name)
		}
	}
	require.Zero(t, b.count(`SELECT count(*) FROM users`), "a smuggled register ran")

	res, err := rawhttp.Exchange(b.host(), hidden.Alone(b.host()), 10*time.Second)
	require.NoError(t, err)
	require.Len(t, res.Answers, 1)
	require.Equal(t, http.StatusCreated, res.Answers[0].Status, "the hidden request alone: %s", res)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM users`))
}

// TestAPIMalformedHeaders (B35, B42, header injection): oversized header blocks get
// 431, a missing or duplicate Host 400, and nothing from the request reaches a response
// header unchecked: not a CR LF in the path, not a request id or a CORS request header
// list with odd characters.
func TestAPIMalformedHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	get := func(path, headers string) string { return "GET " + path + " HTTP/1.1\r\n" + headers + "\r\n" }
	var many strings.Builder
	for i := range 2000 {
		many.WriteString("X-H" + strconv.Itoa(i) + ": v\r\n")
	}
	for _, c := range []struct {
		name    string
		request string
		status  int
	}{
		{"2000 small headers", get("/projects", "Host: x\r\n"+many.String()), 431},
		{"a 20 KiB request line", get("/projects?"+strings.Repeat("q", 20<<10), "Host: x\r\n"), 431},
		{"two Host headers", get("/projects", "Host: x\r\nHost: y\r\n"), 400},
		{"no Host", get("/projects", ""), 400},
		// The admin endpoints live on the admin listener only (B87).
		{"metrics on the public port", get("/metrics", "Host: x\r\nConnection: close\r\n"), 404},
		{"pprof on the public port", get("/debug/pprof/", "Host: x\r\nConnection: close\r\n"), 404},
	} {
		res, err := rawhttp.Exchange(b.host(), []byte(c.request), 10*time.Second)
		require.NoError(t, err, c.name)
		require.Len(t, res.Answers, 1, "%s: %s", c.name, res)
		require.Equal(t, c.status, res.Answers[0].Status, "%s: %s", c.name, res)
		require.True(t, res.Closed, "%s: %s", c.name, res)
	}

	res, err := rawhttp.Exchange(b.host(), []byte(get("/nope%0d%0aSet-Cookie:%20pwned=1", "Host: x\r\nConnection: close\r\n")), 10*time.Second)
	require.NoError(t, err)
	require.Len(t, res.Answers, 1)
	a := res.Answers[0]
	require.Equal(t, http.StatusNotFound, a.Status)
	require.Empty(t, a.Header.Values("Set-Cookie"))
	require.JSONEq(t, `{"success":false,"code":"NOT_FOUND","message":"Route GET:/nope\r\nSet-Cookie: pwned=1 not found"}`, string(a.Body))

	c := b.client()
	r := c.do("OPTIONS", "/projects", nil, "Origin", dashboardOrigin, "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "content-type, x-evil: 1")
	require.Equal(t, http.StatusNoContent, r.status)
	require.Empty(t, r.header.Get("Access-Control-Allow-Headers"), "an odd header list is not reflected")
	r = c.do("GET", "/nope", nil, "X-Request-Id", "abc\tSet-Cookie: x=1")
	require.Regexp(t, `^[0-9a-f]{24}$`, r.header.Get("X-Request-Id"))
	require.Empty(t, r.header.Values("Set-Cookie"))
}

// TestAPIKeepAliveAndPipelining (B38, B41): pipelined requests are answered in order on
// one connection, which is then closed once idle for API_IDLE_TIMEOUT.
func TestAPIKeepAliveAndPipelining(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_IDLE_TIMEOUT", "500ms"))
	var pipelined strings.Builder
	const n = 50
	for i := range n {
		pipelined.WriteString("GET /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-" + strconv.Itoa(i) + "\r\n\r\n")
	}
	res, err := rawhttp.Exchange(b.host(), []byte(pipelined.String()), 30*time.Second)
	require.NoError(t, err)
	require.Len(t, res.Answers, n, "%s", res)
	for i, a := range res.Answers {
		require.Equal(t, http.StatusNotFound, a.Status)
		require.Equal(t, "req-"+strconv.Itoa(i), a.Header.Get("X-Request-Id"), "answer %d is for request %d", i, i)
	}
	require.True(t, res.Closed, "the idle connection was never closed")
	require.Less(t, res.Elapsed, 10*time.Second)
}

// TestAPISlowClients (B37, slowloris): headers trickled one byte at a time are cut at
// API_READ_HEADER_TIMEOUT (net/http answers that itself, with a plain-text 400), a
// trickled body at API_READ_TIMEOUT (408 REQUEST_TIMEOUT, never a 5xx), and nothing is
// stored. Bounds are generous for a loaded machine.
func TestAPISlowClients(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_READ_HEADER_TIMEOUT", "500ms", "API_READ_TIMEOUT", "1s"))
	register := `{"name":"Slow Loris","email":"slow@example.com","password":"password-1"}`
	for _, c := range []struct {
		name       string
		head, body string
		status     int
		json       string
	}{
		{"headers one byte at a time", "POST /auth/register HTTP/1.1\r\nHost: x\r\n", strings.Repeat("X-Slow: loris\r\n", 100),
			http.StatusBadRequest, ""},
		{"body one byte at a time", "POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(register)) + "\r\n\r\n", register,
			http.StatusRequestTimeout, `{"success":false,"code":"REQUEST_TIMEOUT","message":"request body was not received in time"}`},
	} {
		res, err := rawhttp.Trickle(b.host(), []byte(c.head), []byte(c.body), 100*time.Millisecond, 30*time.Second)
		require.NoError(t, err, c.name)
		t.Logf("%s: %s", c.name, res)
		require.True(t, res.Closed, "%s: never closed (%s)", c.name, res)
		require.Less(t, res.Elapsed, 10*time.Second, c.name)
		for _, a := range res.Answers {
			require.Equal(t, c.status, a.Status, "%s: %s", c.name, res)
			if c.json != "" {
				require.JSONEq(t, c.json, string(a.Body))
			}
		}
	}
	require.Zero(t, b.count(`SELECT count(*) FROM users`))
}

// accessClaims are the claims of a valid access token of a, issued at now, changed by mod.
func accessClaims(a account, now time.Time, mod func(jwt.MapClaims)) jwt.MapClaims {
	m := jwt.MapClaims{"id": a.id, "email": a.email, "sub": a.id, "iss": auth.Issuer, "aud": auth.AccessAudience,
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}
	if mod != nil {
		mod(m)
	}
	return m
}

// TestForgedTokenHeadersAre401 (B44, B45, B51, J1–J3): tokens signed with asymmetric
// algorithms and attacker keys, key-confusion and header-driven key lookups (kid, jku,
// x5u, jwk), and claims that are only wrong in time or shape: all 401, and nothing the
// token names is ever fetched.
func TestForgedTokenHeadersAre401(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	a := c.register("Forge Target", "forge@example.com", "password-1")
	var fetched atomic.Int32
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetched.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	defer attacker.Close()

	now := time.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims { return accessClaims(a, now, mod) }
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	attackerSecret := []byte("attacker-secret-attacker-secret-0123456789")
	jwk := map[string]any{"kty": "RSA", "n": base64.RawURLEncoding.EncodeToString(rsaKey.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(rsaKey.E)).Bytes())}
	sign := func(method jwt.SigningMethod, key any, header map[string]any, mod func(jwt.MapClaims)) string {
		tok := jwt.NewWithClaims(method, claims(mod))
		for k, v := range header {
			tok.Header[k] = v
		}
		s, err := tok.SignedString(key)
		require.NoError(t, err)
		return s
	}
	hs := jwt.SigningMethodHS256
	secret := []byte(testSecret)
	tokens := map[string]string{
		"RS256, attacker key":                 sign(jwt.SigningMethodRS256, rsaKey, nil, nil),
		"RS256 with the key embedded as jwk":  sign(jwt.SigningMethodRS256, rsaKey, map[string]any{"jwk": jwk}, nil),
		"PS256":                               sign(jwt.SigningMethodPS256, rsaKey, nil, nil),
		"ES256":                               sign(jwt.SigningMethodES256, ecKey, nil, nil),
		"EdDSA":                               sign(jwt.SigningMethodEdDSA, edKey, nil, nil),
		"HS256 keyed with the jwk's modulus":  sign(hs, rsaKey.N.Bytes(), map[string]any{"jwk": jwk}, nil),
		"HS256, attacker secret, jku":         sign(hs, attackerSecret, map[string]any{"jku": attacker.URL + "/jwks.json"}, nil),
		"HS256, attacker secret, x5u":         sign(hs, attackerSecret, map[string]any{"x5u": attacker.URL + "/cert.pem"}, nil),
		"HS256, attacker secret, kid path":    sign(hs, attackerSecret, map[string]any{"kid": "../../../../dev/null"}, nil),
		"HS256, empty secret, kid /dev/null":  sign(hs, []byte{}, map[string]any{"kid": "../../../../dev/null"}, nil),
		"HS256, attacker secret, kid SQL":     sign(hs, attackerSecret, map[string]any{"kid": "x' UNION SELECT 'secret"}, nil),
		"HS256, attacker secret, crit header": sign(hs, attackerSecret, map[string]any{"crit": []string{"exp"}}, nil),
		"iat in the future":                   sign(hs, secret, nil, func(m jwt.MapClaims) { m["iat"] = now.Add(time.Hour).Unix() }),
		"nbf in the future":                   sign(hs, secret, nil, func(m jwt.MapClaims) { m["nbf"] = now.Add(time.Hour).Unix() }),
		"sub not a UUID":                      sign(hs, secret, nil, func(m jwt.MapClaims) { m["sub"] = "1 OR 1=1" }),
		"aud list without ours":               sign(hs, secret, nil, func(m jwt.MapClaims) { m["aud"] = []string{"other", "pulseboard"} }),
	}
	// Algorithm names that only differ in case or spelling: the signature is our real
	// HS256 MAC, only the header's alg changes (and so the signed input).
	for _, alg := range []string{"hs256", "HS256 ", "none", "NONE"} {
		tok := jwt.NewWithClaims(hs, claims(nil))
		tok.Header["alg"] = alg
		signingString, err := tok.SigningString()
		require.NoError(t, err)
		sig, err := hs.Sign(signingString, secret)
		require.NoError(t, err)
		tokens["alg "+strconv.Quote(alg)] = signingString + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	for name, tok := range tokens {
		r := c.do("GET", "/me", nil, "Authorization", "", "Authorization", "Bearer "+tok)
		require.Equal(t, http.StatusUnauthorized, r.status, "%s: %s", name, r.body)
		r.requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
	}
	require.Zero(t, fetched.Load(), "a URL named in a token header was fetched")
	require.Equal(t, http.StatusOK, c.do("GET", "/me", nil).status, "the genuine token still works")
}

// TestCookiesDoNotAuthenticateBearerRoutes (CSRF): a browser attaches cookies to a
// cross-site request, never the Authorization header, so the Bearer routes are immune:
// the refresh cookie (even sent to its own path) authenticates nothing else.
func TestCookiesDoNotAuthenticateBearerRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	a := c.register("Cookie Only", "cookie@example.com", "password-1")
	rt := requireSession(t, c.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}), http.StatusOK, a.name, a.email)
	token := c.token
	c.token = ""
	for _, h := range [][]string{
		{"Cookie", "refreshToken=" + rt},
		{"Cookie", "refreshToken=" + rt, "Origin", evilOrigin, "Content-Type", "", "Content-Type", "text/plain"},
		{"Cookie", "accessToken=" + token},
		{"Cookie", "token=" + token},
	} {
		r := c.do("POST", "/projects", `{"name":"csrf"}`, h...)
		r.requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
		require.Empty(t, r.header.Get("Access-Control-Allow-Origin"))
	}
	require.Zero(t, b.count(`SELECT count(*) FROM projects`))
}

// TestRegisterDoesNotLeakMoreThanEmailTaken (B62, enumeration): docs/api.md keeps the old
// backend's 409 EMAIL_TAKEN (compat; the accepted risk documented in auth.go). It is
// all that leaks: the same body for any variant of the address, no cookie, no session,
// no account data, and (the password is hashed before the address is looked at) about
// the time a successful register takes. An address with CR LF (header injection into
// the alerter's mail) is not an address.
func TestRegisterDoesNotLeakMoreThanEmailTaken(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_BCRYPT_COST", "9"))
	c := b.client()
	c.register("Existing", "existing@example.com", "password-1")
	sessions := b.count(`SELECT count(*) FROM refresh_tokens`)

	register := func(email string) (response, time.Duration) {
		start := time.Now()
		r := b.client().do("POST", "/auth/register", map[string]string{"name": "Someone Else", "email": email, "password": "other-password"})
		return r, time.Since(start)
	}
	var taken, fresh []time.Duration
	for i, email := range []string{"existing@example.com", "EXISTING@example.com", " existing@Example.com"} {
		r, d := register(email)
		r.requireError(t, http.StatusConflict, "EMAIL_TAKEN", "Email already registered")
		require.Empty(t, r.header.Values("Set-Cookie"), email)
		taken = append(taken, d)
		r, d = register("fresh" + strconv.Itoa(i) + "@example.com")
		require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
		fresh = append(fresh, d)
	}
	require.Equal(t, sessions+3, b.count(`SELECT count(*) FROM refresh_tokens`), "a refused register starts no session")
	require.Equal(t, 4, b.count(`SELECT count(*) FROM users`))
	median := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	t.Logf("median register time: taken %s, fresh %s", median(taken), median(fresh))
	require.Greater(t, median(taken), median(fresh)/3, "a taken address must cost the hash too")

	for _, email := range []string{"evil@example.com\r\nBcc: victim@example.com", "evil@example.com\nCc:x@example.com", "a@example.com, b@example.com", "Name <a@example.com>"} {
		r, _ := register(email)
		r.requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", `body/email must match format "email"`)
	}
	require.Equal(t, 4, b.count(`SELECT count(*) FROM users`))
}

// TestLoginLockoutDoesNotRevealAccounts (promise 18, enumeration): an unknown address
// and a known one are throttled at the same attempt with the same answers, so the
// lockout cannot be used to find accounts.
func TestLoginLockoutDoesNotRevealAccounts(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_LOGIN_ACCOUNT_FREE_FAILURES", "2", "API_LOGIN_IP_FREE_FAILURES", "1000"))
	c := b.client()
	c.register("Known", "known-lockout@example.com", "right-password")
	trace := func(email string) []string {
		var out []string
		for range 5 {
			r := c.do("POST", "/auth/login", map[string]string{"email": email, "password": "wrong-password"})
			out = append(out, strconv.Itoa(r.status)+" "+string(r.body)+" retry="+r.header.Get("Retry-After"))
		}
		return out
	}
	known := trace("known-lockout@example.com")
	unknown := trace("nobody-" + uuid.NewString()[:8] + "@example.com")
	require.Equal(t, known, unknown)
	require.True(t, strings.HasPrefix(known[0], "401 "), known[0])
	require.True(t, strings.HasPrefix(known[len(known)-1], "429 "), known[len(known)-1])
}

// TestLogoutEndsTheSessionsAccessTokens (B55, promise 16): an access token is bound to
// its session (the refresh-token family), so logging out, or a detected refresh-token
// reuse, ends it at once rather than at exp; the user's other sessions keep working.
func TestLogoutEndsTheSessionsAccessTokens(t *testing.T) {
	t.Parallel()
	b := setup(t)
	laptop := b.client()
	a := laptop.register("Two Devices", "devices@example.com", "password-1")
	phone := b.client()
	requireSession(t, phone.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}), http.StatusOK, a.name, a.email)
	phone.token = phone.do("POST", "/auth/refresh", nil).data(t)["accessToken"].(string) // the refreshed token keeps the session
	for _, c := range []*client{laptop, phone} {
		require.Equal(t, http.StatusOK, c.do("GET", "/me", nil).status)
	}

	require.Equal(t, http.StatusOK, laptop.do("POST", "/auth/logout", nil, "Origin", dashboardOrigin).status)
	laptop.do("GET", "/me", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
	laptop.do("GET", "/projects", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
	require.Equal(t, http.StatusOK, phone.do("GET", "/me", nil).status, "another session is untouched")

	// A reuse revokes the family: its access tokens end with it.
	rt := requireSession(t, phone.do("POST", "/auth/login", map[string]string{"email": a.email, "password": a.password}), http.StatusOK, a.name, a.email)
	phone.token = ""
	r := refreshWith(phone, rt)
	requireSession(t, r, http.StatusOK, a.name, a.email)
	phone.token = r.data(t)["accessToken"].(string)
	require.Equal(t, http.StatusOK, phone.do("GET", "/me", nil).status)
	b.clock.Advance(11 * time.Second)
	refreshWith(phone, rt).requireError(t, http.StatusUnauthorized, "INVALID_REFRESH_TOKEN", "Invalid refresh token")
	phone.do("GET", "/me", nil).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED", "Missing or invalid access token")
}

// TestAPITextIsAlwaysStorable (UTF-8, NUL; promise 4's rule applied to the api): text
// Postgres would refuse (NUL, invalid UTF-8, lone surrogates) in names is stored with
// U+FFFD instead, never a 500; such bytes in an e-mail make it no address; in a query
// string or path they are just not found.
func TestAPITextIsAlwaysStorable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	for i, name := range []string{`nul\u0000name`, "bad \xff utf8", `lone \ud800 surrogate`} {
		r := c.do("POST", "/auth/register", `{"name":"`+name+`","email":"text`+strconv.Itoa(i)+`@example.com","password":"pass\u0000word-1"}`)
		require.Equal(t, http.StatusCreated, r.status, "%q: %s", name, r.body)
		require.Contains(t, r.data(t)["user"].(map[string]any)["name"], "\uFFFD", name)
		c.token = r.data(t)["accessToken"].(string)
		r = c.do("POST", "/projects", `{"name":"`+name+`"}`)
		require.Equal(t, http.StatusCreated, r.status, "%q: %s", name, r.body)
		require.Contains(t, r.data(t)["name"], "\uFFFD", name)
	}
	r := c.do("POST", "/auth/register", `{"name":"Nul Mail","email":"nul\u0000@example.com","password":"password-1"}`)
	r.requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", `body/email must match format "email"`)
	for _, path := range []string{"/events?apiKey=%00abc", "/events?apiKey=%ff%fe"} {
		c.do("GET", path, nil).requireError(t, http.StatusUnauthorized, "INVALID_API_KEY", "Invalid API key")
	}
	for _, path := range []string{"/projects/%00", "/projects/%ff%fe/events"} {
		c.do("GET", path, nil).requireError(t, http.StatusNotFound, "PROJECT_NOT_FOUND", "Project not found")
	}
	require.Equal(t, 3, b.count(`SELECT count(*) FROM users WHERE name LIKE '%' || chr(65533) || '%'`))
}
