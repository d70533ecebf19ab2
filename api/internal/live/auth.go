package live

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// rejection is an answer given before the upgrade.
type rejection struct {
	code       httperr.Code
	message    string
	reason     string // metric label
	retryAfter int    // seconds, 0 for none
}

var (
	errNoToken      = &rejection{httperr.Unauthorized, "Authentication required", rejectUnauthorized, 0}
	errBadToken     = &rejection{httperr.Unauthorized, "Invalid or expired token", rejectUnauthorized, 0}
	errOrigin       = &rejection{httperr.ForbiddenOrigin, "Origin not allowed", rejectOrigin, 0}
	errProject      = &rejection{httperr.ProjectNotFound, "Project not found", rejectNotFound, 0}
	errTooMany      = &rejection{httperr.RateLimited, "Too many live connections for this user", rejectTooMany, 10}
	errClosing      = &rejection{httperr.Unavailable, "Server is shutting down", rejectUnavailable, 1}
	errUnavailable  = &rejection{httperr.Unavailable, "Live stream temporarily unavailable", rejectUnavailable, 5}
	errNotWebSocket = &rejection{httperr.BadRequest, "Expected a WebSocket upgrade request", rejectBadRequest, 0}
)

func (h *Hub) reject(w http.ResponseWriter, t transport, r *rejection) {
	h.m.rejected.WithLabelValues(string(t), r.reason).Inc()
	hd := w.Header()
	hd.Set("Content-Type", "application/json; charset=utf-8")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cache-Control", "no-store")
	if r.retryAfter > 0 {
		hd.Set("Retry-After", strconv.Itoa(r.retryAfter))
	}
	w.WriteHeader(r.code.Status())
	_, _ = w.Write(httperr.AppendBody(nil, r.code, r.message))
}

// caller is an authenticated stream request.
type caller struct {
	userID    uuid.UUID
	issuedAt  time.Time
	expiresAt time.Time
	project   uuid.UUID
	session   uuid.UUID // the token's session (uuid.Nil: none); logging it out ends the stream
	// bearerSubprotocol: the token came in Sec-WebSocket-Protocol, so the server must
	// select the "bearer" subprotocol or browsers fail the handshake.
	bearerSubprotocol bool
}

// authenticate runs every check that must pass before an upgrade (docs/reliability.md W3,
// B71, B74, B82): the Origin, the access token (signature, issuer, audience, exp
// without leeway, not revoked by "logout everywhere") and the project's owner.
func (h *Hub) authenticate(r *http.Request, t transport) (caller, *rejection) {
	var c caller
	if o := r.Header.Values("Origin"); len(o) > 0 {
		if _, ok := h.origin[normalizeOrigin(o[0])]; !ok && !SameOrigin(r, o[0]) || len(o) > 1 {
			return c, errOrigin
		}
	}
	raw, viaSubprotocol, rej := extractToken(r, t)
	if rej != nil {
		return c, rej
	}
	claims, err := h.tokens.Verify(raw)
	if err != nil {
		return c, errBadToken
	}
	now := time.Now()
	// The parser allows 30 s of leeway for clock skew between services; a stream is
	// closed at exp exactly, so a token already past exp is refused here.
	if claims.ExpiresAt == nil || !claims.ExpiresAt.After(now) {
		return c, errBadToken
	}
	c.userID, _ = claims.UserID() // Verify checked it parses
	c.session = claims.Session()
	c.expiresAt = claims.ExpiresAt.Time
	if claims.IssuedAt != nil {
		c.issuedAt = claims.IssuedAt.Time
	}
	c.bearerSubprotocol = viaSubprotocol
	// A malformed id cannot be anyone's project: 404, like a missing one.
	pid, err := uuid.Parse(r.PathValue("projectId"))
	if err != nil {
		return c, errProject
	}
	c.project = pid

	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.WriteTimeout)
	defer cancel()
	g, err := h.store.StreamGrant(ctx, c.userID, pid, c.session)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return c, errBadToken // the user was deleted
	case err != nil:
		h.logger.Warn("live: authorising a stream failed", "err", err)
		return c, errUnavailable
	case !g.SessionLive, revoked(c.issuedAt, g.TokensValidAfter):
		return c, errBadToken // logged out (this session, or everywhere)
	case !g.OwnsProject:
		// Another user's project is indistinguishable from a missing one (B74).
		return c, errProject
	}
	return c, nil
}

// extractToken finds the access token: Authorization: Bearer, then (WebSocket only) the
// subprotocol pair "bearer, <jwt>", then ?token= (compat; browsers' WebSocket and
// EventSource cannot set headers). An Authorization header that is not exactly one
// Bearer credential is refused rather than ignored (B50).
func extractToken(r *http.Request, t transport) (token string, viaSubprotocol bool, rej *rejection) {
	if vs := r.Header.Values("Authorization"); len(vs) > 0 {
		if len(vs) > 1 {
			return "", false, errBadToken
		}
		scheme, tok, ok := strings.Cut(vs[0], " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", false, errBadToken
		}
		if tok = strings.TrimSpace(tok); tok == "" {
			return "", false, errBadToken
		}
		return tok, false, nil
	}
	if t == transportWS {
		if tok, found := subprotocolToken(r.Header.Values("Sec-WebSocket-Protocol")); found {
			if tok == "" {
				return "", false, errBadToken
			}
			return tok, true, nil
		}
	}
	if tok := r.URL.Query().Get("token"); tok != "" {
		return tok, false, nil
	}
	return "", false, errNoToken
}

// subprotocolToken finds the item after "bearer" in the offered subprotocols.
func subprotocolToken(values []string) (token string, found bool) {
	var items []string
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			items = append(items, strings.TrimSpace(item))
		}
	}
	for i, item := range items {
		if item == bearerSubprotocol {
			if i+1 < len(items) {
				return items[i+1], true
			}
			return "", true
		}
	}
	return "", false
}

const bearerSubprotocol = "bearer"

// normalizeOrigin lower-cases an origin and drops a trailing slash, so configuration
// written by hand matches what browsers send (RFC 6454 serialisation).
func normalizeOrigin(o string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(o)), "/")
}
