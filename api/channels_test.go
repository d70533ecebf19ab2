package api_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/migrations"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

const secretRE = `^whsec_[A-Za-z0-9+/]{43}=$`

// storedSecret reads a channel's secret as the alerter will: the raw HMAC key.
func (b *bundle) storedSecret(channelID string) []byte {
	b.t.Helper()
	var key []byte
	require.NoError(b.t, b.pool.QueryRow(context.Background(), `SELECT secret FROM notification_channels WHERE id = $1`, channelID).Scan(&key))
	return key
}

// requireSecretShows checks the one-time secret: the documented format, and the key the
// alerter signs with is exactly its decoded bytes.
func requireSecretShows(t *testing.T, b *bundle, d map[string]any) string {
	t.Helper()
	secret, ok := d["secret"].(string)
	require.True(t, ok, "no secret in %v", d)
	require.Regexp(t, secretRE, secret)
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	require.NoError(t, err)
	require.Len(t, key, 32)
	require.Equal(t, key, b.storedSecret(d["id"].(string)))
	return secret
}

func channelList(t *testing.T, r response) []map[string]any {
	t.Helper()
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	var out []map[string]any
	for _, c := range r.json(t)["data"].([]any) {
		out = append(out, c.(map[string]any))
	}
	return out
}

// A new project has its owner-email channel; webhooks are created, listed, read,
// patched, rotated and deleted; a webhook's secret is shown at creation and rotation only.
func TestChannelsCRUDAndSecretShownOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Channel Owner")
	pid := c.createProject("Notified")["id"].(string)
	base := "/projects/" + pid + "/channels"

	list := channelList(t, c.do("GET", base, nil))
	require.Len(t, list, 1, "a new project has its owner-email channel")
	email := list[0]
	require.Equal(t, "email", email["kind"])
	require.Equal(t, "Owner email", email["name"])
	require.Nil(t, email["url"])
	require.Equal(t, true, email["enabled"])
	require.Equal(t, pid, email["projectId"])
	require.Equal(t, 1, b.count(`SELECT count(*) FROM notification_channels WHERE project_id = $1 AND kind = 'email' AND url IS NULL AND secret IS NULL`, pid))

	r := c.do("POST", base, map[string]any{"kind": "webhook", "name": "Ops hook", "url": "https://ops.example.com/hooks/pb?team=1"})
	require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	require.Regexp(t, `^\{"success":true,"data":\{"id":"[0-9a-f-]{36}","projectId":"`+pid+`","kind":"webhook","name":"Ops hook",`+
		`"url":"https://ops.example.com/hooks/pb\?team=1","enabled":true,"createdAt":"`+isoMillis+`","updatedAt":"`+isoMillis+`","secret":"whsec_[^"]+"\}\}$`, string(r.body))
	hook := r.data(t)
	hookID := hook["id"].(string)
	secret := requireSecretShows(t, b, hook)

	// Never again: not in the list, not in GET, not in a PATCH answer.
	r = c.do("GET", base, nil)
	require.NotContains(t, string(r.body), "secret")
	require.NotContains(t, string(r.body), strings.TrimPrefix(secret, "whsec_"))
	list = channelList(t, r)
	require.Len(t, list, 2)
	require.Equal(t, email["id"], list[0]["id"], "oldest first")
	require.Equal(t, hookID, list[1]["id"])
	require.Equal(t, "https://ops.example.com/hooks/pb?team=1", list[1]["url"], "a webhook URL is shown to its owner in full")
	r = c.do("GET", base+"/"+hookID, nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.NotContains(t, string(r.body), "secret")
	require.Equal(t, hook["name"], r.data(t)["name"])

	r = c.do("PATCH", base+"/"+hookID, map[string]any{"name": "Renamed", "enabled": false, "url": "http://10.0.0.7:8080/in"})
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.NotContains(t, string(r.body), "secret")
	d := r.data(t)
	require.Equal(t, "Renamed", d["name"])
	require.Equal(t, false, d["enabled"])
	require.Equal(t, "http://10.0.0.7:8080/in", d["url"])
	require.Equal(t, "webhook", d["kind"])
	// Partial: only what is sent changes.
	d = c.do("PATCH", base+"/"+hookID, map[string]any{"enabled": true}).data(t)
	require.Equal(t, "Renamed", d["name"])
	require.Equal(t, true, d["enabled"])
	require.Equal(t, "http://10.0.0.7:8080/in", d["url"])
	// An empty patch answers the channel unchanged.
	require.Equal(t, d, c.do("PATCH", base+"/"+hookID, map[string]any{}).data(t))

	// Rotation: a new secret, shown once, stored; the old one is gone.
	old := b.storedSecret(hookID)
	r = c.do("POST", base+"/"+hookID+"/rotate-secret", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	rotated := requireSecretShows(t, b, r.data(t))
	require.NotEqual(t, secret, rotated)
	require.NotEqual(t, old, b.storedSecret(hookID))
	require.NotContains(t, string(c.do("GET", base, nil).body), "secret")

	// The email channel can be renamed and disabled, but has no URL and no secret.
	d = c.do("PATCH", base+"/"+email["id"].(string), map[string]any{"name": "Me", "enabled": false, "url": nil}).data(t)
	require.Equal(t, "Me", d["name"])
	require.Equal(t, false, d["enabled"])
	require.Nil(t, d["url"])

	r = c.do("DELETE", base+"/"+hookID, nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, `{"success":true,"message":"Channel deleted"}`, string(r.body))
	c.do("GET", base+"/"+hookID, nil).requireError(t, 404, "NOT_FOUND", "Channel not found")
	c.do("DELETE", base+"/"+hookID, nil).requireError(t, 404, "NOT_FOUND", "Channel not found")
	c.do("PATCH", base+"/"+hookID, map[string]any{"name": "x"}).requireError(t, 404, "NOT_FOUND", "Channel not found")
	c.do("POST", base+"/"+hookID+"/rotate-secret", nil).requireError(t, 404, "NOT_FOUND", "Channel not found")
	require.Len(t, channelList(t, c.do("GET", base, nil)), 1)

	// Deleting the project deletes its channels.
	require.Equal(t, http.StatusOK, c.do("DELETE", "/projects/"+pid, nil).status)
	require.Equal(t, 0, b.count(`SELECT count(*) FROM notification_channels WHERE project_id = $1`, pid))
	c.do("GET", base, nil).requireError(t, 404, "PROJECT_NOT_FOUND", "Project not found")
}

// A Slack URL is itself a secret: answered in full only to the request that sets it,
// redacted to scheme://host/… everywhere else; stored in full for the alerter.
func TestChannelSlackURLRedacted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Slack Owner")
	pid := c.createProject("Chatty")["id"].(string)
	base := "/projects/" + pid + "/channels"
	const hookURL = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"

	r := c.do("POST", base, map[string]any{"kind": "slack", "name": "#alerts", "url": hookURL, "enabled": false})
	require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	d := r.data(t)
	require.Equal(t, hookURL, d["url"])
	require.Equal(t, false, d["enabled"])
	require.NotContains(t, d, "secret")
	id := d["id"].(string)
	var stored string
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT url FROM notification_channels WHERE id = $1`, id).Scan(&stored))
	require.Equal(t, hookURL, stored)
	require.Equal(t, 1, b.count(`SELECT count(*) FROM notification_channels WHERE id = $1 AND secret IS NULL`, id))

	for _, r := range []response{c.do("GET", base, nil), c.do("GET", base+"/"+id, nil), c.do("PATCH", base+"/"+id, map[string]any{"name": "#ops"})} {
		require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
		require.NotContains(t, string(r.body), "XXXXXXXX")
		require.Contains(t, string(r.body), `"url":"https://hooks.slack.com/…"`)
	}
	const newURL = "https://chat.example.org:8443/hooks/abcdef"
	d = c.do("PATCH", base+"/"+id, map[string]any{"url": newURL}).data(t)
	require.Equal(t, newURL, d["url"], "the request that sets the URL sees it")
	require.Equal(t, "https://chat.example.org:8443/…", c.do("GET", base+"/"+id, nil).data(t)["url"])
	c.do("POST", base+"/"+id+"/rotate-secret", nil).requireError(t, 400, "BAD_REQUEST", "Only webhook channels have a secret")
}

// Bodies are validated field by field, the message naming the field; unknown and
// protected fields are ignored.
func TestChannelValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Validator")
	pid := c.createProject("Strict")["id"].(string)
	base := "/projects/" + pid + "/channels"
	long := "https://example.com/" + strings.Repeat("a", 2048)

	for _, tc := range []struct {
		body any
		msg  string
	}{
		{map[string]any{"name": "x", "url": "https://example.com"}, "body must have required property 'kind'"},
		{map[string]any{"kind": "webhook", "url": "https://example.com"}, "body must have required property 'name'"},
		{map[string]any{"kind": "sms", "name": "x"}, "body/kind must be equal to one of the allowed values (email, webhook, slack)"},
		{map[string]any{"kind": 1, "name": "x"}, "body/kind must be string"},
		{map[string]any{"kind": "webhook", "name": ""}, "body/name must NOT have fewer than 1 characters"},
		{map[string]any{"kind": "webhook", "name": strings.Repeat("n", 101), "url": "https://example.com"}, "body/name must NOT have more than 100 characters"},
		{map[string]any{"kind": "webhook", "name": nil, "url": "https://example.com"}, "body/name must be string"},
		{map[string]any{"kind": "webhook", "name": "x"}, "body must have required property 'url'"},
		{map[string]any{"kind": "slack", "name": "x"}, "body must have required property 'url'"},
		{map[string]any{"kind": "webhook", "name": "x", "url": nil}, "body/url must be string"},
		{map[string]any{"kind": "webhook", "name": "x", "url": 5}, "body/url must be string"},
		{map[string]any{"kind": "webhook", "name": "x", "url": ""}, "body/url must NOT have fewer than 1 characters"},
		{map[string]any{"kind": "webhook", "name": "x", "url": long}, "body/url must NOT have more than 2048 characters"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "ftp://example.com/x"}, "body/url must be an absolute http or https URL, like https://example.com/hooks/pulseboard"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "/relative/path"}, "body/url must be an absolute http or https URL, like https://example.com/hooks/pulseboard"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https:example.com"}, "body/url must be an absolute http or https URL, like https://example.com/hooks/pulseboard"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://"}, "body/url must be an absolute http or https URL, like https://example.com/hooks/pulseboard"},
		{map[string]any{"kind": "slack", "name": "x", "url": "https://user:pw@example.com/x"}, "body/url must not contain user info (user:password@)"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com/x#frag"}, "body/url must not have a fragment"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com/a b"}, "body/url must not contain spaces or control characters"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com:0/x"}, "body/url must have a port between 1 and 65535"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com:70000/x"}, "body/url must have a port between 1 and 65535"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com", "enabled": "yes"}, "body/enabled must be boolean"},
		{map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com", "enabled": nil}, "body/enabled must be boolean"},
		{map[string]any{"kind": "email", "name": "Boss", "url": "mailto:boss@example.com"}, "body/url must be absent for an email channel: its mail goes only to the project owner's verified address"},
		{[]any{}, "body must be object"},
	} {
		c.do("POST", base, tc.body).requireError(t, 400, "VALIDATION_FAILED", tc.msg)
	}
	c.do("POST", base, `{"kind":"webhook","kind":"slack","name":"x","url":"https://example.com"}`).requireCode(t, 400, "INVALID_JSON")
	c.do("POST", base, "x", "Content-Type", "", "Content-Type", "text/plain").requireCode(t, 415, "UNSUPPORTED_MEDIA_TYPE")
	require.Len(t, channelList(t, c.do("GET", base, nil)), 1, "nothing invalid was created")

	// PATCH: the same rules; kind decides whether a URL is allowed.
	hook := c.do("POST", base, map[string]any{"kind": "webhook", "name": "x", "url": "https://example.com/in", "secret": "whsec_mine", "id": uuid.NewString()}).data(t)
	require.NotEqual(t, "whsec_mine", hook["secret"], "the secret is the server's")
	hookID := hook["id"].(string)
	secret := b.storedSecret(hookID)
	emailID := channelList(t, c.do("GET", base, nil))[0]["id"].(string)
	for _, tc := range []struct {
		id   string
		body any
		msg  string
	}{
		{hookID, map[string]any{"name": ""}, "body/name must NOT have fewer than 1 characters"},
		{hookID, map[string]any{"name": nil}, "body/name must be string"},
		{hookID, map[string]any{"url": nil}, "body/url must be string"},
		{hookID, map[string]any{"url": "gopher://example.com"}, "body/url must be an absolute http or https URL, like https://example.com/hooks/pulseboard"},
		{hookID, map[string]any{"enabled": 1}, "body/enabled must be boolean"},
		{hookID, map[string]any{"enabled": nil}, "body/enabled must be boolean"},
		{emailID, map[string]any{"url": "https://example.com"}, "body/url must be absent for an email channel: its mail goes only to the project owner's verified address"},
	} {
		c.do("PATCH", base+"/"+tc.id, tc.body).requireError(t, 400, "VALIDATION_FAILED", tc.msg)
	}
	// Protected and unknown fields are ignored (the project PATCH's rule, B65).
	d := c.do("PATCH", base+"/"+hookID, map[string]any{"kind": "slack", "secret": "whsec_forged", "projectId": uuid.NewString(),
		"id": uuid.NewString(), "createdAt": "2000-01-01T00:00:00.000Z", "colour": "red"}).data(t)
	require.Equal(t, hookID, d["id"])
	require.Equal(t, "webhook", d["kind"])
	require.Equal(t, pid, d["projectId"])
	require.Equal(t, hook["createdAt"], d["createdAt"])
	require.Equal(t, secret, b.storedSecret(hookID))
}

// API_MAX_CHANNELS_PER_PROJECT bounds a project's channels (409 CHANNEL_LIMIT), exactly
// under concurrency; a project has at most one email channel.
func TestChannelCap(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_CHANNELS_PER_PROJECT", "3"))
	c, _ := b.newUser("Capped")
	pid := c.createProject("Full")["id"].(string)
	base := "/projects/" + pid + "/channels"
	const capMsg = "Channel limit reached: a project may have at most 3 notification channels; delete one first"
	const emailMsg = "The project has an email channel already: mail goes only to the owner's verified address, so a project has at most one"

	c.do("POST", base, map[string]any{"kind": "email", "name": "Again"}).requireError(t, 409, "CHANNEL_LIMIT", emailMsg)
	for i := range 2 { // with the owner-email channel, 3
		r := c.do("POST", base, map[string]any{"kind": "slack", "name": fmt.Sprint("s", i), "url": "https://hooks.example.com/x"})
		require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	}
	c.do("POST", base, map[string]any{"kind": "webhook", "name": "one too many", "url": "https://example.com"}).requireError(t, 409, "CHANNEL_LIMIT", capMsg)
	require.Equal(t, 3, b.count(`SELECT count(*) FROM notification_channels WHERE project_id = $1`, pid))

	// Deleting the email channel makes room, and a new email channel may replace it.
	list := channelList(t, c.do("GET", base, nil))
	require.Equal(t, "email", list[0]["kind"])
	require.Equal(t, http.StatusOK, c.do("DELETE", base+"/"+list[0]["id"].(string), nil).status)
	r := c.do("POST", base, map[string]any{"kind": "email", "name": "Back"})
	require.Equal(t, http.StatusCreated, r.status, "body: %s", r.body)
	require.Nil(t, r.data(t)["url"])
	require.NotContains(t, r.data(t), "secret")

	// Concurrent creations on a project with room for 2: exactly 2 win.
	pid2 := c.createProject("Race")["id"].(string)
	var wg sync.WaitGroup
	statuses := make([]int, 8)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = c.do("POST", "/projects/"+pid2+"/channels", map[string]any{"kind": "webhook", "name": fmt.Sprint("w", i), "url": "https://example.com"}).status
		}()
	}
	wg.Wait()
	created := 0
	for _, s := range statuses {
		require.Contains(t, []int{http.StatusCreated, http.StatusConflict}, s)
		if s == http.StatusCreated {
			created++
		}
	}
	require.Equal(t, 2, created)
	require.Equal(t, 3, b.count(`SELECT count(*) FROM notification_channels WHERE project_id = $1`, pid2))
}

// Another user's project is PROJECT_NOT_FOUND on every channel route, and a channel of
// another project (even one's own) is NOT_FOUND on this project's path; nothing changes.
func TestChannelsCrossUser404(t *testing.T) {
	t.Parallel()
	b := setup(t)
	alice, _ := b.newUser("Alice Channels")
	bob, _ := b.newUser("Bob Channels")
	ap := alice.createProject("Alice's")["id"].(string)
	bp := bob.createProject("Bob's")["id"].(string)
	hook := alice.do("POST", "/projects/"+ap+"/channels", map[string]any{"kind": "webhook", "name": "a", "url": "https://alice.example.com"}).data(t)
	hid := hook["id"].(string)
	secret := b.storedSecret(hid)
	aBase, bBase := "/projects/"+ap+"/channels", "/projects/"+bp+"/channels"

	for _, r := range []response{
		bob.do("GET", aBase, nil),
		bob.do("POST", aBase, map[string]any{"kind": "webhook", "name": "b", "url": "https://bob.example.com"}),
		bob.do("GET", aBase+"/"+hid, nil),
		bob.do("PATCH", aBase+"/"+hid, map[string]any{"url": "https://bob.example.com"}),
		bob.do("POST", aBase+"/"+hid+"/rotate-secret", nil),
		bob.do("DELETE", aBase+"/"+hid, nil),
		bob.do("GET", "/projects/not-a-uuid/channels", nil),
	} {
		r.requireError(t, 404, "PROJECT_NOT_FOUND", "Project not found")
	}
	// Alice's channel id on Bob's own project: not his channel.
	for _, r := range []response{
		bob.do("GET", bBase+"/"+hid, nil),
		bob.do("PATCH", bBase+"/"+hid, map[string]any{"url": "https://bob.example.com"}),
		bob.do("POST", bBase+"/"+hid+"/rotate-secret", nil),
		bob.do("DELETE", bBase+"/"+hid, nil),
		bob.do("GET", bBase+"/not-a-uuid", nil),
	} {
		r.requireError(t, 404, "NOT_FOUND", "Channel not found")
	}
	// A channel of Alice's other project is not on this project's path either.
	ap2 := alice.createProject("Alice's other")["id"].(string)
	alice.do("GET", "/projects/"+ap2+"/channels/"+hid, nil).requireError(t, 404, "NOT_FOUND", "Channel not found")

	got := alice.do("GET", aBase+"/"+hid, nil).data(t)
	require.Equal(t, "https://alice.example.com", got["url"])
	require.Equal(t, hook["updatedAt"], got["updatedAt"])
	require.Equal(t, secret, b.storedSecret(hid))
	require.Len(t, channelList(t, alice.do("GET", aBase, nil)), 2)
	require.Len(t, channelList(t, bob.do("GET", bBase, nil)), 1)
}

// The channel routes' real answers match openapi.json.
func TestOpenAPIDescribesChannelAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_CHANNELS_PER_PROJECT", "2"))
	v := newValidator(t, b.client().do("GET", "/openapi.json", nil).body)
	owner, _ := b.newUser("Documented Channels")
	c := &checked{client: owner, v: v, matched: map[string]bool{}}
	pid := owner.createProject("Doc")["id"].(string)
	base := "/projects/" + pid + "/channels"

	c.do("GET", base, nil)
	hook := c.do("POST", base, map[string]any{"kind": "webhook", "name": "w", "url": "https://example.com/in"}).data(t)
	id := hook["id"].(string)
	c.do("POST", base, map[string]any{"kind": "webhook", "name": "w"})                              // 400
	c.do("POST", base, map[string]any{"kind": "slack", "name": "s", "url": "https://hooks.x.io/a"}) // 409
	c.do("GET", base+"/"+id, nil)
	c.do("GET", base+"/"+uuid.NewString(), nil) // 404 NOT_FOUND
	c.do("PATCH", base+"/"+id, map[string]any{"name": "renamed", "enabled": false})
	c.do("PATCH", base+"/"+id, map[string]any{"name": ""}) // 400
	c.do("POST", base+"/"+id+"/rotate-secret", nil)
	emailID := channelList(t, owner.do("GET", base, nil))[0]["id"].(string)
	c.do("POST", base+"/"+emailID+"/rotate-secret", nil) // 400
	c.do("DELETE", base+"/"+id, nil)
	c.do("GET", "/projects/"+uuid.NewString()+"/channels", nil) // 404 PROJECT_NOT_FOUND
	for _, want := range []string{"GET " + base + " 200", "POST " + base + " 201", "POST " + base + " 400", "POST " + base + " 409",
		"GET " + base + "/" + id + " 200", "PATCH " + base + "/" + id + " 200", "POST " + base + "/" + id + "/rotate-secret 200",
		"POST " + base + "/" + emailID + "/rotate-secret 400", "DELETE " + base + "/" + id + " 200"} {
		require.True(t, c.matched[want], "scenario did not produce %s", want)
	}
}

// Migration 00006 gives every project that existed before it its owner-email channel
// (and every alert its email delivery); the api then lists that channel.
func TestMigrationBackfillsOwnerEmailChannel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	admin := pgtest.ServerURL(t)
	conn, err := pgx.Connect(ctx, admin)
	require.NoError(t, err)
	defer conn.Close(ctx)
	name := "pbtest_mig_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	_, err = conn.Exec(ctx, "CREATE DATABASE "+name)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	u, err := url.Parse(admin)
	require.NoError(t, err)
	u.Path = "/" + name
	db, err := pgx.Connect(ctx, u.String())
	require.NoError(t, err)
	defer db.Close(ctx)

	// The Up sections of the migrations before 00006, as goose would apply them.
	files, err := fs.Glob(migrations.FS(), "*.sql")
	require.NoError(t, err)
	up := func(file string) {
		t.Helper()
		b, err := fs.ReadFile(migrations.FS(), file)
		require.NoError(t, err)
		s := string(b)
		i, j := strings.Index(s, "-- +goose Up"), strings.Index(s, "-- +goose Down")
		require.True(t, i >= 0 && j > i, "%s: no goose sections", file)
		require.NoError(t, db.PgConn().Exec(ctx, s[i:j]).Close(), "applying %s", file)
	}
	var the00006 string
	for _, f := range files {
		if f >= "00006" {
			if strings.HasPrefix(f, "00006") {
				the00006 = f
			}
			continue
		}
		up(f)
	}
	require.NotEmpty(t, the00006, "migration 00006 is missing")

	userID, p1, p2, alertID := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	_, err = db.Exec(ctx, `INSERT INTO users (id, name, email, password_hash) VALUES ($1, 'Old', 'old@example.com', 'x')`, userID)
	require.NoError(t, err)
	for i, p := range []uuid.UUID{p1, p2} {
		_, err = db.Exec(ctx, `INSERT INTO projects (id, user_id, name, api_key, api_key_hash) VALUES ($1, $2, $3, $4, $5)`,
			p, userID, fmt.Sprint("old ", i), fmt.Sprintf("pb_live_%032d", i), []byte(fmt.Sprintf("%032d", i)))
		require.NoError(t, err)
	}
	_, err = db.Exec(ctx, `INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold, state, attempts, recipient, sent_at)
		VALUES ($1, $2, 'threshold', now() - interval '1 minute', now(), 12, 10, 'sent', 1, 'old@example.com', now())`, alertID, p1)
	require.NoError(t, err)
	up(the00006)

	for _, p := range []uuid.UUID{p1, p2} {
		var kind, name string
		var url *string
		var enabled bool
		require.NoError(t, db.QueryRow(ctx, `SELECT kind, name, url, enabled FROM notification_channels WHERE project_id = $1`, p).Scan(&kind, &name, &url, &enabled))
		require.Equal(t, "email", kind)
		require.Equal(t, "Owner email", name)
		require.Nil(t, url)
		require.True(t, enabled)
	}
	var state, target string
	require.NoError(t, db.QueryRow(ctx, `SELECT d.state, d.target FROM notification_deliveries d
		JOIN notification_channels c ON c.id = d.channel_id WHERE d.alert_id = $1 AND c.project_id = $2`, alertID, p1).Scan(&state, &target))
	require.Equal(t, "sent", state)
	require.Equal(t, "old@example.com", target)
}
