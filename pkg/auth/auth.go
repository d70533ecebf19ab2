// Package auth issues and verifies PulseBoard's access tokens: HS256 JWTs with the
// algorithm pinned, exp required, and issuer and audience checked (docs/reliability.md promise
// 15, pitfalls J1–J5). Refresh tokens are not JWTs (they are opaque random strings stored
// hashed), so a refresh token can never pass as an access token or the other way round.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
)

// Issuer and Audience of access tokens. Other token kinds, if ever added, must use another
// audience so they cannot be confused with access tokens (B49).
const (
	Issuer         = "pulseboard"
	AccessAudience = "pulseboard-api"
)

// MinSecretBytes is the shortest accepted HMAC secret (256 bits).
const MinSecretBytes = 32

// ErrInvalidToken is returned for every token that must not be trusted; callers answer
// 401 and never branch on the reason (J5).
var ErrInvalidToken = errors.New("invalid access token")

// Claims of an access token. ID and Email are kept for the old backend's clients.
// SessionID is the session the token was issued to (the api's refresh-token family):
// logging out revokes the session, and with it every access token and live stream that
// carries its id (docs/reliability.md B55). Tokens of the old backend have none.
type Claims struct {
	ID        string `json:"id"`
	Email     string `json:"email"`
	SessionID string `json:"sid,omitempty"`
	jwt.RegisteredClaims
}

// UserID is the subject as a UUID.
func (c Claims) UserID() (uuid.UUID, error) { return uuid.Parse(c.Subject) }

// Session is the token's session, uuid.Nil for a token issued without one.
func (c Claims) Session() uuid.UUID {
	id, err := uuid.Parse(c.SessionID)
	if err != nil {
		return uuid.Nil
	}
	return id
}

// Tokens issues and verifies access tokens.
type Tokens struct {
	secret []byte
	ttl    time.Duration
	parser *jwt.Parser
}

// NewTokens returns a Tokens with the given secret (≥ 32 bytes) and lifetime.
func NewTokens(secret []byte, ttl time.Duration) (*Tokens, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("JWT secret must be at least %d bytes, got %d", MinSecretBytes, len(secret))
	}
	if ttl <= 0 {
		return nil, errors.New("access token lifetime must be positive")
	}
	return &Tokens{
		secret: secret,
		ttl:    ttl,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithIssuer(Issuer),
			jwt.WithAudience(AccessAudience),
			jwt.WithLeeway(30*time.Second),
		),
	}, nil
}

// RandomSecret returns a new random 256-bit secret (development only: tokens do not
// survive a restart).
func RandomSecret() []byte {
	b := make([]byte, MinSecretBytes)
	_, _ = rand.Read(b)
	return b
}

// TTL is the access token lifetime.
func (t *Tokens) TTL() time.Duration { return t.ttl }

// Derive is a key for another purpose than signing, derived from the signing secret
// (HMAC-SHA256 of label): replicas that share the secret derive the same key, and the
// secret itself is never used twice.
func (t *Tokens) Derive(label string) []byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// Issue returns a signed access token for the user, bound to no session, and its expiry.
func (t *Tokens) Issue(userID uuid.UUID, email string, now time.Time) (string, time.Time, error) {
	return t.IssueForSession(userID, email, uuid.Nil, now)
}

// IssueForSession returns a signed access token for the user's session (uuid.Nil: none)
// and its expiry.
func (t *Tokens) IssueForSession(userID uuid.UUID, email string, session uuid.UUID, now time.Time) (string, time.Time, error) {
	exp := now.Add(t.ttl)
	c := Claims{
		ID:    userID.String(),
		Email: email,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   userID.String(),
			Issuer:    Issuer,
			Audience:  jwt.ClaimStrings{AccessAudience},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
			ID:        uuid.NewString(),
		},
	}
	if session != uuid.Nil {
		c.SessionID = session.String()
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.secret)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing access token: %w", err)
	}
	return s, exp, nil
}

// MaxTokenBytes bounds what is parsed at all (CVE-2025-30204 amplified long headers).
const MaxTokenBytes = 4096

// Verify parses and validates an access token.
func (t *Tokens) Verify(raw string) (Claims, error) {
	var c Claims
	if raw == "" || len(raw) > MaxTokenBytes {
		return c, ErrInvalidToken
	}
	tok, err := t.parser.ParseWithClaims(raw, &c, func(tok *jwt.Token) (any, error) {
		// Belt and braces on top of WithValidMethods (J1): never hand the key to any other
		// algorithm, and never accept "none" (J2).
		if tok.Method != jwt.SigningMethodHS256 {
			return nil, fmt.Errorf("unexpected signing method %v", tok.Header["alg"])
		}
		return t.secret, nil
	})
	if err != nil || !tok.Valid {
		return Claims{}, ErrInvalidToken
	}
	if _, err := c.UserID(); err != nil {
		return Claims{}, ErrInvalidToken
	}
	if c.SessionID != "" && c.Session() == uuid.Nil {
		return Claims{}, ErrInvalidToken
	}
	return c, nil
}
