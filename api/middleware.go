package api

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// reqInfo travels in the request context: the request id, and the route the router
// matched (filled in by the router, read by the outermost middleware for logs and
// metrics, whatever copies of *http.Request were made in between).
type reqInfo struct {
	id    string
	route string
}

type ctxKey struct{}

func info(ctx context.Context) *reqInfo {
	i, _ := ctx.Value(ctxKey{}).(*reqInfo)
	return i
}

func requestID(ctx context.Context) string {
	if i := info(ctx); i != nil {
		return i.id
	}
	return ""
}

// Route labels for requests no pattern matched.
const (
	routeUnmatched = "unmatched"
	routePreflight = "preflight"
)

// instrument is the outermost middleware: request id, the headers every response
// carries, panic recovery, one JSON log line and the metrics per request.
func (s *Service) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &reqInfo{id: incomingRequestID(r), route: routeUnmatched}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, ri))
		rw := &responseWriter{ResponseWriter: w}
		h := rw.Header()
		h.Set("X-Request-Id", ri.id)
		h.Set("X-Content-Type-Options", "nosniff")
		// Everything here is per-user data or auth; nothing may be cached (B70).
		h.Set("Cache-Control", "no-store")
		// net/http frames a request with Transfer-Encoding: chunked even when it also
		// carried a Content-Length (it drops that header). A front end that believed the
		// length would see another request boundary: request smuggling (docs/reliability.md
		// H6, B40). RFC 9112 §6.3: close the connection after answering such a request.
		// Chunked requests therefore lose keep-alive; browsers and the SDKs send lengths.
		if len(r.TransferEncoding) > 0 {
			h.Set("Connection", "close")
		}

		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.logger.Error("panic in handler", "request_id", ri.id, "route", ri.route, "panic", p, "stack", string(debug.Stack()))
				if !rw.wroteHeader && !rw.hijacked {
					s.writeError(rw, r, errors.New("panic"))
				}
			}
			status := rw.status
			switch {
			case rw.hijacked && status == 0:
				status = http.StatusSwitchingProtocols
			case status == 0:
				status = http.StatusOK
			}
			d := time.Since(start)
			s.m.requests.WithLabelValues(ri.route, strconv.Itoa(status)).Inc()
			s.m.duration.WithLabelValues(ri.route).Observe(d.Seconds())
			// Only the path: query strings carry API keys (GET /events) and tokens
			// (live streams), headers carry credentials; none of them is ever logged.
			s.logger.Info("request", "request_id", ri.id, "method", r.Method, "path", r.URL.Path, "route", ri.route,
				"status", status, "bytes", rw.bytes, "duration_ms", float64(d.Microseconds())/1000, "ip", s.clientIP(r).String())
		}()
		next.ServeHTTP(rw, r)
	})
}

// incomingRequestID keeps a caller's X-Request-Id when it is short and plain (a proxy's
// id ties logs together), else makes a new one.
func incomingRequestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 64 && strings.Trim(id,
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") == "" {
		return id
	}
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cors applies the CORS_ORIGIN allow-list (B68): an allowed origin is echoed with
// credentials; any other origin, including "null", gets no CORS headers at all; "*" is
// never sent. Preflights are answered here. It only sets headers, so WebSocket upgrades
// and SSE streams pass through untouched.
func (s *Service) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		allowed := origin != "" && s.origins[origin]
		h := w.Header()
		h.Add("Vary", "Origin")
		if allowed {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			info(r.Context()).route = routePreflight
			if allowed {
				h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
				if req := r.Header.Get("Access-Control-Request-Headers"); req != "" && headerList(req) {
					h.Set("Access-Control-Allow-Headers", req)
				}
				h.Set("Access-Control-Max-Age", "600")
				h.Add("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers")
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// headerList reports whether s looks like a list of header names (so that reflecting it
// cannot inject anything).
func headerList(s string) bool {
	if len(s) > 512 {
		return false
	}
	for _, c := range s {
		if !(c == ',' || c == ' ' || c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// router dispatches to the ServeMux, answering unknown routes with 404 NOT_FOUND and
// known paths with the wrong method with 405 METHOD_NOT_ALLOWED and Allow, in the API's
// JSON error shape (the ServeMux's own answers are plain text). It records the matched
// pattern, a bounded set, as the route of the request for logs and metrics.
func (s *Service) router(w http.ResponseWriter, r *http.Request) {
	_, pattern := s.mux.Handler(r)
	if pattern != "" {
		info(r.Context()).route = pattern
		s.mux.ServeHTTP(w, r)
		return
	}
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.writeError(w, r, newError(httperr.MethodNotAllowed, "Method "+r.Method+" is not allowed on "+r.URL.Path))
		return
	}
	s.writeError(w, r, newError(httperr.NotFound, "Route "+r.Method+":"+r.URL.Path+" not found"))
}

// clientIP is the peer address, or, when the peer is a trusted proxy
// (API_TRUSTED_PROXIES), the right-most X-Forwarded-For address that is not itself a
// trusted proxy (pkg/clientip, which the ingestor uses too).
func (s *Service) clientIP(r *http.Request) netip.Addr {
	peer, _ := netip.ParseAddrPort(r.RemoteAddr)
	return s.clientIPs.ClientAddr(peer.Addr(), r.Header.Values("X-Forwarded-For"))
}

// responseWriter records the status and size for logs and metrics. It keeps every
// optional capability of the writer it wraps: Flush and Hijack pass through (SSE and
// WebSocket handlers type-assert them) and Unwrap lets http.ResponseController reach
// SetReadDeadline, SetWriteDeadline and EnableFullDuplex.
type responseWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
	hijacked    bool
}

func (w *responseWriter) WriteHeader(code int) {
	if !w.wroteHeader && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		w.wroteHeader = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Flush implements http.Flusher.
func (w *responseWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked = true
	}
	return conn, brw, err
}

// Unwrap is for http.ResponseController.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
