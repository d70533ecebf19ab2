package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

// fdLimit is the all-in-one's RLIMIT_NOFILE in the flood test.
const fdLimit = 512

// openFDs counts a process's open descriptors.
func openFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// postBatch posts n events and returns the acknowledged ids (nil unless 202).
func postBatch(client *http.Client, in *instance, tag string, n int) ([]string, int, error) {
	var events []string
	for j := range n {
		events = append(events, fmt.Sprintf(`{"type":"event","name":"flood-%s-%d","payload":{"i":%d}}`, tag, j, j))
	}
	req, err := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader("["+strings.Join(events, ",")+"]"))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", in.apiKey)
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return nil, resp.StatusCode, nil
	}
	var r struct {
		Data struct {
			Results []struct{ ID string } `json:"results"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, resp.StatusCode, err
	}
	ids := make([]string, 0, len(r.Data.Results))
	for _, res := range r.Data.Results {
		ids = append(ids, res.ID)
	}
	return ids, resp.StatusCode, nil
}

// Issue 16: a connection flood takes every descriptor of the all-in-one (RLIMIT_NOFILE
// lowered to 512 with prlimit; the api's and ingestor's own connection caps set out of the
// way): idle connections to the api, then to the embedded broker, whose accept then
// fails with EMFILE: it must retry (it used to return and never listen again, leaving
// ingest 503 until a restart). Once the flood ends, /ingest answers 202 again within 10 s, the
// broker answers a metadata request from outside, /healthz is 200 again, and every event
// acknowledged before, during and after the flood is stored exactly once.
func TestAllInOneRecoversFromDescriptorFlood(t *testing.T) {
	in := start(t, "API_MAX_CONNS=100000", "API_MAX_CONNS_PER_IP=100000", "INGEST_MAX_CONNS=100000",
		"PULSEBOARD_LIVENESS_INTERVAL=1s", "PULSEBOARD_LIVENESS_FAILURES=3")
	require.False(t, in.kk.real, "this test is about the embedded broker")
	pid := in.cmd.Process.Pid
	out, err := exec.Command("prlimit", "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", fdLimit, fdLimit)).CombinedOutput()
	require.NoError(t, err, "prlimit: %s", out)
	t.Logf("all-in-one pid %d: %d descriptors open, limit now %d", pid, openFDs(pid), fdLimit)

	client := &http.Client{Timeout: 10 * time.Second}
	var mu sync.Mutex
	var acked []string
	ack := func(ids []string) {
		mu.Lock()
		acked = append(acked, ids...)
		mu.Unlock()
	}
	ids, code, err := postBatch(client, in, "before", 50)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, code)
	ack(ids)

	// Load during the flood: whatever is acknowledged must be stored.
	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	loadWG.Add(1)
	go func() {
		defer loadWG.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if ids, _, err := postBatch(c, in, "during-"+strconv.Itoa(i), 10); err == nil {
				ack(ids)
			}
		}
	}()

	// The flood: idle keep-alive connections to the api until the process is out of
	// descriptors.
	apiAddr := strings.TrimPrefix(in.api, "http://")
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			_ = c.Close()
		}
	}()
	for i := 0; i < fdLimit+200; i++ {
		c, err := net.DialTimeout("tcp", apiAddr, 2*time.Second)
		if err != nil {
			break
		}
		_, _ = io.WriteString(c, "GET /flood HTTP/1.1\r\nHost: flood\r\n\r\n")
		flood = append(flood, c)
	}
	// Connections to the embedded broker too (the api may shed idle connections when out of
	// descriptors; the broker keeps what it accepted): its accept fails with EMFILE while
	// the rest wait in its backlog.
	var brokerConns []net.Conn
	for range fdLimit {
		c, err := net.DialTimeout("tcp", in.kafka, 2*time.Second)
		require.NoError(t, err)
		brokerConns = append(brokerConns, c)
	}
	defer func() {
		for _, c := range brokerConns {
			_ = c.Close()
		}
	}()
	require.Eventually(t, func() bool {
		return strings.Contains(in.logs.String(), "embedded broker: accepting a connection failed; retrying")
	}, 30*time.Second, 50*time.Millisecond, "the flood did not exhaust the descriptors (%d open)", openFDs(pid))
	t.Logf("out of descriptors: %d open", openFDs(pid))
	time.Sleep(3 * time.Second) // hold the flood: the broker's accepts and the liveness probes fail meanwhile

	// The flood ends.
	for _, c := range flood {
		_ = c.Close()
	}
	for _, c := range brokerConns {
		_ = c.Close()
	}
	flood, brokerConns = nil, nil
	ended := time.Now()
	var recovered time.Duration
	require.Eventually(t, func() bool {
		ids, code, err := postBatch(&http.Client{Timeout: 2 * time.Second}, in, "after", 20)
		if err == nil && code == http.StatusAccepted {
			ack(ids)
			recovered = time.Since(ended)
			return true
		}
		return false
	}, 10*time.Second, 100*time.Millisecond, "/ingest did not answer 202 within 10 s of the flood's end; logs:\n%s", in.logs.String())
	t.Logf("/ingest answered 202 %s after the flood ended", recovered.Round(time.Millisecond))
	ctx := context.Background()
	require.Eventually(t, func() bool {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return kafkax.Ping(pctx, []string{in.kafka}) == nil
	}, 10*time.Second, 100*time.Millisecond, "the embedded broker does not answer after the flood")
	require.Eventually(t, func() bool {
		code, _ := get(t, in.admin+"/healthz")
		return code == http.StatusOK
	}, 15*time.Second, 100*time.Millisecond, "/healthz did not recover")
	// Produce goes through a fresh connection too: a new batch after the broker took new
	// connections again.
	ids, code, err = postBatch(client, in, "final", 50)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, code)
	ack(ids)
	close(stopLoad)
	loadWG.Wait()

	mu.Lock()
	defer mu.Unlock()
	var stored, distinct int
	require.Eventually(t, func() bool {
		err := in.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM events WHERE id = ANY($1::uuid[])`, acked).Scan(&stored, &distinct)
		return err == nil && distinct == len(acked)
	}, 60*time.Second, 200*time.Millisecond, "acknowledged events missing from Postgres")
	require.Equal(t, distinct, stored, "duplicates stored")
	t.Logf("%d events acknowledged, all stored once", len(acked))
}
