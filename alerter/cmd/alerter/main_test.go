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
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

func TestRunValidates(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), config.Env{}, io.Discard)
	require.ErrorContains(t, err, "KAFKA_BROKERS is required")
	err = run(context.Background(), config.Env{"KAFKA_BROKERS": "127.0.0.1:1", "ALERT_WINDOW": "0s", "ADMIN_PORT": "-1"}, io.Discard)
	require.ErrorContains(t, err, "ALERT_WINDOW")
	require.ErrorContains(t, err, "ADMIN_PORT")
}

// The standalone binary, in-process: it serves the admin endpoints with the alerter's
// metrics and stops cleanly on cancellation.
func TestRunServesAdmin(t *testing.T) {
	t.Parallel()
	dbURL, _ := pgtest.NewDB(t)
	kc := kafkatest.New(t, 1)
	logs, logw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config.Env{
			"DATABASE_URL": dbURL, "KAFKA_BROKERS": strings.Join(kc.Brokers, ","),
			"KAFKA_TOPIC": kc.Topic, "KAFKA_DLQ_TOPIC": kc.DLQTopic, "ADMIN_PORT": "0",
		}, logw)
		_ = logw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "admin server listening" {
				addr <- line["addr"].(string)
			}
		}
	}()
	var admin string
	select {
	case admin = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatal("the admin server did not start")
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + admin + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	require.Eventually(t, func() bool { code, _ := get("/readyz"); return code == http.StatusOK }, 30*time.Second, 50*time.Millisecond)
	code, body := get("/metrics")
	require.Equal(t, http.StatusOK, code)
	for _, name := range []string{
		"pulseboard_alerter_alerts_fired_total", "pulseboard_alerter_emails_sent_total", "pulseboard_alerter_emails_failed_total",
		"pulseboard_alerter_window_evaluation_lag_seconds", "pulseboard_alerter_job_duration_seconds", "pulseboard_alerter_job_runs_total",
	} {
		require.Contains(t, body, name)
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop")
	}
}
