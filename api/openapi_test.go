package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/api"
)

// newValidator parses doc with libopenapi and validates it against the OpenAPI 3.1
// meta-schema.
func newValidator(t *testing.T, doc []byte) validator.Validator {
	t.Helper()
	d, err := libopenapi.NewDocument(doc)
	require.NoError(t, err)
	require.Equal(t, "3.1.0", d.GetVersion())
	_, err = d.BuildV3Model()
	require.NoError(t, err, "the document must build a v3 model (all $refs resolve)")
	v, errs := validator.NewValidator(d)
	require.Empty(t, errs)
	ok, verrs := v.ValidateDocument()
	for _, e := range verrs {
		t.Errorf("openapi.json: %s", e.Error())
	}
	require.True(t, ok)
	return v
}

// checked sends requests like client.do and validates every answer against the
// document: status declared for the operation, body matching its schema.
type checked struct {
	*client
	v       validator.Validator
	matched map[string]bool // "METHOD /path-template status" seen
}

func (c *checked) do(method, path string, body any, headers ...string) response {
	c.t.Helper()
	r := c.client.do(method, path, body, headers...)
	c.validate(method, c.b.base+path, r)
	return r
}

func (c *checked) validate(method, rawURL string, r response) {
	c.t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(c.t, err)
	req := &http.Request{Method: method, URL: u, Header: http.Header{}}
	resp := &http.Response{StatusCode: r.status, Header: r.header, Body: io.NopCloser(bytes.NewReader(r.body)), Request: req}
	ok, errs := c.v.ValidateHttpResponse(req, resp)
	for _, e := range errs {
		c.t.Errorf("%s %s → %d does not match openapi.json: %s\nbody: %s", method, u.Path, r.status, e.Error(), r.body)
	}
	require.True(c.t, ok || len(errs) > 0)
	c.matched[method+" "+u.Path+" "+fmt.Sprint(r.status)] = true
}

// GET /openapi.json is a valid OpenAPI 3.1 document (checked by libopenapi-validator
// against the 3.1 meta-schema), and real answers of the running api, successes and
// failures of every route, match it (acceptance 7).
func TestOpenAPIDocumentMatchesRealResponses(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_LOGIN_ACCOUNT_FREE_FAILURES", "1"))
	raw := b.client().do("GET", "/openapi.json", nil)
	require.Equal(t, http.StatusOK, raw.status)
	require.Equal(t, "application/json; charset=utf-8", raw.header.Get("Content-Type"))
	require.Equal(t, api.OpenAPIDocument(), raw.body)
	v := newValidator(t, raw.body)
	c := &checked{client: b.client(), v: v, matched: map[string]bool{}}

	c.do("GET", "/openapi.json", nil)
	c.do("POST", "/auth/register", map[string]string{"name": "Open Api", "email": "openapi@example.com", "password": "password-1"})
	c.do("POST", "/auth/register", map[string]string{"name": "Open Api", "email": "openapi@example.com", "password": "password-1"}) // 409
	c.do("POST", "/auth/register", map[string]string{"name": "O"})                                                                  // 400
	c.do("POST", "/auth/register", "x", "Content-Type", "", "Content-Type", "text/plain")                                           // 415
	c.do("POST", "/auth/login", map[string]string{"email": "openapi@example.com", "password": "wrong-password"})                    // 401
	c.do("POST", "/auth/login", map[string]string{"email": "openapi@example.com", "password": "wrong-password"})                    // 401, locks
	c.do("POST", "/auth/login", map[string]string{"email": "openapi@example.com", "password": "password-1"})                        // 429: locked after 1 failure
	b.clock.Advance(time.Hour)
	login := c.do("POST", "/auth/login", map[string]string{"email": "openapi@example.com", "password": "password-1"})
	require.Equal(t, http.StatusOK, login.status)
	c.token = login.data(t)["accessToken"].(string)
	c.do("GET", "/me", nil)
	c.do("POST", "/auth/refresh", "{}")
	c.do("POST", "/auth/refresh", nil, "Origin", evilOrigin) // 403
	anon := &checked{client: b.client(), v: v, matched: c.matched}
	anon.do("POST", "/auth/refresh", nil) // 401 NO_REFRESH_TOKEN
	anon.do("GET", "/me", nil)            // 401
	anon.do("GET", "/projects", nil)      // 401

	p := c.do("POST", "/projects", map[string]string{"name": "Documented"}).data(t)
	id := p["id"].(string)
	c.do("POST", "/projects", map[string]string{"name": ""}) // 400
	c.do("GET", "/projects", nil)
	c.do("GET", "/projects/"+id, nil)
	c.do("GET", "/projects/"+uuid.NewString(), nil) // 404
	c.do("PATCH", "/projects/"+id, map[string]any{"name": "Renamed", "settings": map[string]any{"alertThreshold": 5, "retentionDays": nil}})
	c.do("PATCH", "/projects/"+id, map[string]any{"settings": map[string]any{"alertThreshold": 0}}) // 400
	c.do("PUT", "/projects/"+id, map[string]any{"name": "Put"})
	c.do("POST", "/projects/"+id+"/rotate-key", nil)

	now := time.Now().UTC().Truncate(time.Millisecond)
	seedEvents(b, id, 3, now)
	b.insertRollup(id, now, "error", 1)
	_, err := b.pool.Exec(context.Background(), `INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold, state, attempts, recipient, sent_at)
		VALUES ($1, $2, 'threshold', now() - interval '1 minute', now(), 12, 10, 'sent', 1, 'x@example.com', now())`, uuid.New(), id)
	require.NoError(t, err)
	key := c.do("GET", "/projects/"+id, nil).data(t)["apiKey"].(string)
	c.do("GET", "/projects/"+id+"/events?limit=2", nil)
	c.do("GET", "/projects/"+id+"/events?limit=2000", nil) // 400
	c.do("GET", "/projects/"+id+"/stats?interval=1m", nil)
	c.do("GET", "/projects/"+id+"/stats?interval=2m", nil) // 400
	c.do("GET", "/projects/"+id+"/alerts?limit=1", nil)
	anon.do("GET", "/events?apiKey="+url.QueryEscape(key), nil)
	anon.do("GET", "/events?apiKey=pb_live_nope", nil) // 401
	anon.do("GET", "/events", nil)                     // 400
	c.do("DELETE", "/projects/"+id+"/events", nil)
	c.do("DELETE", "/projects/"+id, nil)
	c.do("POST", "/auth/logout", nil)

	for _, want := range []string{"POST /auth/register 201", "POST /auth/login 200", "POST /auth/login 429", "POST /auth/refresh 200",
		"POST /auth/refresh 401", "POST /auth/logout 200", "GET /events 200", "DELETE /projects/" + id + " 200"} {
		require.True(t, c.matched[want], "scenario did not produce %s", want)
	}
}

// The ingestor's answers, as intake.go builds them (the api cannot import the ingestor:
// services depend on pkg only), match the document's /ingest and /ingest/batch.
func TestOpenAPIDescribesIngestAnswers(t *testing.T) {
	t.Parallel()
	v := newValidator(t, api.OpenAPIDocument())
	ev := `{"id":"0193a0c2-4f1e-7c55-8a3b-0d6f1d2e3f40","projectId":"0193a0c2-4f1e-7c55-8a3b-0d6f1d2e3f41","type":"error","name":"TypeError",` +
		`"payload":{"message":"x is undefined"},"timestamp":"2026-11-25T22:46:41.524Z","receivedAt":"2026-11-25T22:46:41.530Z","context":{"os":"ios"}}`
	cases := []struct {
		path   string
		status int
		body   string
	}{
		{"/ingest", 202, `{"success":true,"message":"Event accepted","data":` + ev + `}`},
		{"/ingest", 400, `{"success":false,"code":"INVALID_TIMESTAMP","message":"body/timestamp must be an ISO-8601 date-time between years 0001 and 9999"}`},
		{"/ingest", 401, `{"success":false,"code":"INVALID_API_KEY","message":"Invalid API key"}`},
		{"/ingest", 413, `{"success":false,"code":"PAYLOAD_TOO_LARGE","message":"event is larger than 65536 bytes once encoded"}`},
		{"/ingest", 429, `{"success":false,"code":"RATE_LIMITED","message":"Rate limit exceeded for this project; retry after the Retry-After delay"}`},
		{"/ingest", 503, `{"success":false,"code":"UNAVAILABLE","message":"events could not be stored durably in time; retry with the same event ids"}`},
		{"/ingest/batch", 202, `{"success":true,"data":{"accepted":2,"rejected":0,"results":[{"index":0,"id":"0193a0c2-4f1e-7c55-8a3b-0d6f1d2e3f40","status":"accepted"},{"index":1,"id":"0193a0c2-4f1e-7c55-8a3b-0d6f1d2e3f42","status":"accepted"}]}}`},
		{"/ingest/batch", 200, `{"success":true,"data":{"accepted":1,"rejected":1,"results":[{"index":0,"id":"0193a0c2-4f1e-7c55-8a3b-0d6f1d2e3f40","status":"accepted"},{"index":1,"status":"rejected","code":"VALIDATION_FAILED","message":"events/1 must have required property 'type'"}]}}`},
		{"/ingest/batch", 400, `{"success":false,"code":"VALIDATION_FAILED","message":"no event in the batch was accepted","data":{"accepted":0,"rejected":1,"results":[{"index":0,"status":"rejected","code":"VALIDATION_FAILED","message":"events/0/name must be string"}]}}`},
		{"/ingest/batch", 400, `{"success":false,"code":"VALIDATION_FAILED","message":"body must contain at least 1 event"}`},
		{"/ingest/batch", 401, `{"success":false,"code":"INVALID_API_KEY","message":"Invalid API key","data":{"accepted":0,"rejected":1,"results":[{"index":0,"status":"rejected","code":"INVALID_API_KEY","message":"Invalid API key"}]}}`},
		{"/ingest/batch", 415, `{"success":false,"code":"UNSUPPORTED_ENCODING","message":"Content-Encoding must be gzip, zstd or absent"}`},
	}
	for _, tc := range cases {
		u, _ := url.Parse("http://localhost:3002" + tc.path)
		req := &http.Request{Method: "POST", URL: u, Header: http.Header{}}
		resp := &http.Response{StatusCode: tc.status, Request: req, Body: io.NopCloser(strings.NewReader(tc.body)),
			Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}}}
		ok, errs := v.ValidateHttpResponse(req, resp)
		for _, e := range errs {
			t.Errorf("%s %d: %s", tc.path, tc.status, e.Error())
		}
		require.True(t, ok, "%s %d", tc.path, tc.status)
	}
	// And a wrong shape is caught: the validator is not vacuous.
	u, _ := url.Parse("http://localhost:3002/ingest")
	req := &http.Request{Method: "POST", URL: u, Header: http.Header{}}
	ok, _ := v.ValidateHttpResponse(req, &http.Response{StatusCode: 202, Request: req, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(`{"success":true,"message":"Event accepted","data":{"id":"nope"}}`))})
	require.False(t, ok)
}
