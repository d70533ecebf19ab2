// Package authn authenticates api requests by access token. It is shared by the HTTP
// handlers and the live streams (api/internal/live), so a WebSocket or SSE client is
// held to exactly the same rules as a REST call:
//
//   - the token is a pkg/auth access JWT (HS256 pinned, exp required, iss/aud checked);
//   - the user still exists, and the token was issued at or after the user's
//     tokens_valid_after (the "log out everywhere" hook, docs/reliability.md J6). JWT iat has
//     one-second resolution, so tokens_valid_after is compared truncated to the second:
//     a token issued in the same second as the revocation stays valid until it expires.
//   - the session the token names (sid, the refresh-token family) has not been logged
//     out or revoked for reuse (docs/reliability.md B55); tokens without one are the old
//     backend's and are not bound to a session.
package authn

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/pkg/auth"
)

// ErrUnauthenticated is every reason to answer 401; callers never branch on the reason.
var ErrUnauthenticated = errors.New("unauthenticated")

// Principal is an authenticated caller.
type Principal struct {
	UserID    uuid.UUID
	Email     string
	ExpiresAt time.Time // when the access token expires (live streams close then)
}

// Users is what the authenticator needs from storage.
type Users interface {
	// AccessValidity returns the user's tokens_valid_after and whether the session
	// (uuid.Nil: none) is live; store.ErrNotFound (mapped by IsNotFound) for a deleted
	// user and any other error for storage failures.
	AccessValidity(ctx context.Context, id, session uuid.UUID) (validAfter time.Time, sessionLive bool, err error)
}

// Authenticator verifies access tokens.
type Authenticator struct {
	tokens     *auth.Tokens
	users      Users
	isNotFound func(error) bool
}

// New returns an Authenticator. isNotFound recognises the storage's "no such user".
func New(tokens *auth.Tokens, users Users, isNotFound func(error) bool) *Authenticator {
	return &Authenticator{tokens: tokens, users: users, isNotFound: isNotFound}
}

// Tokens is the access token issuer.
func (a *Authenticator) Tokens() *auth.Tokens { return a.tokens }

// Authenticate verifies raw. It returns ErrUnauthenticated for anything untrusted and a
// storage error (to be answered 503/500, never 401) when the check could not be made.
func (a *Authenticator) Authenticate(ctx context.Context, raw string) (Principal, error) {
	c, err := a.tokens.Verify(raw)
	if err != nil {
		return Principal{}, ErrUnauthenticated
	}
	id, err := c.UserID()
	if err != nil || c.IssuedAt == nil || c.ExpiresAt == nil {
		return Principal{}, ErrUnauthenticated
	}
	validAfter, live, err := a.users.AccessValidity(ctx, id, c.Session())
	if err != nil {
		if a.isNotFound(err) {
			return Principal{}, ErrUnauthenticated
		}
		return Principal{}, err
	}
	if !live || c.IssuedAt.Before(validAfter.Truncate(time.Second)) {
		return Principal{}, ErrUnauthenticated
	}
	return Principal{UserID: id, Email: c.Email, ExpiresAt: c.ExpiresAt.Time}, nil
}

// BearerToken extracts the token of the single "Authorization: Bearer <token>" header.
// Two Authorization headers, another scheme, an empty token or one longer than
// auth.MaxTokenBytes all fail (B50).
func BearerToken(r *http.Request) (string, bool) {
	vals := r.Header.Values("Authorization")
	if len(vals) != 1 {
		return "", false
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	if tok == "" || len(tok) > auth.MaxTokenBytes {
		return "", false
	}
	return tok, true
}
