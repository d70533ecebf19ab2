// Package httperr holds PulseBoard's machine-readable error codes (docs/api.md) and the JSON
// error body both servers send: {"success":false,"code":"…","message":"…"}.
//
// It imports no PulseBoard package (TestImportsNoProjectPackage): the domain packages take
// their codes from here (pkg/event's Code* constants are these codes), never the reverse.
package httperr

import (
	"net/http"
)

// Code is a stable, machine-readable error code.
type Code string

// The codes of docs/api.md.
const (
	ValidationFailed     Code = "VALIDATION_FAILED"
	InvalidJSON          Code = "INVALID_JSON"
	InvalidTimestamp     Code = "INVALID_TIMESTAMP"
	Unauthorized         Code = "UNAUTHORIZED"
	InvalidAPIKey        Code = "INVALID_API_KEY"
	InvalidCredentials   Code = "INVALID_CREDENTIALS"
	NoRefreshToken       Code = "NO_REFRESH_TOKEN"
	InvalidRefreshToken  Code = "INVALID_REFRESH_TOKEN"
	ForbiddenOrigin      Code = "FORBIDDEN_ORIGIN"
	NotFound             Code = "NOT_FOUND"
	ProjectNotFound      Code = "PROJECT_NOT_FOUND"
	MethodNotAllowed     Code = "METHOD_NOT_ALLOWED"
	EmailTaken           Code = "EMAIL_TAKEN"
	PayloadTooLarge      Code = "PAYLOAD_TOO_LARGE"
	UnsupportedMediaType Code = "UNSUPPORTED_MEDIA_TYPE"
	UnsupportedEncoding  Code = "UNSUPPORTED_ENCODING"
	HeadersTooLarge      Code = "HEADERS_TOO_LARGE"
	RequestTimeout       Code = "REQUEST_TIMEOUT"
	BadRequest           Code = "BAD_REQUEST"
	RateLimited          Code = "RATE_LIMITED"
	Unavailable          Code = "UNAVAILABLE"
	Internal             Code = "INTERNAL"
)

// Email verification and the per-user project cap (issue 16 item 7).
const (
	EmailAlreadyVerified     Code = "EMAIL_ALREADY_VERIFIED"
	VerificationTokenInvalid Code = "VERIFICATION_TOKEN_INVALID"
	VerificationTokenExpired Code = "VERIFICATION_TOKEN_EXPIRED"
	VerificationTokenUsed    Code = "VERIFICATION_TOKEN_USED"
	ProjectLimit             Code = "PROJECT_LIMIT"
)

// The per-project cap of notification channels (issue 19 item 3).
const ChannelLimit Code = "CHANNEL_LIMIT"

// Status is the HTTP status that goes with a code.
func (c Code) Status() int {
	switch c {
	case ValidationFailed, InvalidJSON, InvalidTimestamp, BadRequest, VerificationTokenInvalid:
		return http.StatusBadRequest
	case Unauthorized, InvalidAPIKey, InvalidCredentials, NoRefreshToken, InvalidRefreshToken:
		return http.StatusUnauthorized
	case ForbiddenOrigin:
		return http.StatusForbidden
	case NotFound, ProjectNotFound:
		return http.StatusNotFound
	case MethodNotAllowed:
		return http.StatusMethodNotAllowed
	case RequestTimeout:
		return http.StatusRequestTimeout
	case EmailTaken, EmailAlreadyVerified, ProjectLimit, ChannelLimit:
		return http.StatusConflict
	case VerificationTokenExpired, VerificationTokenUsed:
		return http.StatusGone
	case PayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	case UnsupportedMediaType, UnsupportedEncoding:
		return http.StatusUnsupportedMediaType
	case HeadersTooLarge:
		return http.StatusRequestHeaderFieldsTooLarge
	case RateLimited:
		return http.StatusTooManyRequests
	case Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// AppendBody appends the JSON error body for code and message.
func AppendBody(dst []byte, code Code, message string) []byte {
	dst = append(dst, `{"success":false,"code":"`...)
	dst = append(dst, code...)
	dst = append(dst, `","message":`...)
	dst = appendString(dst, message)
	return append(dst, '}')
}

// appendString appends s as a JSON string exactly as pkg/event.AppendString does (the
// same bytes: control characters, quotes and backslashes escaped, nothing else), without
// its word-at-a-time scan: error bodies are not a hot path. pkg/event's tests check that
// the two agree.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		if esc := escapes[s[i]]; esc != "" {
			dst = append(append(dst, s[start:i]...), esc...)
			start = i + 1
		}
	}
	return append(append(dst, s[start:]...), '"')
}

// escapes[c] is how byte c is written inside a JSON string, "" when verbatim.
var escapes = func() (t [256]string) {
	const hex = "0123456789abcdef"
	for c := range 0x20 {
		t[c] = `\u00` + string(hex[c>>4]) + string(hex[c&0xf])
	}
	t['"'], t['\\'] = `\"`, `\\`
	t['\n'], t['\r'], t['\t'] = `\n`, `\r`, `\t`
	return t
}()
