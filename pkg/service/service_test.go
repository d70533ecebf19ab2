package service

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// records receives each log record the logger writes (one Write per record).
type records chan string

func (r records) Write(p []byte) (int, error) {
	r <- string(p)
	return len(p), nil
}

func TestStartRejectsAnUnknownLogLevel(t *testing.T) {
	_, err := Start(make(records, 100), Options{Name: "x", LogLevel: "loud", AdminHost: "127.0.0.1"})
	require.Error(t, err)
}

// TestRunServesTheAdminPortUntilTheStop: logs tagged with the service, the admin server on
// ADMIN_HOST:ADMIN_PORT, readiness 503 once the stop is requested, run's error returned.
func TestRunServesTheAdminPortUntilTheStop(t *testing.T) {
	out := make(records, 1000)
	proc, err := Start(out, Options{Name: "tester", LogLevel: "info", AdminHost: "127.0.0.1", AdminPort: 0})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- proc.Run(ctx, func(ctx context.Context) error {
			<-ctx.Done()
			<-stopped // the drain: the admin port is still served
			return nil
		})
	}()
	var addr string
	deadline := time.After(10 * time.Second)
	for addr == "" {
		select {
		case line := <-out:
			var rec struct{ Msg, Addr, Service string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "admin server listening" {
				require.Equal(t, "tester", rec.Service)
				addr = rec.Addr
			}
		case <-deadline:
			t.Fatal("no admin server after 10 s")
		}
	}
	get := func(path string) int {
		resp, err := http.Get("http://" + addr + path)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, get("/readyz"))
	require.Equal(t, http.StatusNotFound, get("/debug/pprof/"))
	cancel()
	require.Eventually(t, func() bool { return get("/readyz") == http.StatusServiceUnavailable }, 10*time.Second, 10*time.Millisecond)
	close(stopped)
	require.NoError(t, <-done)
}
