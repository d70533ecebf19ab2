package live

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// Socket.IO v4 (https://socket.io/docs/v4/socket-io-protocol/) on an Engine.IO session
// (eio.go): the events of the reference backend's backend/src/lib/socket.ts, which the
// dashboard's socket.io-client 4.8 uses, on the main namespace only.
//
//   - CONNECT authenticates: auth.token of the CONNECT packet (with or without "Bearer "),
//     else the handshake's Authorization: Bearer header. The token is checked like the
//     other live streams' (signature, exp without leeway, logout, logout everywhere).
//     A refusal is a CONNECT_ERROR, which socket.io-client emits as connect_error with
//     err.message the code (UNAUTHORIZED, RATE_LIMITED, UNAVAILABLE) and err.data
//     {code, message}; the session then closes. The socket counts as one stream
//     against MaxConnsPerUser.
//   - emit("subscribe", projectId | {projectId}) checks ownership like the other
//     transports and answers "subscribed" {projectId}; from then on every event of the
//     project stored and published is emitted as "event" with the same JSON object the
//     WebSocket stream sends. A refusal is "error" {code, message, projectId?} (the
//     reference emits "error" {message}); the socket stays connected. At most
//     sioMaxSubscriptions projects per socket.
//   - emit("unsubscribe", projectId | {projectId}) answers "unsubscribed" {projectId}.
//   - "resync" {projectId, missed} reports dropped events, like the streams' resync.
//   - An acknowledgement callback, when given, receives the same object.
//
// Closing: logout or logout everywhere (the revocation check, Hub.CloseUser) emits
// "error" {code:"UNAUTHORIZED"} and a DISCONNECT (socket.io-client: "io server
// disconnect", no automatic reconnection); the token's exp emits "error" and closes
// the transport (the client reconnects, with a fresh token if it set socket.auth); a
// deleted project emits "error" {code:"PROJECT_NOT_FOUND", projectId} and ends that
// subscription only; a slow client (queue full for WriteTimeout, or a write past it)
// and shutdown close the transport.

// sioMaxSubscriptions bounds the projects one socket subscribes to (the dashboard
// subscribes to one). The socket's queue is shared by them.
const sioMaxSubscriptions = 32

// sioDisconnect is the server's DISCONNECT of the main namespace.
var sioDisconnect = []byte("41")

// sioError is the payload of an "error" event and of the err.data of connect_error.
type sioError struct {
	Code      httperr.Code `json:"code"`
	Message   string       `json:"message"`
	ProjectID string       `json:"projectId,omitempty"`
}

type sioProject struct {
	ProjectID string `json:"projectId"`
}

// sioEventPacket is the Engine.IO message of an "event" emit carrying a published
// event (JSON from the consumer, exactly as published).
func sioEventPacket(payload string) []byte {
	b := make([]byte, 0, len(payload)+12)
	b = append(b, `42["event",`...)
	b = append(b, payload...)
	return append(b, ']')
}

// sioEmit encodes an emit of name with one argument.
func sioEmit(name string, arg any) []byte {
	js, _ := json.Marshal([]any{name, arg}) // our own types: cannot fail
	return append([]byte("42"), js...)
}

// sioAck encodes the acknowledgement id of a client's emit with one argument.
func sioAck(id int, arg any) []byte {
	js, _ := json.Marshal([]any{arg})
	b := strconv.AppendInt([]byte("43"), int64(id), 10)
	return append(b, js...)
}

func sioResync(projectID string, missed int64) []byte {
	b := append(make([]byte, 0, 96), `42["resync",{"projectId":"`...)
	b = append(b, projectID...) // a canonical UUID
	b = append(b, `","missed":`...)
	b = strconv.AppendInt(b, missed, 10)
	return append(b, "}]"...)
}

func sioConnectError(r *rejection) []byte {
	js, _ := json.Marshal(struct {
		Message httperr.Code `json:"message"`
		Data    sioError     `json:"data"`
	}{r.code, sioError{Code: r.code, Message: r.message}})
	return append([]byte("44"), js...)
}

// reply queues a Socket.IO packet for this socket behind what is queued already. A
// queue too full for it means a client that does not read: it is closed as slow.
func (s *eioSession) reply(pkt []byte) bool {
	if s.queue.push(&message{sio: pkt, sioReply: true}) {
		return true
	}
	s.closeSlow()
	return false
}

func (s *eioSession) closeSlow() {
	s.h.m.slowClosed.WithLabelValues(string(transportSIO), slowQueueFull).Inc()
	s.h.logger.Info("live: Socket.IO client too slow; disconnected")
	s.terminate(closeSlow)
}

// emitTo emits name with arg, and acknowledges the client's emit with arg when it
// asked for it (ack ≥ 0).
func (s *eioSession) emitTo(name string, arg any, ack int) bool {
	if !s.reply(sioEmit(name, arg)) {
		return false
	}
	if ack >= 0 {
		return s.reply(sioAck(ack, arg))
	}
	return true
}

// socket is the connected socket's client, nil before CONNECT.
func (s *eioSession) socket() *client {
	s.sockMu.Lock()
	defer s.sockMu.Unlock()
	return s.anchor
}

// handleSIO handles one Socket.IO packet (the payload of an Engine.IO message); inMu
// is held. False: the session ended.
func (s *eioSession) handleSIO(p []byte) bool {
	if len(p) == 0 {
		s.terminate(closeProtocolFail)
		return false
	}
	typ, rest := p[0], p[1:]
	nsp := "/"
	if len(rest) > 0 && rest[0] == '/' {
		if i := bytes.IndexByte(rest, ','); i >= 0 {
			nsp, rest = string(rest[:i]), rest[i+1:]
		} else {
			nsp, rest = string(rest), nil
		}
		for i := 0; i < len(nsp); i++ { // echoed in "Invalid namespace": printable ASCII only
			if nsp[i] < 0x21 || nsp[i] > 0x7e {
				s.terminate(closeProtocolFail)
				return false
			}
		}
	}
	ack := -1
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n > 0 {
		if n > 9 || (typ != '2' && typ != '3') {
			s.terminate(closeProtocolFail)
			return false
		}
		ack, _ = strconv.Atoi(string(rest[:n]))
		rest = rest[n:]
	}
	switch typ {
	case '0': // CONNECT
		if nsp != "/" {
			js, _ := json.Marshal(map[string]string{"message": "Invalid namespace"})
			return s.reply(append([]byte("44"+nsp+","), js...))
		}
		return s.sioConnect(rest)
	case '1': // DISCONNECT: the client leaves
		if nsp == "/" {
			s.terminate(0)
			return false
		}
		return true
	case '2': // EVENT
		if nsp != "/" || s.socket() == nil {
			return true // not connected to that namespace: ignored, as socket.io does
		}
		return s.sioEvent(rest, ack)
	case '3', '4': // ACK (we ask for none), CONNECT_ERROR (server to client only)
		return true
	default: // BINARY_EVENT, BINARY_ACK (no binary here), garbage
		s.terminate(closeProtocolFail)
		return false
	}
}

// sioConnect authenticates the CONNECT and admits the socket.
func (s *eioSession) sioConnect(data []byte) bool {
	if s.socket() != nil {
		return true // connected already
	}
	h := s.h
	raw, rej := s.connectToken(data)
	var cl caller
	if rej == nil {
		cl, rej = h.verifyToken(s.ctx, raw)
	}
	if rej == nil {
		c := newClient(transportSIO, h.m.byTransport[transportSIO], uuid.Nil, cl.userID, cl.issuedAt, cl.expiresAt, 1, 1)
		c.queue, c.projectID, c.session, c.onKill = s.queue, "", cl.session, s.kickRun
		switch ok, closing := h.admit(c); {
		case ok:
			s.sockMu.Lock()
			s.anchor, s.subs = c, map[uuid.UUID]*client{}
			s.sockMu.Unlock()
			h.eio.connected(s)
			s.kickRun() // the expiry timer
			js, _ := json.Marshal(map[string]string{"sid": newSID()})
			return s.reply(append([]byte("40"), js...))
		case closing:
			rej = errClosing
		default:
			rej = errTooMany
		}
	}
	h.m.rejected.WithLabelValues(string(transportSIO), rej.reason).Inc()
	// socket.io-client closes the session itself after a connect_error (else the
	// connect timeout does); it may also try CONNECT again with other credentials.
	return s.reply(sioConnectError(rej))
}

// connectToken is the access token of a CONNECT: auth.token, else the handshake's
// Authorization header (exactly one Bearer credential, B50).
func (s *eioSession) connectToken(data []byte) (string, *rejection) {
	if len(bytes.TrimSpace(data)) > 0 {
		var auth map[string]json.RawMessage
		if json.Unmarshal(data, &auth) != nil {
			return "", errBadToken
		}
		if t, ok := auth["token"]; ok {
			var tok string
			if json.Unmarshal(t, &tok) != nil {
				return "", errBadToken
			}
			if scheme, rest, ok := strings.Cut(tok, " "); ok && strings.EqualFold(scheme, "Bearer") {
				tok = rest
			}
			if tok = strings.TrimSpace(tok); tok == "" {
				return "", errBadToken
			}
			return tok, nil
		}
	}
	switch len(s.auth) {
	case 0:
		return "", errNoToken
	case 1:
		scheme, tok, ok := strings.Cut(s.auth[0], " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", errBadToken
		}
		if tok = strings.TrimSpace(tok); tok != "" {
			return tok, nil
		}
	}
	return "", errBadToken
}

// verifyToken checks an access token as authenticate does for the other streams, the
// project aside: signature, issuer, audience, exp without leeway, the user's
// tokens_valid_after and the token's session.
func (h *Hub) verifyToken(ctx context.Context, raw string) (caller, *rejection) {
	var c caller
	claims, err := h.tokens.Verify(raw)
	if err != nil {
		return c, errBadToken
	}
	if claims.ExpiresAt == nil || !claims.ExpiresAt.After(time.Now()) {
		return c, errBadToken
	}
	c.userID, _ = claims.UserID()
	c.session = claims.Session()
	c.expiresAt = claims.ExpiresAt.Time
	if claims.IssuedAt != nil {
		c.issuedAt = claims.IssuedAt.Time
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.WriteTimeout)
	defer cancel()
	g, err := h.store.StreamGrant(ctx, c.userID, uuid.Nil, c.session)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return c, errBadToken
	case err != nil:
		if ctx.Err() == nil {
			h.logger.Warn("live: authorising a Socket.IO connection failed", "err", err)
		}
		return c, errUnavailable
	case !g.SessionLive, revoked(c.issuedAt, g.TokensValidAfter):
		return c, errBadToken
	}
	return c, nil
}

// sioEvent dispatches an EVENT: subscribe and unsubscribe; other names are ignored.
func (s *eioSession) sioEvent(data []byte, ack int) bool {
	var args []json.RawMessage
	var name string
	if json.Unmarshal(data, &args) != nil || len(args) == 0 || json.Unmarshal(args[0], &name) != nil {
		s.terminate(closeProtocolFail) // socket.io closes on a packet it cannot parse
		return false
	}
	switch name {
	case "subscribe":
		return s.subscribe(args[1:], ack)
	case "unsubscribe":
		return s.unsubscribe(args[1:], ack)
	}
	return true
}

// filterArg reads the label filters of a "subscribe" given as an object: members named
// as the labels (release, environment, sessionId, userId), strings, "" or null for none
// (filter.go). A project id given as a string has none.
func filterArg(args []json.RawMessage) (filter, *sioError) {
	var obj map[string]json.RawMessage
	if len(args) == 0 || json.Unmarshal(args[0], &obj) != nil {
		return filter{}, nil
	}
	var ls event.Labels
	for l := range ls {
		name := event.LabelField(event.Label(l)).Wire
		raw, ok := obj[name]
		if !ok || string(raw) == "null" {
			continue
		}
		var v string
		if json.Unmarshal(raw, &v) != nil {
			return filter{}, &sioError{Code: httperr.ValidationFailed, Message: "subscribe/" + name + " must be string"}
		}
		if v == "" {
			continue
		}
		if err := event.CheckLabel("subscribe/"+name, v); err != nil {
			return filter{}, &sioError{Code: httperr.ValidationFailed, Message: err.Message}
		}
		ls[l] = v
	}
	return newFilter(ls), nil
}

// setFilter replaces the filter of c, a client in its topic.
func (h *Hub) setFilter(c *client, f filter) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := c.topic; t != nil {
		if c.filter.on {
			t.nFiltered--
		}
		if f.on {
			t.nFiltered++
		}
	}
	c.filter = f
}

// projectArg reads the project id argument: a string, or {projectId: string}.
func projectArg(args []json.RawMessage) (uuid.UUID, *sioError) {
	var id string
	if len(args) > 0 {
		if json.Unmarshal(args[0], &id) != nil {
			var obj sioProject
			if json.Unmarshal(args[0], &obj) == nil {
				id = obj.ProjectID
			}
		}
	}
	if id == "" {
		return uuid.Nil, &sioError{Code: httperr.ValidationFailed, Message: "expected a project id (a string or {projectId})"}
	}
	pid, err := uuid.Parse(id)
	if err != nil { // a malformed id cannot be anyone's project, as for the other streams
		return uuid.Nil, &sioError{Code: httperr.ProjectNotFound, Message: "Project not found or access denied"}
	}
	return pid, nil
}

func (s *eioSession) subscribe(args []json.RawMessage, ack int) bool {
	h := s.h
	refuse := func(e sioError, reason string) bool {
		h.m.rejected.WithLabelValues(string(transportSIO), reason).Inc()
		return s.emitTo("error", e, ack)
	}
	pid, bad := projectArg(args)
	if bad != nil {
		return refuse(*bad, rejectNotFound)
	}
	answer := sioProject{ProjectID: pid.String()}
	f, bad := filterArg(args)
	if bad != nil {
		bad.ProjectID = answer.ProjectID
		return refuse(*bad, rejectBadRequest)
	}
	s.sockMu.Lock()
	anchor, existing, n := s.anchor, s.subs[pid], len(s.subs)
	s.sockMu.Unlock()
	if existing != nil {
		h.setFilter(existing, f) // subscribing again replaces the filter
		return s.emitTo("subscribed", answer, ack)
	}
	if n >= sioMaxSubscriptions {
		return refuse(sioError{Code: httperr.RateLimited, Message: "Too many subscriptions on this socket", ProjectID: answer.ProjectID}, rejectTooMany)
	}
	ctx, cancel := context.WithTimeout(s.ctx, h.cfg.WriteTimeout)
	err := h.store.CheckOwner(ctx, anchor.userID, pid)
	cancel()
	switch {
	case s.ctx.Err() != nil:
		return false
	case errors.Is(err, store.ErrNotFound): // another user's project is indistinguishable from a missing one (B74)
		return refuse(sioError{Code: httperr.ProjectNotFound, Message: "Project not found or access denied", ProjectID: answer.ProjectID}, rejectNotFound)
	case err != nil:
		h.logger.Warn("live: authorising a Socket.IO subscription failed", "err", err)
		return refuse(sioError{Code: httperr.Unavailable, Message: "Live stream temporarily unavailable", ProjectID: answer.ProjectID}, rejectUnavailable)
	}
	c := newClient(transportSIO, h.m.byTransport[transportSIO], pid, anchor.userID, anchor.issuedAt, anchor.expires, 1, 1)
	c.queue, c.session, c.sub, c.muted, c.onKill = s.queue, anchor.session, true, true, s.kickRun
	c.filter = f
	if !h.attach(c) {
		return refuse(sioError{Code: httperr.Unavailable, Message: "Server is shutting down", ProjectID: answer.ProjectID}, rejectUnavailable)
	}
	s.sockMu.Lock()
	s.subs[pid] = c
	s.sockMu.Unlock()
	channel := redisx.EventsChannel(pid)
	ready := h.join(c, channel)
	timer := time.NewTimer(h.cfg.SubscribeTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		// "subscribed" goes into the queue before any event of the project can.
		if h.unmute(c, &message{sio: sioEmit("subscribed", answer), sioReply: true}) {
			return ack < 0 || s.reply(sioAck(ack, answer))
		}
		s.closeSlow()
		return false
	case <-timer.C:
		h.logger.Warn("live: Redis did not confirm a subscription in time", "timeout", h.cfg.SubscribeTimeout)
		h.resetSubscription(channel)
		s.dropSub(pid, c)
		return refuse(sioError{Code: httperr.Unavailable, Message: "Live stream temporarily unavailable", ProjectID: answer.ProjectID}, rejectUnavailable)
	case <-c.killed: // revoked while waiting: checkClients handles it
		return true
	case <-s.done:
		return false
	}
}

// unmute queues m for c and lets the dispatcher offer c events from then on, in one
// step under the topics' lock, so that no event precedes m.
func (h *Hub) unmute(c *client, m *message) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.muted = false
	return c.queue.push(m)
}

// dropSub removes and releases subscription c of project pid, if it is still there.
func (s *eioSession) dropSub(pid uuid.UUID, c *client) {
	s.sockMu.Lock()
	if s.subs[pid] != c {
		s.sockMu.Unlock()
		return
	}
	delete(s.subs, pid)
	s.sockMu.Unlock()
	s.h.release(c)
}

func (s *eioSession) unsubscribe(args []json.RawMessage, ack int) bool {
	pid, bad := projectArg(args)
	if bad != nil {
		return s.emitTo("error", *bad, ack)
	}
	s.sockMu.Lock()
	c := s.subs[pid]
	s.sockMu.Unlock()
	if c != nil {
		s.dropSub(pid, c)
	}
	// Events of the project queued before this are still delivered, before the answer.
	return s.emitTo("unsubscribed", sioProject{ProjectID: pid.String()}, ack)
}

// checkClients acts on the socket's clients that were killed (run loop): a deleted
// project ends its subscription; anything else (logout, shutdown, slow) the session.
func (s *eioSession) checkClients() {
	var gone []*client
	var fatal *client
	killed := func(c *client) bool {
		select {
		case <-c.killed:
			return true
		default:
			return false
		}
	}
	s.sockMu.Lock()
	if s.anchor != nil && killed(s.anchor) {
		fatal = s.anchor
	}
	for pid, c := range s.subs {
		if !killed(c) {
			continue
		}
		if c.killCode == ws4004ProjectGone {
			delete(s.subs, pid)
			gone = append(gone, c)
		} else if fatal == nil {
			fatal = c
		}
	}
	s.sockMu.Unlock()
	for _, c := range gone {
		s.h.release(c)
		s.reply(sioEmit("error", sioError{Code: httperr.ProjectNotFound, Message: "Project not found or access denied", ProjectID: c.projectID}))
	}
	if fatal == nil {
		return
	}
	switch {
	case fatal.slowReason != "":
		s.h.m.slowClosed.WithLabelValues(string(transportSIO), fatal.slowReason).Inc()
		s.terminate(closeSlow)
	case fatal.killCode == closeTokenExpired: // logged out: no automatic reconnection
		s.finish(closeTokenExpired, sioEmit("error", sioError{Code: httperr.Unauthorized, Message: fatal.killReason}), sioDisconnect)
	case fatal.killCode == closeGoingAway:
		s.finish(closeGoingAway)
	default:
		s.terminate(fatal.killCode)
	}
}
