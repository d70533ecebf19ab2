package api_test

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

const isoMillis = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z`

// projectRE is the compat project object, field order included (unanchored).
func projectRE(name string, events int) string {
	return `\{"id":"[0-9a-f-]{36}","name":"` + regexp.QuoteMeta(name) + `","apiKey":"pb_live_[0-9A-Za-z]{32}","userId":"[0-9a-f-]{36}",` +
		`"createdAt":"` + isoMillis + `","updatedAt":"` + isoMillis + `","_count":\{"events":` + strconv.Itoa(events) + `\},` +
		`"settings":\{"alertThreshold":(null|\d+),"alertWindowSeconds":(null|\d+),"alertCooldownSeconds":(null|\d+),"alertsEnabled":(true|false),"retentionDays":(null|\d+),"rateLimit":(null|\d+)\}\}`
}

// requireProjectBody checks {"success":true,"data":<project>} byte for byte.
func requireProjectBody(t *testing.T, r response, name string, events int) {
	t.Helper()
	require.Regexp(t, `^\{"success":true,"data":`+projectRE(name, events)+`\}$`, string(r.body))
}

// The old dashboard's project calls work unchanged: shapes, field order, status codes
// and messages (acceptance 1).
func TestCompatProjectsCRUD(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, a := b.newUser("Owner One")

	r := c.do("POST", "/projects", map[string]string{"name": "First <app>"})
	require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	requireProjectBody(t, r, "First <app>", 0)
	first := r.data(t)
	require.Equal(t, a.id, first["userId"])
	require.Equal(t, map[string]any{"alertThreshold": nil, "alertWindowSeconds": nil, "alertCooldownSeconds": nil, "alertsEnabled": true, "retentionDays": nil, "rateLimit": nil}, first["settings"])
	second := c.createProject("Second")

	c.do("POST", "/projects", map[string]string{"name": ""}).requireError(t, 400, "VALIDATION_FAILED", "body/name must NOT have fewer than 1 characters")
	c.do("POST", "/projects", map[string]any{}).requireError(t, 400, "VALIDATION_FAILED", "body must have required property 'name'")

	// _count.events comes from the rollups.
	b.insertRollup(first["id"].(string), time.Now(), "error", 3)
	b.insertRollup(first["id"].(string), time.Now().Add(-time.Hour), "event", 4)

	r = c.do("GET", "/projects", nil)
	require.Equal(t, http.StatusOK, r.status)
	list := r.json(t)["data"].([]any)
	require.Len(t, list, 2)
	require.Equal(t, second["id"], list[0].(map[string]any)["id"], "newest first")
	require.Equal(t, first["id"], list[1].(map[string]any)["id"])
	require.Equal(t, map[string]any{"events": 7.0}, list[1].(map[string]any)["_count"])

	r = c.do("GET", "/projects/"+first["id"].(string), nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, first["apiKey"], r.data(t)["apiKey"])
	require.Regexp(t, `"_count":\{"events":7\}`, string(r.body))

	r = c.do("DELETE", "/projects/"+second["id"].(string), nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, `{"success":true,"message":"Project deleted"}`, string(r.body))
	c.do("GET", "/projects/"+second["id"].(string), nil).requireError(t, 404, "PROJECT_NOT_FOUND", "Project not found")
	c.do("DELETE", "/projects/"+second["id"].(string), nil).requireError(t, 404, "PROJECT_NOT_FOUND", "Project not found")

	now := time.Now().UTC().Truncate(time.Millisecond)
	var rows []eventRow
	for i := range 3 {
		rows = append(rows, eventRow{id: uuid.New(), typ: "event", name: "e", payload: `{}`, timestamp: now, receivedAt: now.Add(-time.Duration(i) * time.Second)})
	}
	b.insertEvents(first["id"].(string), rows)
	r = c.do("DELETE", "/projects/"+first["id"].(string)+"/events", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, `{"success":true,"message":"All events deleted","data":{"deletedCount":3}}`, string(r.body))
	require.Regexp(t, `"_count":\{"events":0\}`, string(c.do("GET", "/projects/"+first["id"].(string), nil).body))
	r = c.do("DELETE", "/projects/"+first["id"].(string)+"/events", nil)
	require.Equal(t, `{"success":true,"message":"All events deleted","data":{"deletedCount":0}}`, string(r.body))

	c.token = ""
	c.do("GET", "/projects", nil).requireError(t, 401, "UNAUTHORIZED", "Missing or invalid access token")
}

// Deleting a project removes its events, dedup ids, rollups and alerts, and tells every
// ingestor to forget its key (the Redis cache entry is deleted and a message published).
func TestDeleteProjectRemovesEverythingAndInvalidatesKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Deleter")
	p := c.createProject("Doomed")
	keep := c.createProject("Kept")
	id, key := p["id"].(string), p["apiKey"].(string)
	now := time.Now().UTC().Truncate(time.Millisecond)
	for _, proj := range []string{id, keep["id"].(string)} {
		b.insertEvents(proj, []eventRow{{id: uuid.New(), typ: "error", name: "boom", payload: `{"a":1}`, timestamp: now, receivedAt: now}})
		b.insertRollup(proj, now, "error", 1)
		_, err := b.pool.Exec(context.Background(), `INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold, recipient)
			VALUES ($1, $2, 'threshold', now() - interval '1 minute', now(), 12, 10, 'x@example.com')`, uuid.New(), proj)
		require.NoError(t, err)
	}
	ctx := context.Background()
	h := apikey.HashOf(key)
	require.NoError(t, b.rdb.Set(ctx, redisx.APIKeyCacheKey(h), id, time.Minute).Err())
	sub := b.rdb.Subscribe(ctx, redisx.KeyInvalidationChannel)
	defer sub.Close()
	_, err := sub.Receive(ctx) // subscription confirmed before the delete
	require.NoError(t, err)

	r := c.do("DELETE", "/projects/"+id, nil)
	require.Equal(t, `{"success":true,"message":"Project deleted"}`, string(r.body))
	for _, table := range []string{"events", "event_ids", "event_rollups", "alerts"} {
		require.Zero(t, b.count(`SELECT count(*) FROM `+table+` WHERE project_id = $1`, id), table)
		require.Equal(t, 1, b.count(`SELECT count(*) FROM `+table+` WHERE project_id = $1`, keep["id"]), table+" of another project")
	}
	require.Zero(t, b.count(`SELECT count(*) FROM projects WHERE id = $1`, id))
	n, err := b.rdb.Exists(ctx, redisx.APIKeyCacheKey(h)).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the cached key resolution is deleted")
	requireInvalidation(t, sub, h)
	c.do("GET", "/events?apiKey="+key, nil).requireError(t, 401, "INVALID_API_KEY", "Invalid API key")
}

// requireInvalidation waits for the invalidation of h on the ingestors' channel.
func requireInvalidation(t *testing.T, sub *redis.PubSub, h apikey.Hash) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		msg, err := sub.ReceiveTimeout(context.Background(), waitFor)
		require.NoError(t, err)
		if m, ok := msg.(*redis.Message); ok && m.Payload == h.String() {
			return
		}
	}
	t.Fatalf("no invalidation for %s", h)
}

// POST /projects/{id}/rotate-key: a new key, the old one invalidated everywhere.
func TestRotateKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Rotator")
	p := c.createProject("Keys")
	oldKey := p["apiKey"].(string)
	ctx := context.Background()
	sub := b.rdb.Subscribe(ctx, redisx.KeyInvalidationChannel)
	defer sub.Close()
	_, err := sub.Receive(ctx)
	require.NoError(t, err)

	r := c.do("POST", "/projects/"+p["id"].(string)+"/rotate-key", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	np := r.data(t)
	require.NotEqual(t, oldKey, np["apiKey"])
	require.Equal(t, p["id"], np["id"])
	require.Equal(t, p["createdAt"], np["createdAt"])
	requireInvalidation(t, sub, apikey.HashOf(oldKey))
	c.do("GET", "/events?apiKey="+oldKey, nil).requireError(t, 401, "INVALID_API_KEY", "Invalid API key")
	require.Equal(t, http.StatusOK, c.do("GET", "/events?apiKey="+np["apiKey"].(string), nil).status)
	require.Equal(t, np["apiKey"], c.do("GET", "/projects/"+p["id"].(string), nil).data(t)["apiKey"])
}

// PATCH /projects/{id}: name and settings within the database's ranges; null restores
// the default; protected and unknown fields are ignored (B65).
func TestUpdateProject(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, a := b.newUser("Patcher")
	p := c.createProject("Before")
	path := "/projects/" + p["id"].(string)

	r := c.do("PATCH", path, map[string]any{
		"name": "After",
		"settings": map[string]any{"alertThreshold": 25, "alertWindowSeconds": 120, "alertCooldownSeconds": 600,
			"alertsEnabled": false, "retentionDays": 7, "rateLimit": 40},
		"id": uuid.NewString(), "apiKey": "pb_live_forged", "userId": uuid.NewString(), "owner_id": uuid.NewString(),
		"api_key_hash": "00", "createdAt": "2000-01-01T00:00:00.000Z", "created_at": "2000-01-01T00:00:00.000Z", "_count": map[string]any{"events": 99},
	})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	requireProjectBody(t, r, "After", 0)
	d := r.data(t)
	require.Equal(t, map[string]any{"alertThreshold": 25.0, "alertWindowSeconds": 120.0, "alertCooldownSeconds": 600.0, "alertsEnabled": false, "retentionDays": 7.0, "rateLimit": 40.0}, d["settings"])
	require.Equal(t, p["id"], d["id"])
	require.Equal(t, p["apiKey"], d["apiKey"])
	require.Equal(t, a.id, d["userId"])
	require.Equal(t, p["createdAt"], d["createdAt"])
	require.Equal(t, map[string]any{"events": 0.0}, d["_count"])
	// rateLimit is the column the ingestor's key resolution reads.
	require.Equal(t, 1, b.count(`SELECT count(*) FROM projects WHERE id = $1 AND rate_limit = 40`, p["id"]))

	// A partial update leaves the rest alone; null restores the default; PUT is an alias.
	r = c.do("PUT", path, map[string]any{"settings": map[string]any{"alertThreshold": nil}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	d = r.data(t)
	require.Equal(t, "After", d["name"])
	require.Equal(t, map[string]any{"alertThreshold": nil, "alertWindowSeconds": 120.0, "alertCooldownSeconds": 600.0, "alertsEnabled": false, "retentionDays": 7.0, "rateLimit": 40.0}, d["settings"])

	bad := map[string]struct {
		body any
		msg  string
	}{
		"threshold low":    {map[string]any{"settings": map[string]any{"alertThreshold": 0}}, "body/settings/alertThreshold must be >= 1"},
		"threshold high":   {map[string]any{"settings": map[string]any{"alertThreshold": 1000001}}, "body/settings/alertThreshold must be <= 1000000"},
		"threshold float":  {map[string]any{"settings": map[string]any{"alertThreshold": 2.5}}, "body/settings/alertThreshold must be integer"},
		"threshold string": {map[string]any{"settings": map[string]any{"alertThreshold": "5"}}, "body/settings/alertThreshold must be integer"},
		"window low":       {map[string]any{"settings": map[string]any{"alertWindowSeconds": 9}}, "body/settings/alertWindowSeconds must be >= 10"},
		"window high":      {map[string]any{"settings": map[string]any{"alertWindowSeconds": 86401}}, "body/settings/alertWindowSeconds must be <= 86400"},
		"cooldown low":     {map[string]any{"settings": map[string]any{"alertCooldownSeconds": 59}}, "body/settings/alertCooldownSeconds must be >= 60"},
		"cooldown high":    {map[string]any{"settings": map[string]any{"alertCooldownSeconds": 604801}}, "body/settings/alertCooldownSeconds must be <= 604800"},
		"retention low":    {map[string]any{"settings": map[string]any{"retentionDays": 0}}, "body/settings/retentionDays must be >= 1"},
		"retention high":   {map[string]any{"settings": map[string]any{"retentionDays": 3651}}, "body/settings/retentionDays must be <= 3650"},
		"rate limit low":   {map[string]any{"settings": map[string]any{"rateLimit": 0}}, "body/settings/rateLimit must be >= 1"},
		"rate limit high":  {map[string]any{"settings": map[string]any{"rateLimit": 1000001}}, "body/settings/rateLimit must be <= 1000000"},
		"rate limit float": {map[string]any{"settings": map[string]any{"rateLimit": 1.5}}, "body/settings/rateLimit must be integer"},
		"rate limit str":   {map[string]any{"settings": map[string]any{"rateLimit": "100"}}, "body/settings/rateLimit must be integer"},
		"enabled":          {map[string]any{"settings": map[string]any{"alertsEnabled": "yes"}}, "body/settings/alertsEnabled must be boolean"},
		"settings":         {map[string]any{"settings": []int{1}}, "body/settings must be object"},
		"empty name":       {map[string]any{"name": ""}, "body/name must NOT have fewer than 1 characters"},
		"long name":        {map[string]any{"name": strings.Repeat("n", 201)}, "body/name must NOT have more than 200 characters"},
	}
	for name, tc := range bad {
		c.do("PATCH", path, tc.body).requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", tc.msg)
		_ = name
	}
	// The extremes of every range are accepted (they are the database's CHECKs).
	r = c.do("PATCH", path, map[string]any{"settings": map[string]any{"alertThreshold": 1000000, "alertWindowSeconds": 10,
		"alertCooldownSeconds": 604800, "retentionDays": 3650, "alertsEnabled": true}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	r = c.do("PATCH", path, map[string]any{"settings": map[string]any{"alertThreshold": 1, "alertWindowSeconds": 86400,
		"alertCooldownSeconds": 60, "retentionDays": 1}})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, http.StatusOK, c.do("PATCH", path, map[string]any{}).status)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM projects WHERE id = $1 AND rate_limit = 40`, p["id"]), "refused patches change nothing")
}

// settings.rateLimit (issue 18: the dashboard's "rate limit"): set, extremes, cleared
// with null. Every change drops the key's cached resolution (the Redis entry, and the
// invalidation message every ingestor's local cache listens to), as a rotation does, so
// the ingestors read the new limit on the next request; a patch without rateLimit
// publishes nothing.
func TestUpdateProjectRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Limiter")
	p := c.createProject("Limited")
	path := "/projects/" + p["id"].(string)
	h := apikey.HashOf(p["apiKey"].(string))
	ctx := context.Background()
	sub := b.rdb.Subscribe(ctx, redisx.KeyInvalidationChannel)
	defer sub.Close()
	_, err := sub.Receive(ctx)
	require.NoError(t, err)
	settings := func(r response) map[string]any {
		t.Helper()
		require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
		return r.data(t)["settings"].(map[string]any)
	}

	for _, v := range []int{1, 1000000, 250} {
		require.NoError(t, b.rdb.Set(ctx, redisx.APIKeyCacheKey(h), `{"id":"`+p["id"].(string)+`"}`, time.Minute).Err())
		r := c.do("PATCH", path, map[string]any{"settings": map[string]any{"rateLimit": v}})
		requireProjectBody(t, r, "Limited", 0)
		require.Equal(t, float64(v), settings(r)["rateLimit"])
		requireInvalidation(t, sub, h)
		n, err := b.rdb.Exists(ctx, redisx.APIKeyCacheKey(h)).Result()
		require.NoError(t, err)
		require.Zero(t, n, "the cached key resolution (with the old limit) is deleted")
		require.Equal(t, 1, b.count(`SELECT count(*) FROM projects WHERE id = $1 AND rate_limit = $2`, p["id"], v))
	}
	require.Equal(t, 250.0, settings(c.do("GET", path, nil))["rateLimit"])

	// Another setting leaves the limit alone and publishes nothing.
	require.Equal(t, 250.0, settings(c.do("PATCH", path, map[string]any{"settings": map[string]any{"alertThreshold": 3}}))["rateLimit"])
	for { // other tests may share the channel: only this key's messages count
		msg, err := sub.ReceiveTimeout(ctx, 300*time.Millisecond)
		if err != nil {
			break
		}
		m, ok := msg.(*redis.Message)
		require.False(t, ok && m.Payload == h.String(), "no invalidation without a rateLimit change")
	}

	// null: back to INGEST_RATE_LIMIT.
	s := settings(c.do("PATCH", path, map[string]any{"settings": map[string]any{"rateLimit": nil}}))
	require.Nil(t, s["rateLimit"])
	require.Contains(t, s, "rateLimit")
	requireInvalidation(t, sub, h)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM projects WHERE id = $1 AND rate_limit IS NULL`, p["id"]))
	c.do("PATCH", path, map[string]any{"settings": map[string]any{"rateLimit": -5}}).
		requireError(t, http.StatusBadRequest, "VALIDATION_FAILED", "body/settings/rateLimit must be >= 1")
}

// B63/B64 (acceptance 3): user A cannot see, change or delete user B's projects,
// events, stats or alerts. Every route answers exactly like a missing project.
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	alice, _ := b.newUser("Alice")
	bob, _ := b.newUser("Bob")
	mine := alice.createProject("Alice's")
	theirs := bob.createProject("Bob's")
	now := time.Now().UTC().Truncate(time.Millisecond)
	b.insertEvents(theirs["id"].(string), []eventRow{{id: uuid.New(), typ: "error", name: "secret", payload: `{"x":1}`, timestamp: now, receivedAt: now}})
	b.insertRollup(theirs["id"].(string), now, "error", 1)

	notFound := `{"success":false,"code":"PROJECT_NOT_FOUND","message":"Project not found"}`
	routes := []struct{ method, path string }{
		{"GET", "/projects/%s"}, {"PATCH", "/projects/%s"}, {"PUT", "/projects/%s"}, {"DELETE", "/projects/%s"},
		{"POST", "/projects/%s/rotate-key"}, {"GET", "/projects/%s/events"}, {"DELETE", "/projects/%s/events"},
		{"GET", "/projects/%s/stats"}, {"GET", "/projects/%s/alerts"},
	}
	for _, id := range []string{theirs["id"].(string), uuid.NewString(), "not-a-uuid", "%27%20OR%201=1--"} {
		for _, rt := range routes {
			var body any
			if rt.method == "PATCH" || rt.method == "PUT" {
				body = map[string]any{"name": "pwned"}
			}
			r := alice.do(rt.method, strings.Replace(rt.path, "%s", id, 1), body)
			require.Equal(t, http.StatusNotFound, r.status, "%s %s: %s", rt.method, rt.path, r.body)
			require.Equal(t, notFound, string(r.body), "%s %s", rt.method, rt.path)
		}
	}
	// A's list has only A's project; B's project is untouched.
	list := alice.do("GET", "/projects", nil).json(t)["data"].([]any)
	require.Len(t, list, 1)
	require.Equal(t, mine["id"], list[0].(map[string]any)["id"])
	got := bob.do("GET", "/projects/"+theirs["id"].(string), nil).data(t)
	require.Equal(t, theirs["name"], got["name"])
	require.Equal(t, theirs["apiKey"], got["apiKey"])
	require.Equal(t, map[string]any{"events": 1.0}, got["_count"])
	require.Equal(t, 1, b.count(`SELECT count(*) FROM events WHERE project_id = $1`, theirs["id"]))
	// A query parameter naming B's project on A's path is ignored.
	r := alice.do("GET", "/projects/"+mine["id"].(string)+"/events?project_id="+theirs["id"].(string)+"&projectId="+theirs["id"].(string), nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, `{"success":true,"data":[],"nextCursor":null}`, string(r.body))
}
