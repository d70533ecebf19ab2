package api

import (
	"context"
	"encoding/json"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// dashboardService is an api whose database and Redis are never reached: the dashboard
// and the answers checked here need neither.
func dashboardService(t *testing.T) http.Handler {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	s, err := New(testConfig(), Deps{Pool: pool, Redis: rdb, Listener: ln, Live: nopLive{}})
	require.NoError(t, err)
	return s.Handler()
}

func serve(h http.Handler, method, target string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.Host = "dash.example:3000"
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// Issue 18: the dashboard is served at / with a strict CSP, its files under /app/ with
// their content types and a content-hash ETag; anything else under /app/ is the API's
// JSON 404, and the API's own routes answer as before.
func TestDashboardIndex(t *testing.T) {
	t.Parallel()
	h := dashboardService(t)
	w := serve(h, http.MethodGet, "/")
	require.Equal(t, http.StatusOK, w.Code)
	require.Equal(t, "text/html; charset=utf-8", w.Header().Get("Content-Type"))
	csp := w.Header().Get("Content-Security-Policy")
	for _, d := range []string{"default-src 'none'", "script-src 'self';", "style-src 'self';", "frame-ancestors 'none'",
		"connect-src 'self' ws://dash.example:3000 wss://dash.example:3000;"} {
		require.Contains(t, csp, d)
	}
	require.NotContains(t, csp, "unsafe-inline")
	require.NotContains(t, csp, "unsafe-eval")
	require.Equal(t, "nosniff", w.Header().Get("X-Content-Type-Options"))
	require.Equal(t, "DENY", w.Header().Get("X-Frame-Options"))
	require.Equal(t, "no-cache", w.Header().Get("Cache-Control"))
	require.NotEmpty(t, w.Header().Get("ETag"))
	body := w.Body.String()
	require.Contains(t, body, `<script type="module" src="/app/main.js"></script>`)
	// No inline script or style, no handler attributes, nothing from another origin.
	for _, m := range regexp.MustCompile(`<script[^>]*>`).FindAllString(body, -1) {
		require.Contains(t, m, `src="/app/`, "inline script %s", m)
	}
	require.NotContains(t, body, "<style")
	require.NotRegexp(t, `\son[a-z]+=`, body)
	require.NotRegexp(t, `(src|href)="(https?:)?//`, body)

	head := serve(h, http.MethodHead, "/")
	require.Equal(t, http.StatusOK, head.Code)
	require.Empty(t, head.Body.String())

	// A Host that is not a plain host[:port] never reaches the CSP.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Host = "evil.example;script-src *"
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	require.Equal(t, "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
		w.Header().Get("Content-Security-Policy"))
}

func TestDashboardAssets(t *testing.T) {
	t.Parallel()
	h := dashboardService(t)
	want := map[string]string{
		"/app/main.js": "text/javascript; charset=utf-8", "/app/api.js": "text/javascript; charset=utf-8",
		"/app/live.js": "text/javascript; charset=utf-8", "/app/chart.js": "text/javascript; charset=utf-8",
		"/app/app.css": "text/css; charset=utf-8", "/app/icon.svg": "image/svg+xml",
	}
	for path, ct := range want {
		w := serve(h, http.MethodGet, path)
		require.Equal(t, http.StatusOK, w.Code, path)
		require.Equal(t, ct, w.Header().Get("Content-Type"), path)
		require.Contains(t, w.Header().Get("Content-Security-Policy"), "script-src 'self'", path)
		etag := w.Header().Get("ETag")
		require.Regexp(t, `^"[A-Za-z0-9_-]{16}"$`, etag, path)
		require.Equal(t, "no-cache", w.Header().Get("Cache-Control"), path)

		again := serve(h, http.MethodGet, path, "If-None-Match", etag)
		require.Equal(t, http.StatusNotModified, again.Code, path)
		require.Empty(t, again.Body.String())
		other := serve(h, http.MethodGet, path, "If-None-Match", `"stale"`)
		require.Equal(t, http.StatusOK, other.Code, path)
	}
	// Different files, different tags.
	require.NotEqual(t, serve(h, http.MethodGet, "/app/main.js").Header().Get("ETag"), serve(h, http.MethodGet, "/app/api.js").Header().Get("ETag"))

	for _, path := range []string{"/app/nope.js", "/app/", "/app/index.html", "/app/../service.go", "/app/dashboard/main.js"} {
		w := serve(h, http.MethodGet, path)
		if w.Code == http.StatusMovedPermanently { // the ServeMux cleans dot segments
			continue
		}
		require.Equal(t, http.StatusNotFound, w.Code, path)
		require.Equal(t, "application/json; charset=utf-8", w.Header().Get("Content-Type"), path)
		var e struct {
			Success bool   `json:"success"`
			Code    string `json:"code"`
		}
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e), path)
		require.Equal(t, "NOT_FOUND", e.Code, path)
	}
}

// Every file index.html and the modules refer to is embedded, and no script renders
// markup from data (innerHTML and friends are never used).
func TestDashboardFilesAreSelfContained(t *testing.T) {
	t.Parallel()
	refs := regexp.MustCompile(`(?:src|href)="/app/([^"]+)"|from '\./([^']+)'`)
	var seen int
	err := fs.WalkDir(dashboardFiles, "dashboard", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(dashboardFiles, name)
		if err != nil {
			return err
		}
		for _, m := range refs.FindAllStringSubmatch(string(b), -1) {
			ref := m[1] + m[2]
			_, ok := dashboardAssets[ref]
			require.True(t, ok, "%s refers to %s, which is not embedded", name, ref)
			seen++
		}
		if strings.HasSuffix(name, ".js") {
			for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
				require.NotContains(t, string(b), bad, name)
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, seen, 5)
}

// The API around the dashboard is unchanged: unknown routes are JSON 404s, / takes GET
// only, the JSON routes answer as before, and the cookie endpoints admit the page's own
// origin while still refusing others.
func TestDashboardLeavesTheAPIAlone(t *testing.T) {
	t.Parallel()
	h := dashboardService(t)
	w := serve(h, http.MethodGet, "/nope")
	require.Equal(t, http.StatusNotFound, w.Code)
	require.Contains(t, w.Body.String(), `"NOT_FOUND"`)
	w = serve(h, http.MethodPost, "/")
	require.Equal(t, http.StatusMethodNotAllowed, w.Code)
	require.Equal(t, "GET, HEAD", w.Header().Get("Allow"))
	w = serve(h, http.MethodGet, "/openapi.json")
	require.Equal(t, http.StatusOK, w.Code)
	require.Equal(t, "application/json; charset=utf-8", w.Header().Get("Content-Type"))
	require.Empty(t, w.Header().Get("Content-Security-Policy"))
	w = serve(h, http.MethodGet, "/projects")
	require.Equal(t, http.StatusUnauthorized, w.Code)
	require.Equal(t, "no-store", w.Header().Get("Cache-Control"))

	// Logout without a cookie or token touches nothing but the Origin check.
	w = serve(h, http.MethodPost, "/auth/logout", "Origin", "http://dash.example:3000")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Empty(t, w.Header().Get("Access-Control-Allow-Origin"), "same origin needs no CORS headers")
	for _, o := range []string{"http://evil.example", "http://dash.example:3001", "null", "http://dash.example:3000.evil.example"} {
		w = serve(h, http.MethodPost, "/auth/logout", "Origin", o)
		require.Equal(t, http.StatusForbidden, w.Code, o)
		require.Contains(t, w.Body.String(), "FORBIDDEN_ORIGIN", o)
	}
}
