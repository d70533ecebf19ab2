package obs

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func status(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// pprofPaths are every path net/http/pprof serves (the index serves the named profiles).
var pprofPaths = []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/profile?seconds=1",
	"/debug/pprof/symbol", "/debug/pprof/trace?seconds=1", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1"}

// /debug/pprof/ is off unless AdminOptions.Pprof (ADMIN_PPROF) turns it on: every pprof
// path answers 404, and health, readiness and metrics are served either way.
func TestAdminHandlerServesPprofOnlyWhenEnabled(t *testing.T) {
	t.Parallel()
	reg, ready := NewRegistry(), NewReadiness()
	off := AdminHandler(reg, ready, AdminOptions{})
	on := AdminHandler(reg, ready, AdminOptions{Pprof: true})
	for _, h := range []http.Handler{off, on} {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			code, _ := status(t, h, path)
			if code != http.StatusOK {
				t.Errorf("GET %s = %d, want 200", path, code)
			}
		}
	}
	for _, path := range pprofPaths {
		if code, _ := status(t, off, path); code != http.StatusNotFound {
			t.Errorf("pprof off: GET %s = %d, want 404", path, code)
		}
	}
	if testing.Short() {
		return
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1"} {
		if code, _ := status(t, on, path); code != http.StatusOK {
			t.Errorf("pprof on: GET %s = %d, want 200", path, code)
		}
	}
	code, body := status(t, on, "/debug/pprof/profile?seconds=1")
	if code != http.StatusOK || !strings.HasPrefix(body, "\x1f\x8b") {
		t.Errorf("pprof on: GET /debug/pprof/profile = %d (%d bytes), want a gzipped profile", code, len(body))
	}
}

// RunService serves AdminHandler with the options it is given, on the address it is given.
func TestRunServiceHonoursAdminOptions(t *testing.T) {
	t.Parallel()
	for _, pprof := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		addrc := make(chan string, 1)
		logger := slog.New(slog.NewJSONHandler(&addrWriter{addr: addrc}, nil))
		done := make(chan error, 1)
		go func() {
			done <- RunService(ctx, "127.0.0.1:0", AdminOptions{Pprof: pprof}, NewRegistry(), NewReadiness(), logger,
				func(ctx context.Context) error { <-ctx.Done(); return nil })
		}()
		addr := <-addrc
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("admin server on %s, want 127.0.0.1", addr)
		}
		tr := &http.Transport{}
		resp, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		tr.CloseIdleConnections()
		want := http.StatusNotFound
		if pprof {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("Pprof=%v: GET /debug/pprof/ = %d, want %d", pprof, resp.StatusCode, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// addrWriter picks the address out of the "admin server listening" log line.
type addrWriter struct{ addr chan<- string }

func (w *addrWriter) Write(p []byte) (int, error) {
	s := string(p)
	if strings.Contains(s, `"msg":"admin server listening"`) {
		if _, rest, ok := strings.Cut(s, `"addr":"`); ok {
			a, _, _ := strings.Cut(rest, `"`)
			w.addr <- a
		}
	}
	return len(p), nil
}
