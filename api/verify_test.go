package api_test

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pendingLink is the link of the user's newest verification mail while it waits in the
// outbox for the alerter (which is not running in these tests).
func (b *bundle) pendingLink(email string) string {
	b.t.Helper()
	var link string
	require.NoError(b.t, b.pool.QueryRow(context.Background(), `
		SELECT v.link FROM email_verifications v JOIN users u ON u.id = v.user_id
		WHERE u.email = $1 AND v.state = 'pending' ORDER BY v.created_at DESC LIMIT 1`, email).Scan(&link))
	return link
}

// pathOf turns a link into the path and query the test client sends.
func pathOf(t *testing.T, link string) string {
	t.Helper()
	u, err := url.Parse(link)
	require.NoError(t, err)
	return "/auth/verify?" + u.RawQuery
}

// Registration (unchanged for the old clients) records a single-use verification link
// and its pending mail in the same transaction as the user, with the link built on
// API_PUBLIC_URL and only the token's SHA-256 kept for lookups. Following the link
// verifies the address (GET /me shows it); the link then refuses a second use. Unknown
// and malformed tokens get clear codes; a browser gets an HTML page, never leaking the
// token in a Referer. Every answer matches openapi.json.
func TestRegisterMailsLinkThatVerifiesOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_PUBLIC_URL", "https://pulse.example.com/api/"))
	v := newValidator(t, b.client().do("GET", "/openapi.json", nil).body)
	c := &checked{client: b.client(), v: v, matched: map[string]bool{}}
	a := c.register("Vera Verify", "vera@example.com", "password-vera")

	link := b.pendingLink(a.email)
	prefix := "https://pulse.example.com/api/auth/verify?token="
	require.True(t, strings.HasPrefix(link, prefix), "link %s", link)
	token := strings.TrimPrefix(link, prefix)
	require.Len(t, token, 43)
	h := sha256.Sum256([]byte(token))
	require.Equal(t, 1, b.count(`SELECT count(*) FROM email_verifications WHERE token_hash = $1 AND email = 'vera@example.com'
		AND expires_at = created_at + interval '24 hours' AND used_at IS NULL`, h[:]))

	me := c.do("GET", "/me", nil).data(t)
	require.Equal(t, false, me["emailVerified"])
	require.Nil(t, me["emailVerifiedAt"])

	path := "/auth/verify?token=" + token
	r := c.do("GET", path, nil, "Accept", "application/json")
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.JSONEq(t, `{"success":true,"message":"Email address verified","data":{"emailVerified":true}}`, string(r.body))
	require.Equal(t, "no-referrer", r.header.Get("Referrer-Policy"))
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	me = c.do("GET", "/me", nil).data(t)
	require.Equal(t, true, me["emailVerified"])
	require.NotNil(t, me["emailVerifiedAt"])

	// Single use, whoever presents it again (JSON or a browser).
	c.do("GET", path, nil).requireError(t, http.StatusGone, "VERIFICATION_TOKEN_USED", "This verification link was used already")
	page := c.do("GET", path, nil, "Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
	require.Equal(t, http.StatusGone, page.status)
	require.Equal(t, "text/html; charset=utf-8", page.header.Get("Content-Type"))
	require.Contains(t, page.header.Get("Content-Security-Policy"), "default-src 'none'")
	require.Equal(t, "no-referrer", page.header.Get("Referrer-Policy"))
	require.Contains(t, string(page.body), "VERIFICATION_TOKEN_USED")
	require.NotContains(t, string(page.body), token)

	// Unknown, malformed, repeated or missing tokens.
	unknown := strings.Repeat("A", 43)
	for _, q := range []string{"?token=" + unknown, "?token=" + token[:42], "?token=" + token[:42] + "*", "", "?token=" + token + "&token=" + token} {
		c.do("GET", "/auth/verify"+q, nil).requireError(t, http.StatusBadRequest, "VERIFICATION_TOKEN_INVALID",
			"This verification link is not valid; request a new one")
	}
	require.Equal(t, 1.0, b.counter("pulseboard_api_email_verifications_total", map[string]string{"outcome": "verified"}))
	require.Equal(t, 2.0, b.counter("pulseboard_api_email_verifications_total", map[string]string{"outcome": "used"}))

	// A browser following a fresh link gets a page saying so.
	_, other := b.newUser("Bea Browser")
	page = b.client().do("GET", pathOf(t, b.pendingLink(other.email)), nil, "Accept", "text/html")
	require.Equal(t, http.StatusOK, page.status)
	require.Contains(t, string(page.body), "Email address verified")
	require.Equal(t, 1, b.count(`SELECT count(*) FROM users WHERE email = $1 AND email_verified_at IS NOT NULL`, other.email))
}

// Concurrent requests with one token verify once: exactly one 200, the others 410.
func TestVerificationTokenIsSingleUseUnderConcurrency(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, a := b.newUser("Racer")
	path := pathOf(t, b.pendingLink(a.email))
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := b.client().do("GET", path, nil)
			mu.Lock()
			statuses[r.status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Equal(t, map[int]int{http.StatusOK: 1, http.StatusGone: 7}, statuses)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM email_verifications WHERE used_at IS NOT NULL`))
}

// A link expires after API_VERIFY_TOKEN_TTL; a link sent to an address the account no
// longer has verifies nothing; and changing the address resets a verification.
func TestVerificationExpiresAndFollowsTheAddress(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_VERIFY_TOKEN_TTL", "2h"))
	c, a := b.newUser("Late Larry")
	expired := pathOf(t, b.pendingLink(a.email))
	b.clock.Advance(2 * time.Hour)
	c.do("GET", expired, nil).requireError(t, http.StatusGone, "VERIFICATION_TOKEN_EXPIRED", "This verification link has expired; request a new one")
	require.Equal(t, false, c.do("GET", "/me", nil).data(t)["emailVerified"])

	// A new link (the interval has passed) works, until the address changes.
	r := c.do("POST", "/auth/verify/resend", nil)
	require.Equal(t, http.StatusAccepted, r.status, "body %s, Retry-After %s", r.body, r.header.Get("Retry-After"))
	fresh := pathOf(t, b.pendingLink(a.email))
	ctx := context.Background()
	_, err := b.pool.Exec(ctx, `UPDATE users SET email = 'larry.new@example.com' WHERE email = $1`, a.email)
	require.NoError(t, err)
	c.do("GET", fresh, nil).requireError(t, http.StatusBadRequest, "VERIFICATION_TOKEN_INVALID",
		"This verification link is for an address that is no longer the account's")
	require.Equal(t, false, c.do("GET", "/me", nil).data(t)["emailVerified"])

	// Verified, then the address changes: no longer verified.
	b.clock.Advance(time.Minute)
	require.Equal(t, http.StatusAccepted, c.do("POST", "/auth/verify/resend", nil).status)
	require.Equal(t, http.StatusOK, c.do("GET", pathOf(t, b.pendingLink("larry.new@example.com")), nil).status)
	require.Equal(t, true, c.do("GET", "/me", nil).data(t)["emailVerified"])
	_, err = b.pool.Exec(ctx, `UPDATE users SET email = 'larry.third@example.com' WHERE email = 'larry.new@example.com'`)
	require.NoError(t, err)
	require.Equal(t, false, c.do("GET", "/me", nil).data(t)["emailVerified"])
}

// POST /auth/verify/resend: at most one mail per API_VERIFY_RESEND_INTERVAL and
// API_VERIFY_RESEND_DAILY_LIMIT per 24 h (the registration's counts), answered 429 with
// Retry-After; concurrent resends queue one mail; a verified account gets 409; an
// anonymous caller 401.
func TestResendIsThrottled(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_VERIFY_RESEND_DAILY_LIMIT", "3"))
	v := newValidator(t, b.client().do("GET", "/openapi.json", nil).body)
	c := &checked{client: b.client(), v: v, matched: map[string]bool{}}
	a := c.register("Resend Rita", "rita@example.com", "password-rita")
	retryAfter := func(r response) int {
		n, err := strconv.Atoi(r.header.Get("Retry-After"))
		require.NoError(t, err, "Retry-After %q", r.header.Get("Retry-After"))
		return n
	}
	mails := func() int {
		return b.count(`SELECT count(*) FROM email_verifications v JOIN users u ON u.id = v.user_id WHERE u.email = $1`, a.email)
	}

	r := c.do("POST", "/auth/verify/resend", nil)
	r.requireError(t, http.StatusTooManyRequests, "RATE_LIMITED", "Too many verification emails; retry after the Retry-After delay")
	require.Equal(t, 60, retryAfter(r), "one per minute, the registration's mail included")
	b.clock.Advance(61 * time.Second)

	// Eight at once after the interval: one is queued.
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := c.client.do("POST", "/auth/verify/resend", nil).status
			mu.Lock()
			statuses[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Equal(t, map[int]int{http.StatusAccepted: 1, http.StatusTooManyRequests: 7}, statuses)
	require.Equal(t, 2, mails())

	b.clock.Advance(61 * time.Second)
	r = c.do("POST", "/auth/verify/resend", nil)
	require.Equal(t, http.StatusAccepted, r.status, "body: %s", r.body)
	require.JSONEq(t, `{"success":true,"message":"Verification email queued"}`, string(r.body))
	require.Equal(t, 3, mails())

	// The daily limit (3 here): refused until the first of them is a day old.
	b.clock.Advance(61 * time.Second)
	r = c.do("POST", "/auth/verify/resend", nil)
	require.Equal(t, http.StatusTooManyRequests, r.status)
	wait := retryAfter(r)
	require.Greater(t, wait, 23*3600)
	require.LessOrEqual(t, wait, 24*3600)
	require.Equal(t, 3, mails())
	require.GreaterOrEqual(t, b.counter("pulseboard_api_verify_resend_throttled_total", nil), 9.0)
	b.clock.Advance(time.Duration(wait) * time.Second)
	require.Equal(t, http.StatusAccepted, c.do("POST", "/auth/verify/resend", nil).status)

	// Verified: nothing to resend.
	require.Equal(t, http.StatusOK, c.do("GET", pathOf(t, b.pendingLink(a.email)), nil).status)
	b.clock.Advance(time.Hour)
	c.do("POST", "/auth/verify/resend", nil).requireError(t, http.StatusConflict, "EMAIL_ALREADY_VERIFIED", "Email address already verified")
	anon := &checked{client: b.client(), v: v, matched: c.matched}
	anon.do("POST", "/auth/verify/resend", nil).requireCode(t, http.StatusUnauthorized, "UNAUTHORIZED")
	for _, want := range []string{"POST /auth/verify/resend 202", "POST /auth/verify/resend 429", "POST /auth/verify/resend 409", "POST /auth/verify/resend 401"} {
		require.True(t, c.matched[want], "scenario did not produce %s", want)
	}
}

// API_MAX_PROJECTS_PER_USER: the N+1th project is refused with 409 PROJECT_LIMIT, also
// when many are created at once; deleting one makes room; other accounts are not
// affected.
func TestProjectCap(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_PROJECTS_PER_USER", "3"))
	v := newValidator(t, b.client().do("GET", "/openapi.json", nil).body)
	c := &checked{client: b.client(), v: v, matched: map[string]bool{}}
	c.register("Capped Carl", "carl@example.com", "password-carl")
	var ids []string
	for i := range 3 {
		ids = append(ids, c.createProject("p" + strconv.Itoa(i))["id"].(string))
	}
	c.do("POST", "/projects", map[string]string{"name": "one too many"}).requireError(t, http.StatusConflict, "PROJECT_LIMIT",
		"Project limit reached: an account may have at most 3 projects; delete one first")
	require.True(t, c.matched["POST /projects 409"])
	require.Equal(t, http.StatusOK, c.do("DELETE", "/projects/"+ids[0], nil).status)
	c.createProject("room again")
	require.Equal(t, http.StatusConflict, c.do("POST", "/projects", map[string]string{"name": "full"}).status)

	// Twelve at once from a fresh account: three.
	d, acct := b.newUser("Racing Rosa")
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := d.do("POST", "/projects", map[string]string{"name": "race " + strconv.Itoa(i)}).status
			mu.Lock()
			statuses[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Equal(t, map[int]int{http.StatusCreated: 3, http.StatusConflict: 9}, statuses)
	require.Equal(t, 3, b.count(`SELECT count(*) FROM projects p JOIN users u ON u.id = p.user_id WHERE u.email = $1`, acct.email))
}

// The old clients (the React Native SDK and the Next.js dashboard) never verify:
// register, login, refresh, projects, events and logout all work for an unverified
// account, with the compat shapes.
func TestOldClientFlowsWorkUnverified(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client()
	r := c.do("POST", "/auth/register", map[string]string{"name": "Old Client", "email": "old@example.com", "password": "password-old"})
	requireSession(t, r, http.StatusCreated, "Old Client", "old@example.com")
	r = c.do("POST", "/auth/login", map[string]string{"email": "old@example.com", "password": "password-old"})
	requireSession(t, r, http.StatusOK, "Old Client", "old@example.com")
	c.token = r.data(t)["accessToken"].(string)
	requireSession(t, c.do("POST", "/auth/refresh", "{}", "Origin", dashboardOrigin), http.StatusOK, "Old Client", "old@example.com")
	p := c.createProject("legacy app")
	id := p["id"].(string)
	require.Equal(t, http.StatusOK, c.do("GET", "/projects", nil).status)
	require.Equal(t, http.StatusOK, c.do("GET", "/projects/"+id+"/events", nil).status)
	require.Equal(t, http.StatusOK, c.do("GET", "/events?apiKey="+url.QueryEscape(p["apiKey"].(string)), nil).status)
	require.Equal(t, http.StatusOK, c.do("DELETE", "/projects/"+id, nil).status)
	require.Equal(t, http.StatusOK, c.do("POST", "/auth/logout", nil).status)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM users WHERE email = 'old@example.com' AND email_verified_at IS NULL`))
}
