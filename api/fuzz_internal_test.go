package api

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// FuzzRefreshCookie feeds arbitrary Cookie headers to the refresh token parser of
// /auth/refresh and /auth/logout. A token it returns is exactly the refreshToken cookie's
// value, has the shape newRefreshToken gives (43 base64url characters, 32 bytes), and
// comes with its SHA-256 (what the store looks up); everything else is refused with
// NO_REFRESH_TOKEN (no or empty cookie) or INVALID_REFRESH_TOKEN, never another error.
func FuzzRefreshCookie(f *testing.F) {
	fresh, _, err := newRefreshToken()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		refreshCookie + "=" + fresh,
		"a=b; " + refreshCookie + "=" + fresh + "; c=d",
		refreshCookie + "=",
		refreshCookie + "=" + fresh[:42] + "=",
		refreshCookie + "=" + fresh[:42] + "+",
		refreshCookie + "=\"" + fresh + "\"",
		refreshCookie + "=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
		refreshCookie + "=" + fresh + "; " + refreshCookie + "=other",
		"RefreshToken=" + fresh,
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cookie string) {
		r := httptest.NewRequest(http.MethodPost, "/auth/refresh", nil)
		r.Header.Set("Cookie", cookie)
		tok, hash, err := presentedRefreshToken(r)
		c, cerr := r.Cookie(refreshCookie)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				t.Fatalf("refused with %v, not an API error", err)
			}
			missing := cerr != nil || c.Value == ""
			if (ae.code == httperr.NoRefreshToken) != missing || !missing && ae.code != httperr.InvalidRefreshToken {
				t.Fatalf("cookie %q refused with %s", cookie, ae.code)
			}
			return
		}
		if cerr != nil || tok != c.Value {
			t.Fatalf("token %q is not the cookie's value (%v)", tok, cerr)
		}
		if len(tok) != refreshTokenLen || strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("accepted %q, which is not 43 base64url characters", tok)
		}
		if raw, err := base64.RawURLEncoding.DecodeString(tok); err != nil || len(raw) != 32 {
			t.Fatalf("accepted %q, which does not decode to 32 bytes", tok)
		}
		if want := sha256.Sum256([]byte(tok)); string(hash) != string(want[:]) {
			t.Fatalf("hash of %q is not its SHA-256", tok)
		}
	})
}

// FuzzEventsCursor feeds arbitrary cursor parameters to the events and alerts
// pagination. A cursor it accepts is one this endpoint could have returned: it
// re-encodes to the same string (CR and LF aside: the base64 decoder skips them) and its
// time is one Postgres stores (years 1-9999, the range of event times), so the query
// cannot fail on it; anything else is a VALIDATION_FAILED.
func FuzzEventsCursor(f *testing.F) {
	for _, s := range []string{
		encodeCursor(time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC), uuid.MustParse("0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b")),
		encodeCursor(time.UnixMicro(0), uuid.Nil),
		"__________________________________",
		"gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"f_________AAAAAAAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAAA\nAAAAAAAAAAAAAAAA",
		"bm90LWEtY3Vyc29y",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r := httptest.NewRequest(http.MethodGet, "/projects/x/events?cursor="+url.QueryEscape(v), nil)
		c, err := decodeCursor(r)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.code != httperr.ValidationFailed {
				t.Fatalf("cursor %q refused with %v", v, err)
			}
			return
		}
		if v == "" {
			if c != nil {
				t.Fatal("no cursor must mean the first page")
			}
			return
		}
		if got, want := encodeCursor(c.Time, c.ID), strings.NewReplacer("\r", "", "\n", "").Replace(v); got != want {
			t.Fatalf("cursor %q re-encodes as %q", v, got)
		}
		if y := c.Time.Year(); y < 1 || y > 9999 || c.Time.Location() != time.UTC {
			t.Fatalf("cursor %q decodes to %s, which no stored event has", v, c.Time)
		}
	})
}
