package main_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// proc is one service process of the test.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logs    *testenv.SyncBuffer
	done    chan struct{} // closed when the process has exited; waitErr is then set
	waitErr error
}

func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	return startProcIn(t, "", name, bin, env, args...)
}

// startProcIn is startProc with dir as the working directory ("" = the test's).
func startProcIn(t *testing.T, dir, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), logs: &testenv.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	require.NoError(t, p.cmd.Start())
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", p.name, p.logs.String())
		}
	})
	return p
}

// ready polls an admin /readyz until 200; an error if the process exits first or within
// a minute it never answers 200.
func (p *proc) ready(adminURL string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(adminURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before becoming ready (%v); logs:\n%s", p.name, p.waitErr, p.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never became ready; logs:\n%s", p.name, p.logs.String())
		}
	}
}

// startOnFreePorts starts a service with env plus VAR=<a free port> for adminVar and each
// of portVars and waits until its admin /readyz answers. freePort's port can be taken by
// a parallel test before the process binds it: a process that exits with "address
// already in use" is started again on fresh ports (as start does for the all-in-one).
func startOnFreePorts(t *testing.T, name, bin string, env []string, adminVar string, portVars ...string) (*proc, map[string]int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ports := map[string]int{}
		e := append([]string(nil), env...)
		for _, v := range append([]string{adminVar}, portVars...) {
			ports[v] = freePort(t)
			e = append(e, v+"="+strconv.Itoa(ports[v]))
		}
		p := startProc(t, name, bin, e)
		err := p.ready(fmt.Sprintf("http://127.0.0.1:%d", ports[adminVar]))
		if err == nil {
			return p, ports
		}
		if attempt < 5 && strings.Contains(p.logs.String(), "address already in use") {
			t.Logf("%s lost a port race on start, retrying on fresh ports", name)
			continue
		}
		t.Fatal(err)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// The services as separate processes around a standalone broker, as the reliability suite
// runs them: `pulseboard broker`, `ingestor` and `consumer`, each with its admin port.
func TestSeparateProcessesAroundStandaloneBroker(t *testing.T) {
	t.Parallel()
	dbURL, pool := pgtest.NewDB(t)
	kafkaPort := freePort(t)
	brokers := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	env := append(os.Environ(),
		"DATABASE_URL="+dbURL, "REDIS_URL="+redistest.URL(t),
		"KAFKA_EMBEDDED_PORT="+strconv.Itoa(kafkaPort), "INGEST_RATE_LIMIT=0",
	)
	kk := kafkaFor(t)
	if kk.real {
		brokers = kk.brokers
		env = append(env, kk.env()...)
	} else {
		broker := startProc(t, "broker", binary, env, "broker")
		require.Eventually(t, func() bool { return strings.Contains(broker.logs.String(), "broker listening") },
			30*time.Second, 20*time.Millisecond, "broker logs:\n%s", broker.logs.String())
	}

	seed := exec.Command(binary, "seed")
	seed.Env = env
	out, err := seed.Output()
	require.NoError(t, err)
	key := jsonField(t, out, "project", "apiKey")

	svcEnv := append(env, "KAFKA_BROKERS="+brokers)
	_, ingPorts := startOnFreePorts(t, "ingestor", ingestorBinary, svcEnv, "ADMIN_PORT", "INGEST_PORT")
	_, consPorts := startOnFreePorts(t, "consumer", consumerBinary, svcEnv, "ADMIN_PORT")
	ingestPort, ingestAdmin, consumerAdmin := ingPorts["INGEST_PORT"], ingPorts["ADMIN_PORT"], consPorts["ADMIN_PORT"]

	var events []string
	for i := range 50 {
		events = append(events, fmt.Sprintf(`{"type":"error","name":"e%d","payload":{"i":%d}}`, i, i))
	}
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/ingest/batch", ingestPort), strings.NewReader("["+strings.Join(events, ",")+"]"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	require.Eventually(t, func() bool {
		var n int
		return pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&n) == nil && n == 50
	}, 30*time.Second, 20*time.Millisecond)
	var rollup int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT sum(count) FROM event_rollups WHERE type = 'error'").Scan(&rollup))
	require.Equal(t, 50, rollup)

	// Each service's admin port: alive, ready, and the key series of this issue after traffic.
	for name, port := range map[string]int{"ingestor": ingestAdmin, "consumer": consumerAdmin} {
		code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		require.Equal(t, http.StatusOK, code, name)
	}
	_, ingestMetrics := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", ingestAdmin))
	for _, series := range []string{
		`pulseboard_ingest_requests_total{code="202",route="batch"} 1`,
		`pulseboard_ingest_events_accepted_total 50`,
		`pulseboard_ingest_produce_ack_seconds_count 1`,
		`pulseboard_ingest_writer_required_acks -1`,
		`pulseboard_ingest_inflight_bytes 0`,
		`go_goroutines`, `process_resident_memory_bytes`,
	} {
		require.Contains(t, ingestMetrics, series)
	}
	require.Eventually(t, func() bool {
		_, m := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", consumerAdmin))
		return strings.Contains(m, "pulseboard_consumer_rows_stored_total 50") &&
			strings.Contains(m, "pulseboard_consumer_store_duration_seconds_count") &&
			strings.Contains(m, "pulseboard_consumer_batch_size_messages_count") &&
			strings.Contains(m, "pulseboard_consumer_lag_messages{partition=") &&
			strings.Contains(m, `pulseboard_consumer_dlq_messages_total{code="UNKNOWN_PROJECT"} 0`)
	}, 10*time.Second, 50*time.Millisecond)
}
