package api

import (
	"fmt"

	"github.com/pulseboard/pulseboard/api/internal/live"
	"github.com/pulseboard/pulseboard/pkg/auth"
)

// NewLive builds the WebSocket and SSE live streams (api/internal/live) that the api
// serves at /realtime/{projectId}, and the Socket.IO endpoint at /socket.io/ (it
// implements SocketIOStreams), for the host to pass as Deps.Live. They must verify
// tokens with the same *auth.Tokens as the api (in development the secret is random per
// process), and they allow the api's CORS origins.
func NewLive(cfg Config, deps Deps, tokens *auth.Tokens) (LiveStreams, error) {
	lc := cfg.Live
	lc.AllowedOrigins = cfg.CORSOrigins
	h, err := live.New(lc, live.Deps{
		Tokens: tokens, Pool: deps.Pool, Redis: deps.Redis, Logger: deps.Logger.With("component", "api"), Registerer: deps.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("live streams: %w", err)
	}
	return h, nil
}
