package api

import (
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/pulseboard/pulseboard/api/internal/live"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// The dashboard (issue 18): plain HTML, CSS and JavaScript modules in api/dashboard/,
// embedded in the binary (no build step, no Node.js at run time, nothing fetched from
// elsewhere). index.html is served at / and every other file under /app/. It is a
// client of the public API only (JSON, the WebSocket and SSE live streams), from the
// api's own origin, so the refresh cookie (Path=/auth, SameSite=Strict) is sent to
// /auth/refresh, and sameOrigin admits its Origin to the cookie endpoints and the live
// streams without a CORS_ORIGIN entry.
//
//go:embed dashboard
var dashboardFiles embed.FS

// dashboardPrefix is where the dashboard's assets are served.
const dashboardPrefix = "/app/"

// dashboardCSP: no inline script or style, nothing from another origin; the live
// streams connect back to the page's own host (connect-src gets ws:// and wss:// of it,
// which 'self' does not cover in every browser).
const dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'%s; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

type dashboardAsset struct {
	body        []byte
	etag        string
	contentType string
}

// dashboardAssets are read once: name (without the leading slash) → asset.
var dashboardAssets = func() map[string]dashboardAsset {
	sub, err := fs.Sub(dashboardFiles, "dashboard")
	if err != nil {
		panic(err)
	}
	assets := map[string]dashboardAsset{}
	err = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		assets[name] = dashboardAsset{
			body:        b,
			etag:        `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`,
			contentType: dashboardContentType(name),
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return assets
}()

func dashboardContentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".png":
		return "image/png"
	}
	return "application/octet-stream"
}

// isDashboardPattern reports whether a registered pattern is one of the dashboard's:
// pages and static files, not JSON API routes, so openapi.json does not describe them.
func isDashboardPattern(p string) bool {
	return p == "GET /{$}" || p == "GET "+dashboardPrefix+"{file...}"
}

// dashboardRoutes registers the dashboard with m (the routes' registration helper).
func (s *Service) dashboardRoutes(m func(pattern string, h http.Handler)) {
	m("GET /{$}", http.HandlerFunc(s.serveDashboardIndex))
	m("GET "+dashboardPrefix+"{file...}", http.HandlerFunc(s.serveDashboardAsset))
}

func (s *Service) serveDashboardIndex(w http.ResponseWriter, r *http.Request) {
	serveDashboardFile(w, r, dashboardAssets["index.html"])
}

func (s *Service) serveDashboardAsset(w http.ResponseWriter, r *http.Request) {
	a, ok := dashboardAssets[r.PathValue("file")]
	if !ok || r.PathValue("file") == "index.html" {
		s.writeError(w, r, newError(httperr.NotFound, "Route "+r.Method+":"+r.URL.Path+" not found"))
		return
	}
	serveDashboardFile(w, r, a)
}

// serveDashboardFile answers with the file, its strong ETag (a hash of the content, so a
// new binary's files are refetched) and the security headers, or 304 when the client
// holds the same version. Every response is revalidated (no-cache): the files are small
// and a stale script must never run against a newer api.
func serveDashboardFile(w http.ResponseWriter, r *http.Request, a dashboardAsset) {
	h := w.Header()
	h.Set("Content-Security-Policy", dashboardCSPFor(r.Host))
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", a.contentType)
	h.Set("Content-Length", strconv.Itoa(len(a.body)))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	_, _ = w.Write(a.body)
}

func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		if t = strings.TrimSpace(t); t == etag || t == "W/"+etag || t == "*" {
			return true
		}
	}
	return false
}

// dashboardCSPFor names the page's host for the live streams' ws:// and wss:// URLs;
// a Host that is not a plain host[:port] gets no such source (the streams then rely on
// 'self').
func dashboardCSPFor(host string) string {
	extra := ""
	if host != "" && len(host) <= 255 && strings.Trim(strings.ToLower(host), "abcdefghijklmnopqrstuvwxyz0123456789.-:[]") == "" {
		extra = " ws://" + host + " wss://" + host
	}
	return strings.Replace(dashboardCSP, "%s", extra, 1)
}

// sameOrigin reports whether origin (an Origin header) is the origin the request was
// addressed to (live.SameOrigin): the dashboard's own requests to the cookie endpoints.
func sameOrigin(r *http.Request, origin string) bool { return live.SameOrigin(r, origin) }
