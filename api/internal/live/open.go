package live

import (
	"net/http"
	"strings"
	"time"

	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// open runs everything before a stream starts: authentication, the per-user limit,
// joining the project's topic and waiting until its Redis subscription is confirmed, so
// that every event published after "connected" is delivered. On failure it has answered
// the request; on success the caller owns the client and must h.release it.
func (h *Hub) open(w http.ResponseWriter, r *http.Request, t transport) (*client, caller, bool) {
	cl, rej := h.authenticate(r, t)
	if rej == nil && t == transportWS && !isWebSocketUpgrade(r) {
		rej = errNotWebSocket
	}
	var f filter
	if rej == nil {
		f, rej = filterFromQuery(r.URL.Query())
	}
	if rej != nil {
		h.reject(w, t, rej)
		return nil, cl, false
	}
	c := newClient(t, h.m.byTransport[t], cl.project, cl.userID, cl.issuedAt, cl.expiresAt, h.cfg.QueueSize, h.cfg.QueueBytes)
	c.session, c.filter = cl.session, f
	if ok, closing := h.admit(c); !ok {
		if closing {
			h.reject(w, t, errClosing)
		} else {
			h.reject(w, t, errTooMany)
		}
		return nil, cl, false
	}
	channel := redisx.EventsChannel(cl.project)
	ready := h.join(c, channel)
	timer := time.NewTimer(h.cfg.SubscribeTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		return c, cl, true
	case <-timer.C:
		h.logger.Warn("live: Redis did not confirm a subscription in time", "timeout", h.cfg.SubscribeTimeout)
		h.resetSubscription(channel)
		h.release(c)
		h.reject(w, t, errUnavailable)
	case <-c.killed: // closing, or revoked while waiting
		h.release(c)
		h.reject(w, t, errUnavailable)
	case <-r.Context().Done():
		h.release(c)
	}
	return nil, cl, false
}

// isWebSocketUpgrade is a cheap pre-check, so that a plain GET gets a JSON 400 rather
// than gobwas' text error after a subscription was set up for it. The upgrader still
// validates the full handshake.
func isWebSocketUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet && headerHasToken(r.Header, "Upgrade", "websocket") &&
		headerHasToken(r.Header, "Connection", "upgrade")
}

// headerHasToken reports whether a comma-separated header has token (case-insensitive).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for item := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(item), token) {
				return true
			}
		}
	}
	return false
}
