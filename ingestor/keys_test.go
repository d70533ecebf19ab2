package ingestor_test

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/testenv/faultproxy"
	"github.com/pulseboard/pulseboard/pkg/testenv/redistest"
)

const postgresLookups = "pulseboard_ingest_apikey_lookups_total"

// TestUnknownKeyFlood (B03, promise 7): a flood of one unknown key, concurrent and then
// sequential, reaches Postgres once per negative-cache TTL.
func TestUnknownKeyFlood(t *testing.T) {
	t.Parallel()
	// This test is about the key cache; the per-address guard (TestUnknownKeysPerAddress)
	// would answer 429 after its burst, so it is off here.
	b := setup(t, withConfig(func(c *ingestor.Config) { c.UnknownKeyRate = 0 }))
	unknown, err := apikey.Generate()
	require.NoError(t, err)
	body := mustJSON(t, validEvent(unknown))

	var wg sync.WaitGroup
	statuses := make([]int, 200)
	errs := make([]error, len(statuses))
	start := make(chan struct{})
	for i := range statuses {
		wg.Go(func() {
			<-start
			r, err := b.try(http.MethodPost, "/ingest", body, nil)
			statuses[i], errs[i] = r.status, err
		})
	}
	close(start)
	wg.Wait()
	for i := range statuses {
		require.NoError(t, errs[i])
		require.Equal(t, http.StatusUnauthorized, statuses[i])
	}
	for range 50 {
		res := b.post(t, "/ingest", body, nil)
		requireJSONError(t, res, http.StatusUnauthorized, "INVALID_API_KEY")
	}
	// The same unknown key on the batch endpoint shares the cache.
	res := b.post(t, "/ingest/batch", mustJSON(t, []any{validEvent("")}), hdr{"X-API-Key": unknown})
	requireJSONError(t, res, http.StatusUnauthorized, "INVALID_API_KEY")

	require.EqualValues(t, 1, b.keyQueries.Load(), "Postgres was queried once")
	require.Equal(t, 1.0, metricValue(t, b.reg, postgresLookups, "layer", "postgres"), "the metric counts Postgres queries")
	require.Equal(t, 251.0, metricValue(t, b.reg, postgresLookups, "result", "miss"))

	// A second ingestor sharing the Redis cache does not ask Postgres at all.
	b2 := setup(t)
	res = b2.post(t, "/ingest", body, nil)
	requireJSONError(t, res, http.StatusUnauthorized, "INVALID_API_KEY")
	require.Equal(t, 1.0, metricValue(t, b2.reg, postgresLookups, "layer", "redis", "result", "miss"))
	require.Zero(t, metricValue(t, b2.reg, postgresLookups, "layer", "postgres"))
	require.Zero(t, b2.keyQueries.Load())
	require.Zero(t, b.produced(t))
}

// TestKeyRotationInvalidates (B04, promise 7): after the key changes in Postgres and the
// invalidation is published, the old key is refused within seconds, long before the
// positive TTL, and the new key works.
func TestKeyRotationInvalidates(t *testing.T) {
	t.Parallel()
	b := setup(t) // KeyCacheTTL stays at its 60 s default: only the invalidation can explain a quick 401
	require.Equal(t, time.Minute, b.cfg.KeyCacheTTL)
	ctx := context.Background()
	oldKey := b.project.APIKey
	for range 3 { // now cached locally and in Redis
		res := b.ingest(t, validEvent(oldKey))
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	}

	newKey, err := apikey.Generate()
	require.NoError(t, err)
	h := apikey.HashOf(newKey)
	_, err = b.pool.Exec(ctx, `UPDATE projects SET api_key = $1, api_key_hash = $2 WHERE id = $3`, newKey, h[:], b.project.ID)
	require.NoError(t, err)
	// Without the invalidation the cached key keeps working (bounded by the TTL).
	res := b.ingest(t, validEvent(oldKey))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)

	// Publish until the old key is refused: the service subscribes asynchronously, and a
	// message published before its subscription is lost (which the TTL bounds).
	start := time.Now()
	require.Eventually(t, func() bool {
		require.NoError(t, redisx.PublishKeyInvalidation(ctx, b.rdb, apikey.HashOf(oldKey)))
		r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(oldKey)), nil)
		return err == nil && r.status == http.StatusUnauthorized
	}, 5*time.Second, 50*time.Millisecond)
	t.Logf("old key refused %s after the first invalidation", time.Since(start).Round(time.Millisecond))
	for range 5 {
		res = b.ingest(t, validEvent(oldKey))
		requireJSONError(t, res, http.StatusUnauthorized, "INVALID_API_KEY")
	}
	res = b.ingest(t, validEvent(newKey))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	res = b.post(t, "/ingest/batch", mustJSON(t, []any{validEvent("")}), hdr{"X-API-Key": oldKey})
	requireJSONError(t, res, http.StatusUnauthorized, "INVALID_API_KEY")
}

// TestKeyDeletionExpires: without an invalidation message (say it was lost), a deleted
// project's key stops working once the positive TTL expires.
func TestKeyDeletionExpires(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *ingestor.Config) { c.KeyCacheTTL = 500 * time.Millisecond }))
	ctx := context.Background()
	res := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	_, err := b.pool.Exec(ctx, `DELETE FROM projects WHERE id = $1`, b.project.ID)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(b.project.APIKey)), nil)
		return err == nil && r.status == http.StatusUnauthorized
	}, 10*time.Second, 50*time.Millisecond)
}

// TestRedisDown (F14, promise 7, R6): with a Redis that refuses connections from the
// start, keys resolve through Postgres: valid keys are accepted, never 401 (nor 503).
func TestRedisDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := ln.Addr().String()
	require.NoError(t, ln.Close())
	dead := redis.NewClient(&redis.Options{Addr: closedAddr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })

	b := setup(t, withServiceRedis(dead), withConfig(func(c *ingestor.Config) {
		c.KeyCacheTTL = 50 * time.Millisecond // expire often, so Redis is consulted again and again
	}))
	other := b.newProject(t, "other")
	unknown, err := apikey.Generate()
	require.NoError(t, err)
	for range 10 {
		res := b.ingest(t, validEvent(b.project.APIKey))
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
		res = b.post(t, "/ingest/batch", mustJSON(t, []any{validEvent("")}), hdr{"X-API-Key": other.APIKey})
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
		res = b.ingest(t, validEvent(unknown))
		requireJSONError(t, res, http.StatusUnauthorized, "INVALID_API_KEY")
	}
	require.Positive(t, metricValue(t, b.reg, postgresLookups, "layer", "redis", "result", "error"), "Redis was consulted and failed")
	require.GreaterOrEqual(t, metricValue(t, b.reg, postgresLookups, "layer", "postgres", "result", "hit"), 2.0)
}

// TestRedisCut (F14): Redis goes away while the service runs, and comes back. Keys never
// seen before resolve through Postgres meanwhile; invalidations work again afterwards.
func TestRedisCut(t *testing.T) {
	t.Parallel()
	proxy := faultproxy.New(t, redisAddr(t))
	viaProxy := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = viaProxy.Close() })
	b := setup(t, withServiceRedis(viaProxy))
	ctx := context.Background()

	res := b.ingest(t, validEvent(b.project.APIKey))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)

	proxy.Cut()
	fresh := b.newProject(t, "fresh") // in no cache
	for range 5 {
		res = b.ingest(t, validEvent(fresh.APIKey))
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
		res = b.ingest(t, validEvent(b.project.APIKey))
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	}
	require.Positive(t, metricValue(t, b.reg, postgresLookups, "layer", "redis", "result", "error"))

	proxy.Restore()
	// The subscription comes back by itself: a rotation published now takes effect.
	newKey, err := apikey.Generate()
	require.NoError(t, err)
	h := apikey.HashOf(newKey)
	_, err = b.pool.Exec(ctx, `UPDATE projects SET api_key = $1, api_key_hash = $2 WHERE id = $3`, newKey, h[:], fresh.ID)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		require.NoError(t, redisx.PublishKeyInvalidation(ctx, b.rdb, apikey.HashOf(fresh.APIKey)))
		r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(fresh.APIKey)), nil)
		return err == nil && r.status == http.StatusUnauthorized
	}, 20*time.Second, 100*time.Millisecond)
	res = b.ingest(t, validEvent(newKey))
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
}

func redisAddr(t *testing.T) string {
	t.Helper()
	opts, err := redis.ParseURL(redistest.URL(t))
	require.NoError(t, err)
	return opts.Addr
}

// TestRateLimit (B33): a project bursting past its own limit gets 429 with Retry-After
// and the RateLimit headers; the refused events are not produced; another project is
// unaffected.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	// The bucket holds at least one full batch; a small batch size keeps the burst small.
	b := setup(t, withConfig(func(c *ingestor.Config) { c.MaxBatchEvents = 10 }))
	limited := b.newProject(t, "limited")
	_, err := b.pool.Exec(context.Background(), `UPDATE projects SET rate_limit = 5 WHERE id = $1`, limited.ID)
	require.NoError(t, err)

	accepted := 0
	var refused *response
	for range 40 {
		res := b.ingest(t, validEvent(limited.APIKey))
		if res.status == http.StatusAccepted {
			accepted++
			require.Equal(t, "5", res.header.Get("RateLimit-Limit"))
			continue
		}
		refused = &res
		break
	}
	require.NotNil(t, refused, "the limit was never enforced")
	requireJSONError(t, *refused, http.StatusTooManyRequests, "RATE_LIMITED")
	require.GreaterOrEqual(t, accepted, 10, "the burst is honoured")
	require.Less(t, accepted, 20)
	retry, err := strconv.Atoi(refused.header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", refused.header.Get("Retry-After"))
	require.GreaterOrEqual(t, retry, 1)
	require.Equal(t, "5", refused.header.Get("RateLimit-Limit"))
	require.Equal(t, "0", refused.header.Get("RateLimit-Remaining"))
	reset, err := strconv.Atoi(refused.header.Get("RateLimit-Reset"))
	require.NoError(t, err)
	require.Positive(t, reset)
	require.LessOrEqual(t, reset, 3, "a bucket of 10 at 5/s refills within 2 s")

	// A batch of the same project is refused as a whole.
	evs, _ := batchEvents(5)
	res := b.post(t, "/ingest/batch", mustJSON(t, evs), hdr{"X-API-Key": limited.APIKey})
	requireJSONError(t, res, http.StatusTooManyRequests, "RATE_LIMITED")
	require.NotEmpty(t, res.header.Get("Retry-After"))

	// Another project (service default 5000/s) is unaffected.
	for range 20 {
		res := b.ingest(t, validEvent(b.project.APIKey))
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	}
	require.EqualValues(t, accepted+20, b.produced(t), "refused events are not produced")

	// The bucket refills: after Retry-After the limited project is accepted again.
	require.Eventually(t, func() bool {
		r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(limited.APIKey)), nil)
		return err == nil && r.status == http.StatusAccepted
	}, time.Duration(retry+2)*time.Second, 100*time.Millisecond)
}

// B34: one address trying many keys gets 429 before any lookup once its budget is spent,
// with Retry-After; the warning names the address, never a key; other addresses (here
// 127.0.0.2) are unaffected.
func TestUnknownKeysPerAddress(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *ingestor.Config) { c.UnknownKeyRate, c.UnknownKeyBurst = 0.01, 5 }))
	// The project's key is in use from this address (so the ingestor knows it is valid);
	// cold is valid too but has not been used.
	r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(b.project.APIKey)), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, r.status)
	cold := b.newProject(t, "cold").APIKey
	for i := range 5 {
		unknown, err := apikey.Generate()
		require.NoError(t, err)
		r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(unknown)), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusUnauthorized, r.status, "attempt %d", i)
	}
	before := b.keyQueries.Load()
	// Spent: the next request from this address is refused before its key is looked up
	// unless the key is known valid (issue 16 item 5): an enumerating client learns nothing
	// about the keys it guesses, a valid key in use is never refused for other clients'
	// bad keys. A valid key not used recently is refused too (it is not looked up).
	for _, key := range []string{"pb_live_anotherunknownkeyanotherunknown", cold} {
		r, err := b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(key)), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusTooManyRequests, r.status)
		require.Equal(t, "RATE_LIMITED", r.env.Code)
		require.NotEmpty(t, r.header.Get("Retry-After"))
	}
	require.Equal(t, before, b.keyQueries.Load(), "a blocked address causes no key lookup")
	r, err = b.try(http.MethodPost, "/ingest", mustJSON(t, validEvent(b.project.APIKey)), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, r.status, "a valid key in use is not refused")

	// Another client address keeps working.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")},
	}).DialContext}}
	req, _ := http.NewRequest(http.MethodPost, b.url+"/ingest", strings.NewReader(string(mustJSON(t, validEvent(b.project.APIKey)))))
	req.Header.Set("Content-Type", "application/json")
	resp, err := other.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
}
