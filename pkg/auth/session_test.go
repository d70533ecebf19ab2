package auth_test

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/auth"
)

// A token carries the session it was issued to (so logging out can end it, B55); one
// issued without a session has none, and a sid that is not a UUID is not trusted.
func TestSessionClaim(t *testing.T) {
	t.Parallel()
	tok, secret := newTokens(t)
	user, session := uuid.New(), uuid.New()
	s, _, err := tok.IssueForSession(user, "a@x.com", session, time.Now())
	require.NoError(t, err)
	c, err := tok.Verify(s)
	require.NoError(t, err)
	require.Equal(t, session, c.Session())

	s, _, err = tok.Issue(user, "a@x.com", time.Now())
	require.NoError(t, err)
	c, err = tok.Verify(s)
	require.NoError(t, err)
	require.Equal(t, uuid.Nil, c.Session())
	raw := jwt.MapClaims{}
	_, _, err = jwt.NewParser().ParseUnverified(s, raw)
	require.NoError(t, err)
	require.NotContains(t, raw, "sid", "no empty claim either")

	now := time.Now()
	forged, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user.String(), "iss": auth.Issuer, "aud": auth.AccessAudience, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		"sid": "not-a-session",
	}).SignedString(secret)
	require.NoError(t, err)
	_, err = tok.Verify(forged)
	require.ErrorIs(t, err, auth.ErrInvalidToken)
}
