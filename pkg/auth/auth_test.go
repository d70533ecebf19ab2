package auth_test

import (
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/auth"
)

func newTokens(t *testing.T) (*auth.Tokens, []byte) {
	t.Helper()
	secret := auth.RandomSecret()
	tok, err := auth.NewTokens(secret, 15*time.Minute)
	require.NoError(t, err)
	return tok, secret
}

func TestIssueAndVerify(t *testing.T) {
	t.Parallel()
	tok, _ := newTokens(t)
	id := uuid.New()
	s, exp, err := tok.Issue(id, "a@x.com", time.Now())
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(15*time.Minute), exp, 2*time.Second)
	c, err := tok.Verify(s)
	require.NoError(t, err)
	require.Equal(t, id.String(), c.ID)
	require.Equal(t, id.String(), c.Subject)
	require.Equal(t, "a@x.com", c.Email)
}

func TestShortSecretRefused(t *testing.T) {
	t.Parallel()
	_, err := auth.NewTokens([]byte("short"), time.Minute)
	require.Error(t, err)
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	tok, secret := newTokens(t)
	id := uuid.New()
	now := time.Now()
	sign := func(m jwt.SigningMethod, key any, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		require.NoError(t, err)
		return s
	}
	valid := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": id.String(), "id": id.String(), "iss": auth.Issuer, "aud": auth.AccessAudience,
			"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	}
	good := sign(jwt.SigningMethodHS256, secret, valid())
	_, err := tok.Verify(good)
	require.NoError(t, err, "the control token must verify, or the cases below prove nothing")

	without := func(k string) jwt.MapClaims { c := valid(); delete(c, k); return c }
	with := func(k string, v any) jwt.MapClaims { c := valid(); c[k] = v; return c }
	parts := strings.Split(good, ".")
	cases := map[string]string{
		"expired":      sign(jwt.SigningMethodHS256, secret, with("exp", now.Add(-time.Hour).Unix())),
		"no exp":       sign(jwt.SigningMethodHS256, secret, without("exp")),
		"wrong issuer": sign(jwt.SigningMethodHS256, secret, with("iss", "other")),
		"no audience":  sign(jwt.SigningMethodHS256, secret, without("aud")),
		"wrong aud":    sign(jwt.SigningMethodHS256, secret, with("aud", "pulseboard-refresh")),
		"wrong secret": sign(jwt.SigningMethodHS256, auth.RandomSecret(), valid()),
		"HS512":        sign(jwt.SigningMethodHS512, secret, valid()),
		"alg none":     sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid()),
		"tampered":     parts[0] + "." + parts[1] + "x." + parts[2],
		"bad sub":      sign(jwt.SigningMethodHS256, secret, with("sub", "not-a-uuid")),
		"future iat":   sign(jwt.SigningMethodHS256, secret, with("iat", now.Add(time.Hour).Unix())),
		"empty":        "",
		"dots":         strings.Repeat(".", auth.MaxTokenBytes+1),
		"garbage":      "Bearer abc",
	}
	for name, raw := range cases {
		_, err := tok.Verify(raw)
		require.ErrorIs(t, err, auth.ErrInvalidToken, name)
	}
}
