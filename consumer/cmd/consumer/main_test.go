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

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

func TestRunRequiresBrokers(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), config.Env{}, io.Discard)
	require.ErrorContains(t, err, "KAFKA_BROKERS is required")
	err = run(context.Background(), config.Env{"KAFKA_BROKERS": "127.0.0.1:1", "CONSUMER_BATCH_SIZE": "-1"}, io.Discard)
	require.ErrorContains(t, err, "CONSUMER_BATCH_SIZE")
}

// The standalone binary, in-process: it serves the admin endpoints, stores what is
// produced, and stops cleanly on cancellation.
func TestRunServesAndConsumes(t *testing.T) {
	t.Parallel()
	dbURL, pool := pgtest.NewDB(t)
	redistest.Client(t)
	kc := kafkatest.New(t, 2)
	ctx := context.Background()
	u, err := pgstore.UpsertUser(ctx, pool, "Cmd", "cmd@example.com", "x")
	require.NoError(t, err)
	p, err := pgstore.CreateProject(ctx, pool, u.ID, "cmd")
	require.NoError(t, err)

	logs, logw := io.Pipe()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, config.Env{
			"DATABASE_URL":        dbURL,
			"REDIS_URL":           redistest.URL(t),
			"KAFKA_BROKERS":       strings.Join(kc.Brokers, ","),
			"KAFKA_TOPIC":         kc.Topic,
			"KAFKA_DLQ_TOPIC":     kc.DLQTopic,
			"ADMIN_HOST":          "127.0.0.1",
			"ADMIN_PORT":          "0",
			"ADMIN_PPROF":         "true",
			"CONSUMER_BATCH_WAIT": "10ms",
		}, logw)
		_ = logw.Close()
	}()
	lines := make(chan map[string]any, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				lines <- rec
			} else {
				t.Errorf("log line is not JSON: %s", sc.Text())
			}
		}
	}()
	var admin string
	for admin == "" {
		select {
		case rec := <-lines:
			if rec["msg"] == "admin server listening" {
				admin = rec["addr"].(string)
			}
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("no admin server")
		}
	}
	go func() {
		for range lines { // keep draining the logs
		}
	}()
	// ADMIN_HOST is honoured: the admin port (pprof, enabled here, included) stays off
	// other interfaces.
	require.True(t, strings.HasPrefix(admin, "127.0.0.1:"), "admin listens on %s", admin)

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + admin + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	status, _ := get("/readyz")
	require.Equal(t, http.StatusOK, status)
	status, _ = get("/debug/pprof/cmdline")
	require.Equal(t, http.StatusOK, status, "ADMIN_PPROF=true serves /debug/pprof/")

	w, err := kafkax.NewWriter(kc.Brokers, kc.Topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(event.Precision)
	ev := event.Event{ID: uuid.Must(uuid.NewV7()), ProjectID: p.ID, Type: event.TypeEvent, Name: "cmd",
		Payload: []byte(`{}`), Timestamp: now, ReceivedAt: now}
	require.NoError(t, w.WriteMessages(ctx, kafka.Message{Key: []byte(p.ID.String()), Value: ev.AppendJSON(nil)}))
	_ = w.Close()
	if tr, ok := w.Transport.(*kafka.Transport); ok {
		tr.CloseIdleConnections()
	}
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE id = $1`, ev.ID).Scan(&n))
		return n == 1
	}, 30*time.Second, 20*time.Millisecond)
	status, body := get("/metrics")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "pulseboard_consumer_rows_stored_total 1")
	http.DefaultClient.CloseIdleConnections()

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop")
	}
}
