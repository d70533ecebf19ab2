package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/authn"
	"github.com/pulseboard/pulseboard/api/internal/passwords"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/api/internal/throttle"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// refreshCookie is the old backend's cookie name, kept for its clients (docs/api.md wins
// over the __Host- prefix the first design suggested; docs/reliability.md B56).
const refreshCookie = "refreshToken"

// refreshTokenLen is the length of a refresh token: 32 random bytes in unpadded base64url.
const refreshTokenLen = 43

// emailPattern is ajv-formats' "email" format (fast mode), which the old backend's
// schema applied, matched after lower-casing. It admits ASCII addresses only, so
// Unicode look-alikes of an existing address are refused rather than becoming a second
// account (and lower-casing folds the few that map onto ASCII, such as the Kelvin sign).
var emailPattern = regexp.MustCompile("^" + localChars + `+(?:\.` + localChars + `+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$`)

const localChars = "[a-z0-9!#$%&'*+/=?^_`{|}~-]"

// Field limits. The old schema had the minimums; the maximums are new (bounded input).
const (
	minNameChars     = 2
	maxNameChars     = 100
	maxEmailChars    = 254
	minPasswordChars = 8
)

// authUser is the compat user object, byte for byte the old backend's: the
// verification state (issue 16 item 7) is in GET /me instead.
type authUser struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
}

type authData struct {
	AccessToken string   `json:"accessToken"`
	User        authUser `json:"user"`
}

// normalizeEmail makes A@x.com and " a@x.com" one account (B62).
func normalizeEmail(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// credentials validates the e-mail and password of a register or login body.
func credentials(f fields, register bool) (email, password string, err error) {
	email, _, err = f.str("email")
	if err != nil {
		return "", "", err
	}
	email = normalizeEmail(email)
	if err := checkLength("body/email", email, 0, maxEmailChars); err != nil {
		return "", "", err
	}
	if !emailPattern.MatchString(email) {
		return "", "", invalid(`body/email must match format "email"`)
	}
	password, _, err = f.str("password")
	if err != nil {
		return "", "", err
	}
	if register {
		if err := checkLength("body/password", password, minPasswordChars, 1<<20); err != nil {
			return "", "", err
		}
	}
	// Refused before any hashing, never truncated (X6, B60).
	if passwords.Check(password) != nil {
		return "", "", invalid("body/password must NOT be longer than " + strconv.Itoa(passwords.MaxBytes) + " bytes")
	}
	return email, password, nil
}

// register: POST /auth/register (compat).
func (s *Service) register(w http.ResponseWriter, r *http.Request) error {
	f, err := s.decodeObject(w, r)
	if err != nil {
		return err
	}
	if err := f.required("name", "email", "password"); err != nil {
		return err
	}
	name, _, err := f.str("name")
	if err != nil {
		return err
	}
	if err := checkLength("body/name", name, minNameChars, maxNameChars); err != nil {
		return err
	}
	email, password, err := credentials(f, true)
	if err != nil {
		return err
	}
	if err := s.registerAllowed(r); err != nil {
		return err
	}
	// Hash before looking at the e-mail, so a taken address costs the same time. On the
	// registrations' own slots: a flood of them cannot take the logins' (issue 16 item 6).
	hash, err := s.regHasher.Hash(r.Context(), password)
	if err != nil {
		return err
	}
	// The first verification link and its mail are recorded with the user, in one
	// transaction; the alerter sends the mail (email_verifications is its outbox).
	v, err := s.newVerification()
	if err != nil {
		return err
	}
	u, err := s.store.CreateUser(r.Context(), name, email, hash, s.now(), v)
	if err != nil {
		return err // ErrEmailTaken → 409 EMAIL_TAKEN (a documented, accepted enumeration risk: compat)
	}
	return s.startSession(w, r, u, http.StatusCreated)
}

// registerAllowed counts a registration attempt for the client address and for all
// clients (fixed windows, counted atomically in Redis) and refuses it with 429 and
// Retry-After beyond API_REGISTER_IP_LIMIT or API_REGISTER_GLOBAL_LIMIT.
func (s *Service) registerAllowed(r *http.Request) error {
	ctx := r.Context()
	scope := "ip"
	wait := s.throttle.Allow(ctx, "register:"+ipKey(s.clientIP(r)), s.cfg.RegisterIPLimit, s.cfg.RegisterWindow)
	if wait == 0 {
		scope = "global"
		wait = s.throttle.Allow(ctx, "register:all", s.cfg.RegisterGlobalLimit, s.cfg.RegisterWindow)
	}
	if wait == 0 {
		return nil
	}
	s.m.registerThrottled.WithLabelValues(scope).Inc()
	return &apiError{code: httperr.RateLimited, msg: "Too many registrations; retry after the Retry-After delay", retryAfter: wait}
}

// Throttle keys. Accounts are keyed by a hash of the normalised e-mail, so Redis holds
// no addresses; IPv6 clients by their /64, which one client usually owns whole.
func accountKey(email string) string {
	h := sha256.Sum256([]byte(email))
	return "acct:" + base64.RawURLEncoding.EncodeToString(h[:16])
}

func ipKey(a netip.Addr) string {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + a.String()
}

func (s *Service) accountPolicy() throttle.Policy {
	return throttle.Policy{Free: s.cfg.LoginAccountFreeFailures, Base: s.cfg.LoginBackoffBase, Max: s.cfg.LoginBackoffMax, Forget: s.cfg.LoginFailureTTL}
}

func (s *Service) ipPolicy() throttle.Policy {
	return throttle.Policy{Free: s.cfg.LoginIPFreeFailures, Base: s.cfg.LoginBackoffBase, Max: s.cfg.LoginBackoffMax, Forget: s.cfg.LoginFailureTTL}
}

var errInvalidCredentials = newError(httperr.InvalidCredentials, "Invalid credentials")

// login: POST /auth/login (compat). Unknown e-mail and wrong password get the same
// status, body and (through the dummy hash) timing; both count as failures for the
// account and the IP.
func (s *Service) login(w http.ResponseWriter, r *http.Request) error {
	f, err := s.decodeObject(w, r)
	if err != nil {
		return err
	}
	if err := f.required("email", "password"); err != nil {
		return err
	}
	email, password, err := credentials(f, false)
	if err != nil {
		return err
	}
	ctx := r.Context()
	acct, ip := accountKey(email), ipKey(s.clientIP(r))
	// Checking the throttle and counting this attempt as a failure are one atomic step
	// per key (throttle.Limiter.Begin): N concurrent guesses at an unlocked moment get
	// at most the failures left before the lock, not N (issue 16 item 6).
	attempts, err := s.beginLogin(ctx, acct, ip)
	if err != nil {
		return err
	}
	// The attempt is taken back unless it ends as a wrong password (or unknown e-mail):
	// a storage or hashing-capacity error is not a guess.
	failed := false
	defer func() {
		if !failed {
			for _, a := range attempts {
				s.throttle.Succeeded(context.WithoutCancel(ctx), a)
			}
		}
	}()
	u, err := s.store.UserByEmail(ctx, email)
	var ok bool
	switch {
	case errors.Is(err, store.ErrNotFound):
		if err := s.hasher.VerifyDummy(ctx, password); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		if ok, err = s.hasher.Verify(ctx, u.PasswordHash, password); err != nil {
			return err
		}
	}
	if !ok {
		failed = true
		return errInvalidCredentials
	}
	s.throttle.Reset(ctx, acct)
	if s.hasher.NeedsRehash(u.PasswordHash) {
		if h, err := s.hasher.Hash(ctx, password); err == nil {
			if err := s.store.UpdatePasswordHash(ctx, u.ID, h); err != nil {
				s.logger.Warn("upgrading a password hash failed", "request_id", requestID(ctx), "error", err)
			}
		}
	}
	return s.startSession(w, r, u, http.StatusOK)
}

// beginLogin admits a login attempt on every key (account, IP) or refuses it while any
// of them is backing off (B59). An admitted attempt is already counted as a failure on
// each key; a refusal takes back what it had counted.
func (s *Service) beginLogin(ctx context.Context, keys ...string) ([]throttle.Attempt, error) {
	policies := map[string]throttle.Policy{"acct": s.accountPolicy(), "ip": s.ipPolicy()}
	attempts := make([]throttle.Attempt, 0, len(keys))
	for _, k := range keys {
		scope := strings.SplitN(k, ":", 2)[0]
		wait, a := s.throttle.Begin(ctx, k, policies[scope])
		if wait == 0 {
			attempts = append(attempts, a)
			continue
		}
		for _, a := range attempts {
			s.throttle.Succeeded(context.WithoutCancel(ctx), a)
		}
		if scope == "acct" {
			scope = "account"
		}
		s.m.loginThrottled.WithLabelValues(scope).Inc()
		return nil, &apiError{code: httperr.RateLimited, msg: "Too many failed sign-in attempts; retry after the Retry-After delay", retryAfter: wait}
	}
	return attempts, nil
}

// startSession issues an access token and a new refresh-token family and answers with
// the compat body and cookie.
func (s *Service) startSession(w http.ResponseWriter, r *http.Request, u store.User, status int) error {
	rt, rtHash, err := newRefreshToken()
	if err != nil {
		return err
	}
	session, err := s.store.NewSession(r.Context(), u.ID, rtHash, s.now(), s.cfg.RefreshTTL.D())
	if err != nil {
		return err
	}
	return s.answerSession(w, u, session, rt, status)
}

// answerSession issues an access token bound to the session (the refresh-token family),
// so that logging out ends the token and its live streams too (B55).
func (s *Service) answerSession(w http.ResponseWriter, u store.User, session uuid.UUID, refreshToken string, status int) error {
	access, _, err := s.tokens.IssueForSession(u.ID, u.Email, session, time.Now())
	if err != nil {
		return err
	}
	s.setRefreshCookie(w, refreshToken)
	return writeData(w, status, authData{AccessToken: access, User: authUser{ID: u.ID.String(), Name: u.Name, Email: u.Email}})
}

// setRefreshCookie writes the compat cookie byte for byte, attributes in the order the
// old backend (@fastify/cookie) wrote them.
func (s *Service) setRefreshCookie(w http.ResponseWriter, token string) {
	v := refreshCookie + "=" + token + "; Max-Age=" + strconv.FormatInt(int64(s.cfg.RefreshTTL.D()/time.Second), 10) + "; Path=/auth; HttpOnly"
	if s.cfg.Production() {
		v += "; Secure"
	}
	w.Header().Add("Set-Cookie", v+"; SameSite=Strict")
}

func (s *Service) clearRefreshCookie(w http.ResponseWriter) {
	v := refreshCookie + "=; Max-Age=0; Path=/auth; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly"
	if s.cfg.Production() {
		v += "; Secure"
	}
	w.Header().Add("Set-Cookie", v+"; SameSite=Strict")
}

// maxGraceHops bounds the chain of rotations a refresh within the grace follows.
const maxGraceHops = 8

// successorToken is the refresh token that replaces token: HMAC-SHA256 of it under a key
// derived from the access-token secret, so that every replica, and every concurrent
// refresh with the same cookie, derives the same one, and nobody without the secret and
// the token can (issue 17 item 6). Tokens from login and register stay random.
func (s *Service) successorToken(token string) (string, []byte) {
	m := hmac.New(sha256.New, s.successorKey)
	m.Write([]byte(token))
	next := base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	h := sha256.Sum256([]byte(next))
	return next, h[:]
}

func newRefreshToken() (token string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, err
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(token))
	return token, h[:], nil
}

// presentedRefreshToken returns the cookie's token; NO_REFRESH_TOKEN when there is
// none, INVALID_REFRESH_TOKEN when it cannot be one of ours (an access JWT, garbage).
func presentedRefreshToken(r *http.Request) (string, []byte, error) {
	c, err := r.Cookie(refreshCookie)
	if err != nil || c.Value == "" {
		return "", nil, newError(httperr.NoRefreshToken, "No refresh token")
	}
	if len(c.Value) != refreshTokenLen {
		return "", nil, errInvalidRefresh
	}
	if _, err := base64.RawURLEncoding.DecodeString(c.Value); err != nil {
		return "", nil, errInvalidRefresh
	}
	h := sha256.Sum256([]byte(c.Value))
	return c.Value, h[:], nil
}

var errInvalidRefresh = newError(httperr.InvalidRefreshToken, "Invalid refresh token")

// checkOrigin protects the cookie-authenticated endpoints against cross-site requests
// (B57): a browser always sends Origin on a cross-origin POST, so a present Origin must
// be one of CORS_ORIGIN ("null" never is) or the api's own (sameOrigin: the dashboard
// it serves). Non-browser clients send none.
func (s *Service) checkOrigin(r *http.Request) error {
	origins, present := r.Header["Origin"]
	if present && (len(origins) != 1 || !s.origins[origins[0]] && !sameOrigin(r, origins[0])) {
		return newError(httperr.ForbiddenOrigin, "Origin not allowed")
	}
	if !present && r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return newError(httperr.ForbiddenOrigin, "Origin not allowed")
	}
	return nil
}

// refresh: POST /auth/refresh (compat). Rotates the refresh token; see doc.go for the
// reuse policy. A refused refresh never touches the cookie: if a concurrent refresh of
// the same client won, the browser already holds its new token.
func (s *Service) refresh(w http.ResponseWriter, r *http.Request) error {
	if err := s.checkOrigin(r); err != nil {
		return err
	}
	oldToken, oldHash, err := presentedRefreshToken(r)
	if err != nil {
		return err
	}
	now := s.now()
	// Tabs refresh at once with the cookie they share: the successor is derived from the
	// token, so each of them presents the one the first stored and is answered with it
	// (following a chain of rotations within the grace, a few links at most).
	var res store.Rotation
	for hop := 0; ; hop++ {
		newToken, newHash := s.successorToken(oldToken)
		if res, err = s.store.Rotate(r.Context(), oldHash, newHash, now, s.cfg.RefreshTTL.D(), s.cfg.RefreshReuseGrace); err != nil {
			return err
		}
		if res.Outcome == store.Rotated || res.Outcome == store.SuccessorWithinGrace && !res.SuccessorRotated {
			return s.answerSession(w, res.User, res.FamilyID, newToken, http.StatusOK)
		}
		if res.Outcome != store.SuccessorWithinGrace || hop == maxGraceHops {
			break
		}
		oldToken, oldHash = newToken, newHash
	}
	switch res.Outcome {
	case store.ReuseDetected:
		s.m.refreshReuse.Inc()
		s.logger.Warn("security: refresh token reuse detected; token family revoked",
			"request_id", requestID(r.Context()), "user_id", res.UserID.String(), "family_id", res.FamilyID.String(),
			"ip", s.clientIP(r).String())
	case store.ReusedWithinGrace:
		s.logger.Info("refresh token presented again within the grace window (concurrent refresh); refused",
			"request_id", requestID(r.Context()), "user_id", res.UserID.String())
	}
	return errInvalidRefresh
}

// logout: POST /auth/logout (compat): the session's token family is revoked, the cookie
// cleared, and the answer is the bare JSON `true`. The session is the refresh cookie's
// and, when a valid Bearer access token comes along, the one that token names (its sid):
// a client that only holds the access token logs out too (issue 16 item 6). A token
// that does not verify, or that names no session (the old backend's), revokes nothing.
func (s *Service) logout(w http.ResponseWriter, r *http.Request) error {
	if err := s.checkOrigin(r); err != nil {
		return err
	}
	s.clearRefreshCookie(w)
	if _, h, err := presentedRefreshToken(r); err == nil {
		if err := s.store.RevokeFamilyOf(r.Context(), h, s.now()); err != nil {
			return err
		}
	}
	if raw, ok := authn.BearerToken(r); ok {
		if c, err := s.tokens.Verify(raw); err == nil {
			if uid, err := c.UserID(); err == nil && c.Session() != uuid.Nil {
				if err := s.store.RevokeSession(r.Context(), uid, c.Session(), s.now()); err != nil {
					return err
				}
			}
		}
	}
	writeBody(w, http.StatusOK, []byte("true"))
	return nil
}

// UserStreams is implemented by a LiveStreams that can close one user's open streams
// at once (the live Hub does). Without it, "log out everywhere" still ends them, within
// the live revocation check interval.
type UserStreams interface {
	CloseUser(userID uuid.UUID) int
}

// logoutAll: POST /auth/logout-all (issue 16 item 6): every session of the caller is
// revoked (refresh tokens, and with them every access token naming one; older tokens by
// tokens_valid_after), the cookie is cleared and the caller's live streams are closed.
// The answer is the bare JSON `true`, like logout's.
func (s *Service) logoutAll(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	if err := s.store.RevokeAllSessions(r.Context(), p.UserID, s.now()); err != nil {
		return err
	}
	if us, ok := s.deps.Live.(UserStreams); ok {
		if n := us.CloseUser(p.UserID); n > 0 {
			s.logger.Info("log out everywhere closed live streams", "request_id", requestID(r.Context()), "user_id", p.UserID.String(), "streams", n)
		}
	}
	s.clearRefreshCookie(w)
	writeBody(w, http.StatusOK, []byte("true"))
	return nil
}

// authed wraps a handler that needs a Bearer access token.
func (s *Service) authed(h func(w http.ResponseWriter, r *http.Request, p authn.Principal) error) http.Handler {
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		raw, ok := authn.BearerToken(r)
		if !ok {
			return errUnauthorized
		}
		p, err := s.authn.Authenticate(r.Context(), raw)
		if errors.Is(err, authn.ErrUnauthenticated) {
			return errUnauthorized
		}
		if err != nil {
			return err
		}
		return h(w, r, p)
	})
}

type meData struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Email     string   `json:"email"`
	CreatedAt jsonTime `json:"createdAt"`
	// New (issue 16 item 7): alert and digest mail go only to a verified address.
	EmailVerified   bool      `json:"emailVerified"`
	EmailVerifiedAt *jsonTime `json:"emailVerifiedAt"`
}

// me: GET /me.
func (s *Service) me(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	u, err := s.store.UserByID(r.Context(), p.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return errUnauthorized
	}
	if err != nil {
		return err
	}
	me := meData{ID: u.ID.String(), Name: u.Name, Email: u.Email, CreatedAt: jsonTime(u.CreatedAt), EmailVerified: u.EmailVerifiedAt != nil}
	if u.EmailVerifiedAt != nil {
		at := jsonTime(*u.EmailVerifiedAt)
		me.EmailVerifiedAt = &at
	}
	return writeData(w, http.StatusOK, me)
}
