package main_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

// The embedded broker's byte bound, as processes: `pulseboard broker` with a 2 MiB bound
// and a standalone ingestor, no consumer. Ingest is acknowledged until the broker holds
// its bound, then answers 503 (the broker refuses the produce request; nothing refused is
// acknowledged). A consumer started afterwards stores every acknowledged event exactly
// once, the broker trims what it committed, and ingest is accepted again.
func TestEmbeddedBrokerRefusesAtItsBoundAndLosesNothing(t *testing.T) {
	t.Parallel()
	dbURL, pool := pgtest.NewDB(t)
	kafkaPort := freePort(t)
	brokers := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	env := append(os.Environ(),
		"DATABASE_URL="+dbURL, "REDIS_URL="+redistest.URL(t),
		"KAFKA_EMBEDDED_PORT="+strconv.Itoa(kafkaPort), "INGEST_RATE_LIMIT=0", "ADMIN_HOST=127.0.0.1",
		"KAFKA_PARTITIONS=3",
	)
	broker := startProc(t, "broker", binary, append(env,
		"KAFKA_EMBEDDED_MAX_BYTES=2097152", "KAFKA_EMBEDDED_RETENTION_BYTES=0", "KAFKA_EMBEDDED_RETENTION_AGE=0s",
		"KAFKA_EMBEDDED_RETENTION_GROUPS=pulseboard-consumer"), "broker")
	require.Eventually(t, func() bool { return strings.Contains(broker.logs.String(), "broker listening") },
		30*time.Second, 20*time.Millisecond, "broker logs:\n%s", broker.logs.String())
	seed := exec.Command(binary, "seed")
	seed.Env = env
	out, err := seed.Output()
	require.NoError(t, err)
	in := &instance{apiKey: jsonField(t, out, "project", "apiKey")}
	env = append(env, "KAFKA_BROKERS="+brokers)
	_, ports := startOnFreePorts(t, "ingestor", ingestorBinary, append(env, "INGEST_PRODUCE_TIMEOUT=3s"), "ADMIN_PORT", "INGEST_PORT")
	in.ingest = fmt.Sprintf("http://127.0.0.1:%d", ports["INGEST_PORT"])

	client := &http.Client{Timeout: 30 * time.Second}
	// Random (incompressible) padding: the producer compresses its batches.
	pad := make([]byte, 450)
	post := func(tag string, n int) ([]string, int) {
		var events []string
		for j := range n {
			_, _ = rand.Read(pad)
			events = append(events, fmt.Sprintf(`{"type":"event","name":"bound-%s-%d","payload":{"pad":%q}}`, tag, j, hex.EncodeToString(pad)))
		}
		req, err := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader("["+strings.Join(events, ",")+"]"))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", in.apiKey)
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return nil, resp.StatusCode
		}
		var r struct {
			Data struct {
				Results []struct{ ID string } `json:"results"`
			} `json:"data"`
		}
		require.NoError(t, jsonDecode(resp, &r))
		ids := make([]string, 0, n)
		for _, res := range r.Data.Results {
			ids = append(ids, res.ID)
		}
		return ids, resp.StatusCode
	}

	var acked []string
	refused := 0
	for i := 0; i < 200 && refused == 0; i++ { // 200 × 100 × ~1 KB = 20 MB: ten times the bound
		ids, code := post("a"+strconv.Itoa(i), 100)
		switch code {
		case http.StatusAccepted:
			acked = append(acked, ids...)
		case http.StatusServiceUnavailable:
			refused++
		default:
			t.Fatalf("ingest answered %d", code)
		}
	}
	require.Positive(t, refused, "the broker never refused although no consumer ran")
	require.Less(t, len(acked), 4000, "more than twice the bound was acknowledged")
	require.Contains(t, broker.logs.String(), "refusing produce requests")
	// Still refused, not just slow.
	_, code := post("b", 100)
	require.Equal(t, http.StatusServiceUnavailable, code)
	t.Logf("%d events acknowledged before the broker held its bound", len(acked))

	// The consumer catches up: every acknowledged event is stored once.
	startProc(t, "consumer", consumerBinary, append(env, "ADMIN_PORT=0"))
	ctx := context.Background()
	var stored, distinct int
	require.Eventually(t, func() bool {
		err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM events WHERE id = ANY($1::uuid[])`, acked).Scan(&stored, &distinct)
		return err == nil && distinct == len(acked)
	}, 90*time.Second, 200*time.Millisecond, "acknowledged events missing from Postgres")
	require.Equal(t, distinct, stored, "duplicates stored")
	// (An event answered 503 may still be stored, by a retry of its batch the writer had
	// in hand: the client retries it with the same id and deduplication absorbs it.)
	// Trimmed: ingest is accepted again.
	require.Eventually(t, func() bool {
		_, code := post("c", 10)
		return code == http.StatusAccepted
	}, 30*time.Second, 200*time.Millisecond, "ingest still refused after the consumer caught up")
	require.Eventually(t, func() bool { return strings.Contains(broker.logs.String(), "below its byte bound again") },
		10*time.Second, 50*time.Millisecond)
}

func jsonDecode(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}
