package api_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDuplicateKeysAreRefused (issue 16, item 9): one rule for duplicate JSON keys on
// every endpoint. encoding/json kept the last of them here while the ingestor kept the
// first apiKey; both now answer 400 INVALID_JSON naming the object and the key, and
// nothing is created or changed.
func TestDuplicateKeysAreRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, a := b.newUser("Duplicate Keys")
	p := c.createProject("Before")
	pid := p["id"].(string)
	anon := b.client()

	anon.do("POST", "/auth/register", `{"name":"Dup","email":"dup@example.com","password":"password","email":"other@example.com"}`).
		requireError(t, 400, "INVALID_JSON", `body must NOT have duplicate keys ("email" appears more than once)`)
	anon.do("POST", "/auth/register", `{"name":"Dup","email":"dup@example.com","password":"password","\u0065mail":"other@example.com"}`).
		requireError(t, 400, "INVALID_JSON", `body must NOT have duplicate keys ("email" appears more than once)`)
	require.Zero(t, b.count(`SELECT count(*) FROM users WHERE email IN ('dup@example.com', 'other@example.com')`), "no account was created")

	anon.do("POST", "/auth/login", `{"email":"`+a.email+`","password":"wrong","password":"`+a.password+`"}`).
		requireError(t, 400, "INVALID_JSON", `body must NOT have duplicate keys ("password" appears more than once)`)

	c.do("POST", "/projects", `{"name":"One","name":"Two"}`).
		requireError(t, 400, "INVALID_JSON", `body must NOT have duplicate keys ("name" appears more than once)`)
	c.do("PATCH", "/projects/"+pid, `{"name":"After","settings":{"retentionDays":7,"retentionDays":30}}`).
		requireError(t, 400, "INVALID_JSON", `body/settings must NOT have duplicate keys ("retentionDays" appears more than once)`)
	c.do("PUT", "/projects/"+pid, `{"name":"After","extra":[{"k":1},{"k":1,"k":2}]}`).
		requireError(t, 400, "INVALID_JSON", `body/extra/1 must NOT have duplicate keys ("k" appears more than once)`)

	r := c.do("GET", "/projects/"+pid, nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Equal(t, "Before", r.data(t)["name"], "the project was not changed")
	require.Equal(t, 1, b.count(`SELECT count(*) FROM projects WHERE user_id = $1`, a.id), "no project was created")

	// Invalid JSON is still that first; the same key in different objects is no duplicate.
	c.do("POST", "/projects", `{"name":"One","name":"Two"`).requireError(t, 400, "INVALID_JSON", "body is not valid JSON")
	r = c.do("PATCH", "/projects/"+pid, `{"name":"After","settings":{"name":"x","retentionDays":30}}`)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
}

// TestStatsRangeOverflow (issue 16, item 9): a range of ~292 years or more overflowed
// time.Duration, wrapped to a negative bucket count and answered 500; every range beyond
// the bucket bound is 400 VALIDATION_FAILED, whatever the interval.
func TestStatsRangeOverflow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Overflow")
	pid := c.createProject("Stats")["id"].(string)
	for _, q := range []string{
		"since=0001-01-01T00:00:00Z",                                // to now: Sub saturates
		"since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59.999Z", // the widest range
		"since=1700-01-01T00:00:00Z&until=1992-06-01T00:00:00Z",     // just under 292 years: adding a bucket wrapped
		"since=1700-01-01&until=1992-04-11T23:47:16.854Z",           // the last range Sub does not saturate
		"since=1990-01-01&until=2030-01-01",                         // 40 years of days: over 10,080 buckets
	} {
		for _, iv := range []string{"1m", "1h", "1d"} {
			r := c.do("GET", "/projects/"+pid+"/stats?interval="+iv+"&"+q, nil)
			r.requireError(t, 400, "VALIDATION_FAILED", "the range holds more than 10080 buckets of "+iv+"; narrow since/until or use a wider interval")
		}
	}
	// The bound itself: 10,080 days are answered, one more day is not.
	r := c.do("GET", "/projects/"+pid+"/stats?interval=1d&since=0001-01-01&until=0028-08-07", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	require.Len(t, r.data(t)["series"], 10080)
	require.Equal(t, "0001-01-01T00:00:00.000Z", r.data(t)["series"].([]any)[0].(map[string]any)["bucket"])
	c.do("GET", "/projects/"+pid+"/stats?interval=1d&since=0001-01-01&until=0028-08-08", nil).
		requireCode(t, 400, "VALIDATION_FAILED")
	// Since after until stays its own message.
	c.do("GET", "/projects/"+pid+"/stats?since=9999-01-01&until=0001-01-01", nil).
		requireError(t, 400, "VALIDATION_FAILED", "querystring/until must be later than querystring/since")
}
