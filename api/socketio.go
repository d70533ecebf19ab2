package api

import "net/http"

// SocketIOStreams is implemented by a LiveStreams that also serves the Socket.IO v4
// endpoint (the live Hub does: api/internal/live/sio.go, eio.go), for the reference
// dashboard's socket.io-client (issue 17 item 1). The api mounts it at GET and POST
// /socket.io/ (Engine.IO polling and the WebSocket upgrade); like the other live
// streams it authenticates each socket itself and is closed by LiveStreams.Close.
type SocketIOStreams interface {
	ServeSocketIO(w http.ResponseWriter, r *http.Request)
}
