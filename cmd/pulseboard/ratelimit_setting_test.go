package main_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Issue 18 (the dashboard's "rate limit" setting): a project's settings.rateLimit, set
// through the api's PATCH /projects/{id}, is the limit the ingestor enforces, and it
// takes effect at once although the ingestor had the key cached (local LRU and Redis)
// with the old limit: the PATCH drops the cached resolution like a key rotation does.
// The key cache TTL is 60 s, so a change seen within 5 s came through the invalidation.
// Clearing it (null) restores INGEST_RATE_LIMIT (unlimited in these tests).
func TestAllInOneRateLimitSettingReachesTheIngestor(t *testing.T) {
	t.Parallel()
	in := start(t, "INGEST_MAX_BATCH_EVENTS=10") // the smallest events bucket is one full batch
	u := newWebUser(t, in)
	u.session("/auth/register", `{"name":"Rate Setter","email":"rate-setter@example.com","password":"password-1234"}`, http.StatusCreated)
	id, key := u.project("Throttled")

	batch := func(name string) string {
		evs := make([]string, 10)
		for i := range evs {
			evs[i] = fmt.Sprintf(`{"type":"event","name":%q,"payload":{"i":%d}}`, name, i)
		}
		return "[" + strings.Join(evs, ",") + "]"
	}
	post := func(name string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, in.ingest+"/ingest/batch", strings.NewReader(batch(name)))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	patch := func(body string) {
		t.Helper()
		a := u.call("PATCH", in.api+"/projects/"+id, body)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	}

	// The default (unlimited here): many batches pass, and the key is now cached.
	for i := 0; i < 5; i++ {
		require.Equal(t, http.StatusAccepted, post("before"))
	}

	patch(`{"settings":{"rateLimit":1}}`)
	changed := time.Now()
	limited := false
	for time.Since(changed) < 5*time.Second && !limited {
		switch s := post("after"); s {
		case http.StatusTooManyRequests:
			limited = true
		case http.StatusAccepted:
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("ingest answered %d", s)
		}
	}
	require.True(t, limited, "a project lowered to 1 event/s gets 429 within 5 s of the change (cache TTL: 60 s)")
	t.Logf("429 after %s", time.Since(changed).Round(time.Millisecond))

	patch(`{"settings":{"rateLimit":null}}`)
	cleared := time.Now()
	require.Eventually(t, func() bool { return post("cleared") == http.StatusAccepted }, 5*time.Second, 20*time.Millisecond)
	for i := 0; i < 5; i++ {
		require.Equal(t, http.StatusAccepted, post("cleared"), "back to the default after %s", time.Since(cleared))
	}
}
