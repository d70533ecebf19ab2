package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// envValue is the value of name in an instance's environment (the last one set wins).
func envValue(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == name {
			v = val
		}
	}
	return v
}

// runCLI runs the pulseboard binary with the instance's environment.
func runCLI(t *testing.T, in *instance, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = in.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.Bytes(), err
}

// loadgenSummary is the part of `loadgen -json` this test reads.
type loadgenSummary struct {
	EventsSent     int64            `json:"eventsSent"`
	EventsAccepted int64            `json:"eventsAccepted"`
	Statuses       map[string]int64 `json:"statuses"`
	ScheduledRate  float64          `json:"scheduledRate"`
	Projects       int              `json:"projects"`
	CPUSeconds     float64          `json:"cpuSeconds"`
	Ledger         struct {
		Sent, Acked, Rejected, Indeterminate int64
	} `json:"ledger"`
	E2EDeliveredMs struct {
		P50, P99 float64
		Count    int64   `json:"count"`
		Coverage float64 `json:"coverage"`
		Protocol string  `json:"protocol"`
	} `json:"e2eDeliveredMs"`
	E2EStoredMs struct {
		P50      float64
		Count    int64   `json:"count"`
		Coverage float64 `json:"coverage"`
	} `json:"e2eStoredMs"`
	Client struct {
		Library   string `json:"library"`
		Transport string `json:"transport"`
	} `json:"client"`
}

// Issue 6: the load generator against the all-in-one, with a ledger, a live subscriber
// (WebSocket, then SSE) and Postgres sampling, over several seeded projects; then
// `pulseboard verify` finds every acknowledged event stored exactly once, and fails on a
// ledger that claims an acknowledgement Postgres never saw.
func TestLoadgenLedgerLiveAndVerifyAgainstAllInOne(t *testing.T) {
	t.Parallel()
	in := start(t)
	dir := t.TempDir()
	dbURL := envValue(in.env, "DATABASE_URL")
	require.NotEmpty(t, dbURL)

	// seed -projects: the same first project as before (compat JSON), plus the others.
	out, stderr, err := runCLI(t, in, "seed", "-projects", "3")
	require.NoError(t, err, "%s", stderr)
	var seeded struct {
		Project  struct{ ID, APIKey string }
		Projects []struct{ ID, APIKey, Name string }
	}
	require.NoError(t, json.Unmarshal(out, &seeded))
	require.Len(t, seeded.Projects, 3)
	require.Equal(t, in.project, seeded.Project.ID, "seed is idempotent: the demo project first")
	require.Equal(t, in.apiKey, seeded.Projects[0].APIKey)
	require.Equal(t, "Demo Project 3", seeded.Projects[2].Name)
	keys := make([]string, 0, 2)
	for _, p := range seeded.Projects[1:] { // fresh projects: nothing else is stored in them
		keys = append(keys, p.APIKey)
	}

	loadgen := func(ledgerFile, protocol string, extra ...string) loadgenSummary {
		args := append([]string{"loadgen", "-url", in.ingest, "-keys", strings.Join(keys, ","), "-duration", "3s",
			"-ledger", ledgerFile, "-live-url", in.api, "-live-protocol", protocol, "-db", dbURL, "-db-sample", "0.2",
			"-progress", "500ms", "-e2e-wait", "30s", "-json"}, extra...)
		out, stderr, err := runCLI(t, in, args...)
		require.NoError(t, err, "loadgen: %s", stderr)
		require.Contains(t, string(stderr), "events/s", "progress lines on stderr")
		var s loadgenSummary
		require.NoError(t, json.Unmarshal(out, &s), "%s", out)
		t.Logf("loadgen %s: %s", protocol, out)
		return s
	}
	batch := loadgen(filepath.Join(dir, "batch.ledger"), "ws", "-mode", "batch", "-batch", "25", "-rate", "400", "-connections", "4")
	require.EqualValues(t, 1200, batch.EventsSent, "400 events/s for 3 s")
	profile := filepath.Join(dir, "loadgen.pprof")
	single := loadgen(filepath.Join(dir, "single.ledger"), "sse", "-mode", "single", "-rate", "100", "-connections", "4",
		"-cpuprofile", profile)
	require.EqualValues(t, 300, single.EventsSent)
	// -cpuprofile leaves the load generator's own CPU profile (gzipped protobuf).
	prof, err := os.ReadFile(profile)
	require.NoError(t, err)
	require.Greater(t, len(prof), 2)
	require.Equal(t, []byte{0x1f, 0x8b}, prof[:2], "a pprof profile is gzip-compressed")
	for _, s := range []loadgenSummary{batch, single} {
		require.Equal(t, s.EventsSent, s.EventsAccepted, "the all-in-one accepts everything: %v", s.Statuses)
		require.Equal(t, s.EventsSent, s.Ledger.Sent)
		require.Equal(t, s.EventsAccepted, s.Ledger.Acked)
		require.Equal(t, 2, s.Projects)
		require.Positive(t, s.E2EDeliveredMs.Count, "events delivered on the live stream (%s)", s.E2EDeliveredMs.Protocol)
		require.Positive(t, s.E2EDeliveredMs.Coverage)
		require.Positive(t, s.E2EDeliveredMs.P50)
		require.Positive(t, s.E2EStoredMs.Count, "sampled events seen in Postgres")
		require.Equal(t, "pkg/client", s.Client.Library)
		require.Positive(t, s.CPUSeconds, "the load generator's CPU over the sending window")
	}
	require.Equal(t, "ws", batch.E2EDeliveredMs.Protocol)
	require.Equal(t, "sse", single.E2EDeliveredMs.Protocol)

	out, stderr, err = runCLI(t, in, "verify", "-ledger", filepath.Join(dir, "batch.ledger"), "-ledger", filepath.Join(dir, "single.ledger"),
		"-db", dbURL, "-wait", "60s", "-json")
	require.NoError(t, err, "verify: %s %s", out, stderr)
	var rep struct {
		Sent, Acked, Stored, Lost, Duplicates, Phantoms, RejectedStored int64
		Settled, OK                                                     bool
	}
	require.NoError(t, json.Unmarshal(out, &rep), "%s", out)
	require.True(t, rep.OK)
	require.True(t, rep.Settled)
	require.EqualValues(t, 1500, rep.Sent)
	require.EqualValues(t, 1500, rep.Acked)
	require.EqualValues(t, 1500, rep.Stored)
	require.Zero(t, rep.Lost+rep.Duplicates+rep.Phantoms+rep.RejectedStored)

	// A ledger that claims one more acknowledged event: verify says it is lost, and fails.
	raw, err := os.ReadFile(filepath.Join(dir, "batch.ledger"))
	require.NoError(t, err)
	lost := uuid.Must(uuid.NewV7())
	raw = fmt.Appendf(raw, `{"id":%q,"project":%q,"outcome":"acked"}`+"\n", lost, seeded.Projects[1].ID)
	bad := filepath.Join(dir, "bad.ledger")
	require.NoError(t, os.WriteFile(bad, raw, 0o600))
	out, _, err = runCLI(t, in, "verify", "-ledger", bad+","+filepath.Join(dir, "single.ledger"), "-db", dbURL,
		"-wait", "2s", "-stable", "200ms")
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "verify fails: %s", out)
	require.NotZero(t, exit.ExitCode())
	require.Contains(t, string(out), "lost 1")
}
