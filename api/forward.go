package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/pulseboard/pulseboard/pkg/connlimit"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// One public origin (issue 17 item 2). The old backend served /ingest and the api on one
// origin, and SDKs pointed at it drop events that get a 404. With API_INGEST_URL set, the
// api forwards the ingest routes to the ingestor with net/http/httputil.ReverseProxy:
//
//   - which paths: /ingest, /ingest/… and /analytics/… (any method, so the ingestor's
//     own preflight answers and 405s apply), outside the api's CORS middleware and body
//     cap: the ingestor's CORS policy (any origin, never credentials) and its limits are
//     the ones that hold, exactly as on its own origin;
//   - bodies are streamed both ways (nothing is buffered in the api; Content-Encoding
//     and every end-to-end header pass unchanged, Cookie excepted: ingest is
//     authenticated by key);
//   - the client: X-Forwarded-For and Forwarded (for=) are replaced with the one client
//     address the api itself believes (the TCP peer, or behind API_TRUSTED_PROXIES the
//     address they report), so the ingestor, trusting the api in INGEST_TRUSTED_PROXIES,
//     keys its unknown-key guard on the real client whichever header it reads, and a
//     client cannot pick the address by sending either header;
//   - the ingestor's answers, errors included, pass through unchanged; when it cannot be
//     reached or does not answer in time the api answers 503 UNAVAILABLE with
//     Retry-After (counted in pulseboard_api_ingest_forward_errors_total).
//
// Without API_INGEST_URL those paths answer 404 NOT_FOUND, as before, with a message
// saying that this api does not forward ingest.

// Bounds of the forwarding transport. The api's own API_WRITE_TIMEOUT (30s) bounds a
// whole forwarded request; the ingestor answers within INGEST_PRODUCE_TIMEOUT (5s) once
// it has the body.
const (
	forwardDialTimeout           = 5 * time.Second
	forwardResponseHeaderTimeout = 20 * time.Second
	// Below the ingestor's INGEST_IDLE_TIMEOUT (60s): the api closes an idle
	// connection before the ingestor does, so a request never races its close.
	forwardIdleConnTimeout = 50 * time.Second
	forwardMaxIdleConns    = 128
	// Below the ingestor's INGEST_MAX_CONNS_PER_IP (1024): every forwarded request
	// comes from the api's address. More concurrent requests wait for a connection.
	forwardMaxConns           = 512
	forwardMaxResponseHeaders = 64 << 10
)

// Reasons of pulseboard_api_ingest_forward_errors_total.
const (
	forwardUnreachable = "unreachable" // no connection: refused, no route, DNS
	forwardTimeout     = "timeout"     // no answer within forwardResponseHeaderTimeout
	forwardBroken      = "broken"      // the connection failed during the exchange
)

// isIngestPath reports whether the api forwards a request for p to the ingestor: the
// ingest routes and the analytics routes, in canonical form only (a path with dot
// segments or doubled slashes is the api's, which answers 404).
func isIngestPath(p string) bool {
	if !(p == "/ingest" || strings.HasPrefix(p, "/ingest/") || strings.HasPrefix(p, "/analytics/")) {
		return false
	}
	return path.Clean(p) == p
}

// ingestRoute is the route label of a forwarded request (bounded: never the path itself).
func ingestRoute(p string) string {
	switch {
	case p == "/ingest":
		return "/ingest"
	case p == "/ingest/batch":
		return "/ingest/batch"
	case strings.HasPrefix(p, "/analytics/"):
		return "/analytics/{kind}"
	}
	return "/ingest/{other}"
}

// validIngestURL: empty, or an absolute http(s) URL with a host and no query, fragment
// or user info (the request path is appended to its path).
func validIngestURL(s string) bool {
	if s == "" {
		return true
	}
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" &&
		u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" && u.User == nil && u.Opaque == ""
}

// ingestForwarder forwards the ingest routes (see above).
type ingestForwarder struct {
	s      *Service
	target *url.URL
	proxy  *httputil.ReverseProxy
	errors *prometheus.CounterVec
}

// forwardIngest sends the ingest paths to the forwarder (or, without API_INGEST_URL, to
// a 404 that says so) and everything else to next, the api's own handler.
func (s *Service) forwardIngest(next http.Handler) http.Handler {
	errs := promauto.With(s.deps.Registerer).NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_api_ingest_forward_errors_total",
		Help: "Ingest requests the api could not forward to the ingestor (API_INGEST_URL), answered 503, by reason: unreachable, timeout, broken.",
	}, []string{"reason"})
	for _, r := range []string{forwardUnreachable, forwardTimeout, forwardBroken} {
		errs.WithLabelValues(r)
	}
	ingest := s.instrument(s.cors(http.HandlerFunc(s.ingestNotForwarded)))
	if s.cfg.IngestURL != "" {
		target, _ := url.Parse(s.cfg.IngestURL) // validated
		f := &ingestForwarder{s: s, target: target, errors: errs}
		f.proxy = &httputil.ReverseProxy{
			Rewrite:        f.rewrite,
			Transport:      newForwardTransport(),
			ModifyResponse: f.modifyResponse,
			ErrorHandler:   f.fail,
			ErrorLog:       slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		}
		ingest = s.instrument(http.HandlerFunc(f.serve))
		s.logger.Info("forwarding the ingest routes to the ingestor", "ingest_url", target.Redacted())
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isIngestPath(r.URL.Path) {
			ingest.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ingestNotForwarded answers the ingest paths when API_INGEST_URL is unset.
func (s *Service) ingestNotForwarded(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, newError(httperr.NotFound, "Route "+r.Method+":"+r.URL.Path+
		" not found: this api does not forward ingest (API_INGEST_URL is unset); send events to the ingestor's address"))
}

func newForwardTransport() *http.Transport {
	d := &net.Dialer{Timeout: forwardDialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: nil, // never HTTP(S)_PROXY from the environment
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &answerFirstConn{Conn: c}, nil
		},
		TLSHandshakeTimeout:    forwardDialTimeout,
		ResponseHeaderTimeout:  forwardResponseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		IdleConnTimeout:        forwardIdleConnTimeout,
		MaxIdleConns:           forwardMaxIdleConns,
		MaxIdleConnsPerHost:    forwardMaxIdleConns,
		MaxConnsPerHost:        forwardMaxConns,
		MaxResponseHeaderBytes: forwardMaxResponseHeaders,
		// The ingestor's response bytes pass as they are: no Accept-Encoding added, no
		// transparent gunzip.
		DisableCompression: true,
	}
}

// answerFirstConn is a connection to the ingestor on which the ingestor's answer wins
// over a failed write. The ingestor refuses a body past its limit as soon as it sees the
// Content-Length, and past its drain bound (8 MiB) closes the connection without reading
// the rest: the 413 is on the connection while the transport is still writing the body.
// Go's transport reports whichever it notices first, the write error (a 503 here) or the
// answer; so once a write fails, later writes are discarded and reported as done, and
// the transport goes on to read the answer. A connection that really failed fails the
// read as well (503, reason broken). Timeouts are reported as they are.
type answerFirstConn struct {
	net.Conn
	mu     sync.Mutex
	failed bool
}

func (c *answerFirstConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	failed := c.failed
	c.mu.Unlock()
	if failed {
		return len(p), nil
	}
	n, err := c.Conn.Write(p)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		c.mu.Lock()
		c.failed = true
		c.mu.Unlock()
		return len(p), nil
	}
	return n, err
}

// forwardBody is the client's request body as the transport reads it. It records how
// reading ended (a failure there is the client's 408 or 400, not the ingestor's) and how
// much was read, and it can be detached: once the proxy returned, detach waits for a read
// in flight and makes every later read fail, so that nothing reads the body after the
// handler returned (the transport's write can outlive the response) and the handler may
// drain the rest itself. Close is a no-op: the server closes the body after the handler.
type forwardBody struct {
	mu       sync.Mutex // held during each read of src
	src      io.ReadCloser
	n        int64
	eof      bool
	err      error
	detached bool
}

var errBodyDetached = errors.New("api: forwarded request body detached")

func (b *forwardBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.detached {
		return 0, errBodyDetached
	}
	n, err := b.src.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil && b.err == nil:
		b.err = err
	}
	return n, err
}

func (b *forwardBody) Close() error { return nil }

// state is how reading has gone so far.
func (b *forwardBody) state() (n int64, eof bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.eof, b.err
}

// detach ends the transport's use of the body (see forwardBody).
func (b *forwardBody) detach() {
	b.mu.Lock()
	b.detached = true
	b.mu.Unlock()
}

// forwardState is one forwarded request's, in its context (the proxy's callbacks get
// only the request).
type forwardState struct {
	w    http.ResponseWriter
	body *forwardBody // nil without a body
	// early: the ingestor answered an error before it had the whole body.
	early bool
}

type forwardStateKey struct{}

func stateOf(ctx context.Context) *forwardState {
	st, _ := ctx.Value(forwardStateKey{}).(*forwardState)
	return st
}

func (f *ingestForwarder) serve(w http.ResponseWriter, r *http.Request) {
	ri := info(r.Context())
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		ri.route = routePreflight
	} else {
		ri.route = ingestRoute(r.URL.Path)
	}
	// The ingestor sets its own; instrument's would make it a list.
	w.Header().Del("X-Content-Type-Options")
	st := &forwardState{w: w}
	if r.Body != nil && r.Body != http.NoBody {
		st.body = &forwardBody{src: r.Body}
		r.Body = st.body
		// Also when the proxy panics (http.ErrAbortHandler: the client went away
		// while the answer was being copied).
		defer st.body.detach()
	}
	r = r.WithContext(context.WithValue(r.Context(), forwardStateKey{}, st))
	f.proxy.ServeHTTP(w, r)
	if st.body == nil || !st.early {
		return
	}
	// The ingestor answered before reading the whole body (a 413 past its own drain
	// bound): read and discard the rest, as the api does for its own 413s, so that a
	// client that writes its whole body before reading sees the answer, not a reset.
	// The deadline also ends a read of the transport's in flight.
	rc := http.NewResponseController(w)
	deadlineSet := rc.SetReadDeadline(time.Now().Add(connlimit.DrainTimeout)) == nil
	st.body.detach()
	n, eof, err := st.body.state()
	if !deadlineSet || eof || err != nil {
		return
	}
	rest := int64(connlimit.DrainMaxBytes)
	if r.ContentLength > 0 {
		if rest = r.ContentLength - n; rest > connlimit.DrainMaxBytes {
			return // too much to drain: the connection closes
		}
	}
	_, _ = io.CopyN(io.Discard, st.body.src, rest)
}

// modifyResponse prepares the drain of serve when the ingestor answered an error before
// the transport sent the whole body: the connection will close (Connection: close), and
// full duplex lets the handler read the rest of the body after the answer.
func (f *ingestForwarder) modifyResponse(resp *http.Response) error {
	st := stateOf(resp.Request.Context())
	if st == nil || st.body == nil || resp.StatusCode < 400 {
		return nil
	}
	if _, eof, err := st.body.state(); eof || err != nil {
		return nil
	}
	st.early = true
	st.w.Header().Set("Connection", "close")
	_ = http.NewResponseController(st.w).EnableFullDuplex()
	return nil
}

// rewrite builds the outbound request: the ingestor's URL with the request's path and
// query, the client's address in X-Forwarded-For and Forwarded (replacing whatever the
// client sent), X-Forwarded-Host and -Proto, and no Cookie.
func (f *ingestForwarder) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(f.target)
	pr.SetXForwarded()
	pr.Out.Header.Del("Forwarded")
	pr.Out.Header.Del("X-Forwarded-For")
	pr.Out.Header.Del("Cookie")
	if client := f.s.clientIP(pr.In); client.IsValid() {
		pr.Out.Header.Set("X-Forwarded-For", client.String())
		proto := "http"
		if pr.In.TLS != nil {
			proto = "https"
		}
		pr.Out.Header.Set("Forwarded", "for="+forwardedNode(client)+";proto="+proto)
	}
}

// forwardedNode is an address as RFC 7239 writes it: IPv6 quoted in brackets.
func forwardedNode(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return `"[` + a.String() + `]"`
	}
	return a.Unmap().String()
}

// fail answers a request the ingestor did not answer. A client that went away gets
// nothing (499 in the logs); a body the client did not deliver is the client's 408 or
// 400; anything else is the ingestor being unreachable: 503 UNAVAILABLE with
// Retry-After, counted by reason.
func (f *ingestForwarder) fail(w http.ResponseWriter, r *http.Request, err error) {
	s := f.s
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r.Context().Err() != nil {
		s.logger.Debug("forwarded request cancelled by the client", "request_id", requestID(r.Context()))
		w.WriteHeader(499)
		return
	}
	if st := stateOf(r.Context()); st != nil && st.body != nil {
		if _, _, berr := st.body.state(); berr != nil {
			s.writeError(w, r, bodyReadError(w, berr))
			return
		}
	}
	reason := forwardBroken
	var ne net.Error
	var oe *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr), errors.As(err, &oe) && oe.Op == "dial":
		reason = forwardUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		reason = forwardTimeout
	}
	f.errors.WithLabelValues(reason).Inc()
	reqID := requestID(r.Context())
	s.logger.Warn("forwarding to the ingestor failed", "request_id", reqID, "reason", reason,
		"ingest_url", f.target.Redacted(), "error", err)
	s.writeError(w, r, &apiError{code: httperr.Unavailable, retryAfter: time.Second,
		msg: "the ingestor is unavailable; retry shortly (request id " + reqID + ")"})
}
