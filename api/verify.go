package api

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	htmltemplate "html/template"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/pulseboard/pulseboard/api/internal/authn"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// Email verification (issue 16 item 7). Registration records a verification link and
// its pending mail with the user (the alerter sends it: email_verifications is its
// outbox); GET /auth/verify?token=… consumes the link; POST /auth/verify/resend queues
// another one, throttled. The token is 32 random bytes in unpadded base64url: only its
// SHA-256 is looked up (so the comparison is a hash lookup, not a string compare of
// the secret), and it works once, for API_VERIFY_TOKEN_TTL. Login, projects and every
// other route keep working for unverified accounts; only alert and digest mail wait
// for the verification (ALERT_REQUIRE_VERIFIED in the alerter).

// newVerification makes a new token and the link the mail carries.
func (s *Service) newVerification() (store.NewVerification, error) {
	token, hash, err := newRefreshToken() // the same 256-bit random token and SHA-256
	if err != nil {
		return store.NewVerification{}, err
	}
	link := strings.TrimRight(s.cfg.PublicURL, "/") + "/auth/verify?token=" + token
	return store.NewVerification{TokenHash: hash, Link: link, TTL: s.cfg.VerifyTokenTTL}, nil
}

var (
	errTokenInvalid = newError(httperr.VerificationTokenInvalid, "This verification link is not valid; request a new one")
	errTokenExpired = newError(httperr.VerificationTokenExpired, "This verification link has expired; request a new one")
	errTokenUsed    = newError(httperr.VerificationTokenUsed, "This verification link was used already")
	errSuperseded   = newError(httperr.VerificationTokenInvalid, "This verification link is for an address that is no longer the account's")
)

// verifyEmail: GET /auth/verify?token=… (opened from the mail, in a browser). A
// browser (Accept: text/html) gets a small HTML page, anything else the JSON body;
// both carry the same status, and the page names the error code.
func (s *Service) verifyEmail(w http.ResponseWriter, r *http.Request) error {
	// The token is in the URL: never send it on in a Referer, never cache the page.
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-store")
	err := s.consumeToken(r)
	if !wantsHTML(r) {
		if err != nil {
			return err
		}
		return writeMessage(w, http.StatusOK, "Email address verified", struct {
			EmailVerified bool `json:"emailVerified"`
		}{true})
	}
	var ae *apiError
	switch {
	case err == nil:
		writeVerifyPage(w, http.StatusOK, "Email address verified", "Your address is verified: PulseBoard will send its alert emails there.", "")
	case errors.As(err, &ae):
		writeVerifyPage(w, ae.code.Status(), "Email address not verified", ae.msg, string(ae.code))
	default:
		return err // 5xx: the JSON error body, logged with the request id
	}
	return nil
}

func (s *Service) consumeToken(r *http.Request) error {
	q := r.URL.Query()
	tokens := q["token"]
	if len(tokens) != 1 || len(tokens[0]) != refreshTokenLen {
		return errTokenInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(tokens[0])
	if err != nil || len(raw) != 32 {
		return errTokenInvalid
	}
	h := sha256.Sum256([]byte(tokens[0]))
	outcome, err := s.store.Verify(r.Context(), h[:], s.now())
	if err != nil {
		return err
	}
	s.m.verifications.WithLabelValues(outcomeLabels[outcome]).Inc()
	switch outcome {
	case store.Verified:
		return nil
	case store.TokenUsed:
		return errTokenUsed
	case store.TokenExpired:
		return errTokenExpired
	case store.TokenSuperseded:
		return errSuperseded
	default:
		return errTokenInvalid
	}
}

// outcomeLabels are the bounded label values of pulseboard_api_email_verifications_total.
var outcomeLabels = map[store.VerifyOutcome]string{
	store.Verified: "verified", store.TokenUnknown: "unknown", store.TokenUsed: "used",
	store.TokenExpired: "expired", store.TokenSuperseded: "superseded",
}

// wantsHTML reports whether the client prefers an HTML page (a browser opening the
// link) to JSON: text/html is listed with a quality at least that of application/json.
func wantsHTML(r *http.Request) bool {
	html, jsonQ := -1.0, -1.0
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				q = f
			}
		}
		switch mt {
		case "text/html":
			html = max(html, q)
		case "application/json":
			jsonQ = max(jsonQ, q)
		}
	}
	return html > 0 && html >= jsonQ
}

var verifyPage = htmltemplate.Must(htmltemplate.New("verify").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Title}} - PulseBoard</title></head>
<body><h1>{{.Title}}</h1><p>{{.Message}}</p>{{if .Code}}<p><code>{{.Code}}</code></p>{{end}}</body></html>
`))

func writeVerifyPage(w http.ResponseWriter, status int, title, msg, code string) {
	var b strings.Builder
	_ = verifyPage.Execute(&b, struct{ Title, Message, Code string }{title, msg, code})
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// resendVerification: POST /auth/verify/resend (Bearer). Queues a new link for the
// caller's address: 202, or 409 EMAIL_ALREADY_VERIFIED, or 429 with Retry-After while
// the throttle (API_VERIFY_RESEND_INTERVAL, API_VERIFY_RESEND_DAILY_LIMIT) refuses.
func (s *Service) resendVerification(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	v, err := s.newVerification()
	if err != nil {
		return err
	}
	wait, err := s.store.Resend(r.Context(), p.UserID, s.now(),
		store.ResendLimits{Interval: s.cfg.VerifyResendInterval, Daily: s.cfg.VerifyResendDailyLimit}, v)
	switch {
	case errors.Is(err, store.ErrAlreadyVerified):
		return newError(httperr.EmailAlreadyVerified, "Email address already verified")
	case errors.Is(err, store.ErrNotFound):
		return errUnauthorized
	case err != nil:
		return err
	case wait > 0:
		s.m.verifyResendThrottled.Inc()
		return &apiError{code: httperr.RateLimited, msg: "Too many verification emails; retry after the Retry-After delay", retryAfter: wait}
	}
	return writeMessage(w, http.StatusAccepted, "Verification email queued", nil)
}
