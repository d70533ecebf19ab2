// Package api is PulseBoard's query API: accounts and sessions, projects, event queries,
// stats and alert history, and the mount point of the live WebSocket/SSE streams
// (api/internal/live, behind the LiveStreams interface). New(cfg, deps).Run(ctx) is the
// whole service; the standalone binary (cmd/api) and the all-in-one wire exactly this.
// docs/api.md is the contract; openapi.json (served at GET /openapi.json) describes it.
//
// # Layering
//
// Thin net/http in the miniflux style: ServeMux method patterns; each handler decodes,
// validates, calls the store and responds; handlers return errors and writeError (in
// respond.go) is the one place mapping them to statuses and JSON bodies. Storage errors
// are mapped to sentinels at the storage boundary (internal/store). The middleware, from
// the outside in: request id, security headers, panic recovery, access log and metrics
// (instrument); CORS (cors); routing with JSON 404/405 answers (router). The
// ResponseWriter wrapper passes Flush and Hijack through and implements Unwrap, so SSE
// and WebSocket handlers work behind it.
//
// # Sessions
//
// Access tokens are pkg/auth HS256 JWTs (15 min) sent as Bearer; each request also
// checks that the user exists, that the token was issued after the user's
// tokens_valid_after and that its session was not logged out (internal/authn; the live
// streams make the same checks). The host
// builds the issuer with NewAccessTokens and passes it to both the api (Deps.Tokens) and
// the live streams, so that in development they share the random secret.
//
// Refresh tokens are opaque: 32 random bytes (base64url), only their SHA-256 stored, in
// the old backend's cookie (refreshToken, Path=/auth, HttpOnly, SameSite=Strict, Secure
// in production, Max-Age = JWT_REFRESH_EXPIRES). A JWT can therefore never be used as a
// refresh token, nor a refresh token as an access token. Login starts a token family;
// every refresh rotates: the presented token is marked rotated (rotated_at,
// replaced_by) and a new one is issued in the same family, in one transaction that locks
// the token's row.
//
// Reuse policy. Presenting a rotated token again means it was copied — unless two tabs
// of one browser refreshed at the same moment. So:
//   - within API_REFRESH_REUSE_GRACE (default 10 s) of its rotation, a rotated token
//     is answered with the same successor the first refresh got (issue 17 item 6):
//     successors are derived from the presented token (successorToken in auth.go:
//     HMAC-SHA256 under a key derived from the access-token secret), so tabs that
//     refresh at once with the cookie they share, on any replica, all get the one new
//     token, and a chain of rotations within the grace is followed a few links. A
//     refused refresh never sets or clears the cookie.
//   - after the grace window, it revokes the whole family (every token of it, including
//     the current one), counts pulseboard_api_refresh_reuse_detected_total and logs a
//     security event; the user must log in again (RFC 9700 §4.14.2).
//
// There are never two valid tokens in one family. Logout revokes the presented token's
// family and clears the cookie. The family is the session: access tokens carry its id
// (sid), so a logout (or a detected reuse) also ends the session's access tokens at
// once and its live streams within LIVE_REVOCATION_CHECK_INTERVAL, not at exp
// (docs/reliability.md B55); the user's other sessions are untouched. /auth/refresh and /auth/logout refuse a request whose
// Origin header is present and not in CORS_ORIGIN (403 FORBIDDEN_ORIGIN), on top of
// SameSite=Strict.
//
// # Passwords and login throttling
//
// bcrypt, cost 12 by default (API_BCRYPT_COST; hashes of a lower cost are upgraded at
// login); more than 72 bytes is a 400 before any hashing; hashing runs under a
// semaphore (API_HASH_CONCURRENCY, default GOMAXPROCS) and a request that cannot get a
// slot within API_HASH_WAIT gets 503 with Retry-After. Logins for unknown e-mails
// compare against a dummy hash, and answer exactly like a wrong password.
//
// Failed logins are counted per account (hash of the normalised e-mail) and per client
// IP (IPv6: per /64; X-Forwarded-For only from API_TRUSTED_PROXIES) in Redis, shared by
// every instance (internal/throttle). After 5 failures on an account (20 from an IP),
// each further failure locks it for 1 s, doubling, at most 15 min; a locked account or
// IP gets 429 RATE_LIMITED with Retry-After without its password being checked, and such
// attempts do not extend the lock. Failures are forgotten an hour after the last one; a
// successful login forgets the account's. There is no permanent lockout. If Redis
// fails, an in-process table takes over (per instance), so a Redis outage never blocks
// logins.
//
// # Shutdown
//
// The host sets readiness to draining, then cancels Run's context. Run shuts the
// http.Server down (listener closed, in-flight requests finished) and calls
// LiveStreams.Close at the same time, because Shutdown neither waits for hijacked
// WebSocket connections nor sees SSE streams as idle; after API_SHUTDOWN_TIMEOUT the
// remaining connections are closed.
package api
