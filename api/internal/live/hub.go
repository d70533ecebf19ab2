package live

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/auth"
)

// redisChannelSize is the go-redis PubSub buffer (docs/reliability.md "Redis and live
// stream"). The dispatch loop never blocks, so it only absorbs scheduling hiccups.
const redisChannelSize = 10_000

// Hub serves the live streams of one API instance: one Redis subscription per project
// with at least one local client, fanned out in process to that project's WebSocket and
// SSE clients. See the package documentation for the design.
type Hub struct {
	cfg    Config
	tokens *auth.Tokens
	store  *store.Store // the streams' queries: authorisation, revocation, the SSE replay
	logger *slog.Logger
	m      *metrics
	origin map[string]struct{}

	pubsub *redis.PubSub

	mu     sync.RWMutex // guards topics and every topic's fields
	topics map[string]*topic

	connMu  sync.Mutex // guards closing, perUser, clients, replaying
	closing bool
	perUser map[uuid.UUID]int
	clients map[*client]struct{}

	// replaySlots holds one token per running SSE replay (ReplayConcurrency), and
	// replaying counts them per user (ReplayPerUser).
	replaySlots chan struct{}
	replaying   map[uuid.UUID]int

	// eio holds the Engine.IO sessions of the Socket.IO endpoint (eio.go).
	eio eioSessions

	kick      chan struct{}
	stop      chan struct{}
	loops     sync.WaitGroup // dispatch, reconcile, revocation
	streams   sync.WaitGroup // one per admitted stream, until all its goroutines end
	closeOnce sync.Once
}

// New starts a Hub: it opens the PubSub connection (lazily, on the first subscription)
// and its dispatch, reconcile and revocation loops. Stop it with Close.
func New(cfg Config, deps Deps) (*Hub, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := deps.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h := &Hub{
		cfg:     cfg,
		tokens:  deps.Tokens,
		store:   store.New(deps.Pool),
		logger:  logger,
		m:       newMetrics(deps.Registerer),
		origin:  make(map[string]struct{}, len(cfg.AllowedOrigins)),
		topics:  map[string]*topic{},
		perUser: map[uuid.UUID]int{},
		clients: map[*client]struct{}{},

		replaySlots: make(chan struct{}, cfg.ReplayConcurrency),
		replaying:   map[uuid.UUID]int{},
		kick:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
	}
	for _, o := range cfg.AllowedOrigins {
		h.origin[normalizeOrigin(o)] = struct{}{}
	}
	// One PubSub for the whole Hub. With no channel yet it does not connect; the first
	// Subscribe does. ChannelWithSubscriptions also delivers subscribe confirmations,
	// which is how joiners learn their channel is live and how reconnects are seen.
	h.pubsub = deps.Redis.Subscribe(context.Background())
	ch := h.pubsub.ChannelWithSubscriptions(redis.WithChannelSize(redisChannelSize))
	h.loops.Add(3)
	go h.dispatchLoop(ch)
	go h.reconcileLoop()
	go h.revocationLoop()
	return h, nil
}

// Close closes every stream (WebSocket close 1001 "going away", SSE responses ended),
// refuses new ones with 503, waits for the streams' goroutines to finish (bounded by ctx;
// past it the remaining WebSocket connections are closed abruptly) and releases the
// Redis subscription. Call it before http.Server.Shutdown (hijacked WebSocket
// connections are invisible to Shutdown), e.g. from Server.RegisterOnShutdown.
func (h *Hub) Close(ctx context.Context) {
	h.closeOnce.Do(func() {
		h.connMu.Lock()
		h.closing = true
		open := make([]*client, 0, len(h.clients))
		for c := range h.clients {
			open = append(open, c)
		}
		h.connMu.Unlock()
		for _, c := range open {
			c.kill(closeGoingAway, "going away", "")
		}
		h.eio.terminateAll() // Socket.IO sessions not yet authenticated have no client
		done := make(chan struct{})
		go func() { h.streams.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			h.logger.Warn("live: streams still open at the shutdown deadline; closing them abruptly")
			h.connMu.Lock()
			for c := range h.clients {
				c.force()
			}
			h.connMu.Unlock()
			h.eio.forceAll()
		}
		close(h.stop)
		_ = h.pubsub.Close() // ends the go-redis receive loop, which closes ch
		loopsDone := make(chan struct{})
		go func() { h.loops.Wait(); close(loopsDone) }()
		select {
		case <-loopsDone:
		case <-ctx.Done():
		}
	})
}

// admit registers a stream that passed authentication: it enforces MaxConnsPerUser and
// refuses streams while closing. The caller must call release exactly once.
func (h *Hub) admit(c *client) (ok bool, closing bool) {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	if h.closing {
		return false, true
	}
	if h.perUser[c.userID] >= h.cfg.MaxConnsPerUser {
		return false, false
	}
	h.perUser[c.userID]++
	h.clients[c] = struct{}{}
	h.streams.Add(1)
	c.tm.connections.Inc()
	return true, false
}

// attach registers a Socket.IO subscription (c.sub) of an admitted socket: it is
// checked for revocation and closed by Close and CloseUser like a stream, but counts
// against neither MaxConnsPerUser nor the connections gauge (its socket does). It
// reports false while closing. The caller must call release exactly once.
func (h *Hub) attach(c *client) bool {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	if h.closing {
		return false
	}
	h.clients[c] = struct{}{}
	h.streams.Add(1)
	return true
}

func (h *Hub) release(c *client) {
	h.leave(c)
	h.connMu.Lock()
	if !c.sub {
		if n := h.perUser[c.userID]; n <= 1 {
			delete(h.perUser, c.userID)
		} else {
			h.perUser[c.userID] = n - 1
		}
	}
	delete(h.clients, c)
	h.connMu.Unlock()
	if !c.sub {
		c.tm.connections.Dec()
	}
	h.streams.Done()
}

// revocationLoop closes open streams whose session was logged out (or revoked for
// refresh-token reuse), whose user logged out everywhere (tokens issued before
// users.tokens_valid_after) or was deleted, or whose project was deleted, within
// RevocationCheckInterval (docs/reliability.md B55). A few queries per interval cover them all.
func (h *Hub) revocationLoop() {
	defer h.loops.Done()
	t := time.NewTicker(h.cfg.RevocationCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			if err := h.checkRevocations(); err != nil {
				h.logger.Warn("live: revocation check failed", "err", err)
			}
		}
	}
}

func (h *Hub) checkRevocations() error {
	h.connMu.Lock()
	open := make([]*client, 0, len(h.clients))
	for c := range h.clients {
		open = append(open, c)
	}
	h.connMu.Unlock()
	if len(open) == 0 {
		return nil
	}
	userSet := map[uuid.UUID]struct{}{}
	projectSet := map[uuid.UUID]struct{}{}
	sessionSet := map[uuid.UUID]struct{}{}
	for _, c := range open {
		userSet[c.userID] = struct{}{}
		if c.project != uuid.Nil { // a Socket.IO socket: its subscriptions name projects
			projectSet[c.project] = struct{}{}
		}
		if c.session != uuid.Nil {
			sessionSet[c.session] = struct{}{}
		}
	}
	users := make([]uuid.UUID, 0, len(userSet))
	for u := range userSet {
		users = append(users, u)
	}
	projects := make([]uuid.UUID, 0, len(projectSet))
	for p := range projectSet {
		projects = append(projects, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.WriteTimeout)
	defer cancel()
	sessions := make([]uuid.UUID, 0, len(sessionSet))
	for id := range sessionSet {
		sessions = append(sessions, id)
	}
	st, err := h.store.StreamState(ctx, users, projects, sessions)
	if err != nil {
		return err
	}
	for _, c := range open {
		va, ok := st.TokensValidAfter[c.userID]
		_, sessionLive := st.LiveSessions[c.session]
		switch {
		case !ok || revoked(c.issuedAt, va), c.session != uuid.Nil && !sessionLive:
			c.kill(closeTokenExpired, "token revoked", "")
		case c.project != uuid.Nil && st.Owner[c.project] != c.userID:
			c.kill(ws4004ProjectGone, "project not found", "")
		}
	}
	return nil
}

// ws4004ProjectGone closes streams of a project that was deleted (or changed owner).
const ws4004ProjectGone = 4004

// revoked reports whether a token issued at iat predates the user's tokens_valid_after.
// JWT iat has whole seconds, so a token issued in the same second as the cut-off is
// ambiguous; it is accepted, so that logging in right after "logout everywhere" works.
func revoked(iat, validAfter time.Time) bool {
	return iat.Before(validAfter.Truncate(time.Second))
}

// CloseUser closes every open stream of the user at once, as the revocation check
// would (WebSocket close "token revoked", SSE response ended): "log out everywhere"
// (POST /auth/logout-all) calls it after revoking the sessions, so the streams do not
// outlive the logout by up to RevocationCheckInterval. It returns how many it closed.
func (h *Hub) CloseUser(userID uuid.UUID) int {
	h.connMu.Lock()
	var open []*client
	for c := range h.clients {
		if c.userID == userID {
			open = append(open, c)
		}
	}
	h.connMu.Unlock()
	for _, c := range open {
		c.kill(closeTokenExpired, "token revoked", "")
	}
	return len(open)
}
