package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

// Production refuses to start without the secrets; bad values are all reported.
func TestRunValidatesConfiguration(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), config.Env{"PULSEBOARD_ENV": "production"}, io.Discard)
	require.ErrorContains(t, err, "JWT_ACCESS_SECRET is required")
	err = run(context.Background(), config.Env{"PULSEBOARD_ENV": "production", "JWT_ACCESS_SECRET": strings.Repeat("s", 40), "API_BCRYPT_COST": "10", "CORS_ORIGIN": "*"}, io.Discard)
	require.ErrorContains(t, err, "API_BCRYPT_COST must be at least 12 in production")
	require.ErrorContains(t, err, `CORS_ORIGIN: "*"`)
	err = run(context.Background(), config.Env{"JWT_ACCESS_SECRET": "short"}, io.Discard)
	require.ErrorContains(t, err, "JWT_ACCESS_SECRET must be at least 32 bytes")
}

// The standalone binary, in-process: it serves the api and the admin endpoints, warns
// about the generated development secret, and stops cleanly on cancellation. ADMIN_HOST
// and ADMIN_PPROF are left unset: the admin port is on 127.0.0.1 only, without pprof.
func TestRunServesAndStops(t *testing.T) {
	t.Parallel()
	dbURL, _ := pgtest.NewDB(t)
	redistest.Client(t)
	logs, logw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config.Env{
			"DATABASE_URL": dbURL, "REDIS_URL": redistest.URL(t),
			"HOST": "127.0.0.1", "PORT": "0", "ADMIN_PORT": "0", "API_BCRYPT_COST": "4",
		}, logw)
		_ = logw.Close()
	}()
	lines := make(chan map[string]any, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				select {
				case lines <- m:
				default:
				}
			}
		}
	}()
	var apiAddr, adminAddr string
	warned := false
	deadline := time.After(30 * time.Second)
	for apiAddr == "" || adminAddr == "" {
		select {
		case m := <-lines:
			switch m["msg"] {
			case "api listening":
				apiAddr = m["addr"].(string)
			case "admin server listening":
				adminAddr = m["addr"].(string)
			}
			if strings.Contains(m["msg"].(string), "JWT_ACCESS_SECRET is not set") {
				warned = true
			}
		case <-deadline:
			t.Fatal("the api did not start")
		}
	}
	require.True(t, warned, "the development secret warning comes before listening")
	require.True(t, strings.HasPrefix(adminAddr, "127.0.0.1:"), "by default the admin port is local only; it listens on %s", adminAddr)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + adminAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, err = hc.Post("http://"+apiAddr+"/auth/register", "application/json",
		strings.NewReader(`{"name":"Main","email":"main@example.com","password":"password-1"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	resp, err = hc.Get("http://" + adminAddr + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(metrics), `pulseboard_api_http_requests_total{code="201",route="POST /auth/register"} 1`)
	resp, err = hc.Get("http://" + apiAddr + "/metrics")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "metrics are never on the public listener (B87)")
	resp, err = hc.Get("http://" + adminAddr + "/debug/pprof/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "pprof is off unless ADMIN_PPROF=true")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancellation")
	}
	for range lines {
	}
}
