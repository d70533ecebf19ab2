// Package live serves PulseBoard's live streams: GET /realtime/{projectId} (WebSocket,
// github.com/gobwas/ws), GET /realtime/{projectId}/sse (Server-Sent Events) and
// /socket.io/ (Socket.IO v4 on Engine.IO 4, for the reference dashboard's
// socket.io-client; see "Socket.IO" below, sio.go and eio.go). The
// consumer PUBLISHes every newly stored event's JSON to the Redis channel
// project:<id>:events; a Hub relays it to that project's connected clients (docs/api.md "Live
// streams", docs/reliability.md promise 13).
//
// # Before a stream starts
//
// Everything that can refuse a stream happens before the upgrade and answers JSON
// ({"success":false,"code","message"}): an Origin outside Config.AllowedOrigins is 403
// FORBIDDEN_ORIGIN (no Origin means a non-browser client, allowed; this is the CSWSH
// defence gobwas leaves to us, W3); the access token, from Authorization: Bearer, the
// subprotocol pair "bearer, <jwt>" (the server then selects "bearer") or ?token=, must
// verify, must not be past exp (the parser's 30 s leeway is not granted to streams),
// must not predate users.tokens_valid_after and must not name a session (sid) that was
// logged out, else 401; a project that is missing, not the
// caller's, or not a UUID is 404 PROJECT_NOT_FOUND; more than MaxConnsPerUser streams is
// 429; a Redis subscription that is not confirmed within SubscribeTimeout is 503.
//
// # One subscription per project
//
// A Hub owns one go-redis PubSub connection. A project's topic is created when its
// first local client joins and goes when its last leaves; the reconcile loop, the only
// sender of SUBSCRIBE and UNSUBSCRIBE, makes Redis follow the topics, so no request ever
// waits on Redis while holding a lock, and commands reach Redis in the order the state
// changes were decided. A joining client waits until Redis has confirmed its channel's
// SUBSCRIBE (ChannelWithSubscriptions delivers the confirmations), so that everything
// published after "connected" reaches it. A confirmation that arrives with none of our
// commands pending is go-redis re-subscribing after a reconnect: what was published in
// between is lost, so that topic's clients are sent {"type":"resync","missed":-1}
// (docs/reliability.md R2). One client leaving never touches the others' subscription (the old
// backend unsubscribed everyone).
//
// # Fan-out, queues and slow clients
//
// The dispatch loop is the only reader of the PubSub channel. For each message it builds
// the WebSocket frame and the SSE block once and offers the same pointer to every client
// of the project with a non-blocking push into the client's bounded queue, so one slow
// client never delays the loop or the others (R1). The queue is bounded in messages
// (QueueSize) and in bytes (QueueBytes), sized so that a whole consumer batch, which
// arrives back to back (the consumer publishes a stored batch of up to 5000 events in
// one pipeline), fits for a client that reads as fast as the events come; it grows on
// demand and is released when it drains, so an idle client holds none of it. The
// writer takes up to 256 messages (about 64 KiB) at a time: one writev for WebSocket,
// one flush for SSE. A full queue drops the message and counts it; the client then gets
// {"type":"resync","missed":N}: queued by the dispatcher together with the next message
// that fits (so it sits where the gap is), or written by the client's writer as soon as
// it has drained its queue. A client whose queue stays full for WriteTimeout is closed
// (WebSocket 1008); one that stops reading altogether fails its next write after
// WriteTimeout and is closed. Memory per client is therefore bounded by its queue's caps
// (the encodings themselves are shared by the project's clients) plus the kernel's
// socket buffers, which a WebSocket stream caps at 64 KiB (SO_SNDBUF) instead of letting
// them autotune to megabytes per stalled client.
//
// # Goroutines per connection
//
// WebSocket: two. gobwas/ws does not synchronise writes (W4), so a writer goroutine owns
// every write: events (batched into one writev), pings every PingInterval, pongs, and the
// close frame, each under a write deadline (W5). A reader goroutine reads frames with a
// wsutil.Reader (MaxFrameSize and MaxMessageSize, plus its own message cap: never
// ws.ReadFrame or wsutil.ReadClientData on untrusted input, W1/W2; CheckUTF8, W6) under a
// read deadline of 2.5 × PingInterval, and answers control frames through the writer
// (wsutil.ControlFrameHandler into a buffer). Oversize → 1009, invalid UTF-8 → 1007,
// protocol errors → 1002, a frame flood → 1008. The upgrade handler itself returns, so
// net/http's connection goroutine is not kept. permessage-deflate is never negotiated
// (W7). SSE: one, the handler's own.
//
// # Closing
//
// A stream is closed at its token's exp (WebSocket 4001 "token expired"; SSE ends the
// response), when its session is logged out, its user's tokens are revoked or the user
// or project is deleted (checked for all streams every RevocationCheckInterval; 4001 or
// 4004), and by
// Hub.Close (1001 "going away").
//
// # SSE replay and the splice
//
// Each SSE event carries id: <cursor>, an opaque encoding of (received_at, id), the order
// the events table is indexed in. On reconnect with Last-Event-ID (or ?lastEventId=) the
// stream, already subscribed and with live messages queuing, replays from Postgres the
// newest events after the cursor within ReplayWindow that fit both ReplayLimit (events)
// and ReplayMaxBytes (bytes written), oldest first (ORDER BY received_at, id). If more
// were missed than that, a resync with their count goes first. Then the queue is
// drained: a live message whose event id was replayed is skipped. Comparing ids rather
// than cursors matters: an event can be published after a later-received one (several
// consumers), and dropping every live event whose cursor is below the last replayed one
// would then lose it. Because the subscription is confirmed before the replay's
// snapshot is taken, every event committed after the snapshot is in the queue (the
// consumer publishes after its commit), and every one committed before is in the
// replay or counted in the resync: no gap, no duplicate. A queue that overflows during
// the replay is reported by a resync like any other.
//
// A stream with label filters (filter.go) replays only matching events: the filter is
// a condition of every replay query. The queries themselves are api/internal/store's
// (replay.go), where driver errors are mapped, as for every other query of the api; so
// are the streams' authorisation and revocation checks (live.go): this package runs no
// SQL of its own.
//
// The replay never holds its rows (issue 16 item 2). It runs in one REPEATABLE READ,
// READ ONLY transaction: a first query reads only the positions and estimated sizes
// of the newest ReplayLimit+1 events (newest first) and picks where the replay starts
// (the estimate, the jsonb text plus a fixed overhead, is an upper bound of the
// compact encoding); a count query sizes the resync; a second query, in the same
// snapshot, streams exactly the chosen events oldest first, each written to the stream
// as it is read (the api holds one event and its encoding at a time). Should an event
// still render larger than estimated, the replay stops before ReplayMaxBytes and sends
// a resync with the count not sent. What the splice keeps is the sorted ids of the
// replayed events: 16 bytes × at most ReplayLimit.
//
// A replay holds a Postgres connection while it streams, so at most ReplayConcurrency
// run at once on an instance, ReplayPerUser of one user's. A reconnect waits up to a
// second for a slot; without one it is sent {"type":"resync","missed":-1} (reason
// replay_busy) and its stream goes on with live events: the client refetches through
// the query API. (A 503 was not chosen: EventSource does not reconnect after a non-200
// answer, so a browser would lose its live stream.) The whole replay (the wait, the
// queries and the writes) has one deadline, ReplayTimeout, set as the connection's
// write deadline once rather than a fresh WriteTimeout per write: a client that does
// not read, or reads a trickle, is disconnected when it passes, and its slot, its
// connection and its goroutine are released (the client reconnects with the id of the
// last event it did read). WebSocket streams have no replay.
//
// # Socket.IO
//
// A Socket.IO socket authenticates at its CONNECT (not before an upgrade: the
// protocol has no other place for auth.token) and is then a client of its own, with no
// project, admitted like a stream (MaxConnsPerUser, the connections gauge, Close,
// CloseUser and the revocation check). Each subscribed project is another client
// (sub), attached rather than admitted, joined to the project's topic like any stream
// and sharing the socket's one queue, so a socket's memory is bounded by QueueSize and
// QueueBytes whatever it subscribes to, and the dispatcher's fan-out is unchanged (a
// third encoding, the Engine.IO packet, built once per event when a Socket.IO client
// needs it). A subscription is muted until its "subscribed" reply is queued, under the
// topics' lock, so no event precedes it. The session's writer is the polling GET or,
// once upgraded, the session's run goroutine; eio.go explains the goroutines and why no
// library was used.
//
// # Metrics
//
// pulseboard_api_live_connections{transport}, _messages_sent_total{transport},
// _messages_dropped_total{transport}, _resyncs_sent_total{transport,reason},
// _slow_clients_closed_total{transport,reason}, _rejected_total{transport,reason},
// _replayed_events_total, _replays_running, _redis_subscriptions and
// _redis_resubscriptions_total (resync reasons: overflow, reconnect, replay,
// replay_busy); no
// label carries a project, user or token. transport is ws, sse or socketio.
package live
