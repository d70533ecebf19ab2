package main_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/stretchr/testify/require"
)

// The api's /openapi.json describes the ingestor's routes too: real answers of the running
// ingestor (not copies of them) must match it, status and body schema.
func TestIngestAnswersMatchOpenAPIDocument(t *testing.T) {
	t.Parallel()
	in := start(t)
	code, doc := get(t, in.api+"/openapi.json")
	require.Equal(t, http.StatusOK, code)
	d, err := libopenapi.NewDocument([]byte(doc))
	require.NoError(t, err)
	v, errs := validator.NewValidator(d)
	require.Empty(t, errs)
	ok, verrs := v.ValidateDocument()
	require.True(t, ok, "%v", verrs)

	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	_, _ = zw.Write([]byte(`[{"type":"event","name":"z","payload":{}}]`))
	_ = zw.Close()

	key := in.apiKey
	cases := []struct {
		name, path, ctype, encoding, apiKey, body string
		want                                      int
	}{
		{"single accepted", "/ingest", "application/json", "", "", `{"apiKey":"` + key + `","type":"error","name":"E","payload":{"a":1},"context":{"os":"ios"}}`, 202},
		{"single invalid", "/ingest", "application/json", "", "", `{"apiKey":"` + key + `","type":"nope","name":"E","payload":{}}`, 400},
		{"single bad timestamp", "/ingest", "application/json", "", "", `{"apiKey":"` + key + `","type":"event","name":"E","payload":{},"timestamp":"yesterday"}`, 400},
		{"single bad JSON", "/ingest", "application/json", "", "", `{"name":`, 400},
		{"single unknown key", "/ingest", "application/json", "", "", `{"apiKey":"pb_live_unknownunknownunknown","type":"event","name":"E","payload":{}}`, 401},
		{"single wrong type", "/ingest", "text/plain", "", "", `{}`, 415},
		{"batch accepted", "/ingest/batch", "application/json", "", key, `[{"type":"event","name":"a","payload":{}},{"type":"metric","name":"b","payload":{"v":1}}]`, 202},
		{"batch partial", "/ingest/batch", "application/json", "", key, `{"events":[{"type":"event","name":"a","payload":{}},{"type":"event","payload":{}}]}`, 200},
		{"batch none valid", "/ingest/batch", "application/json", "", key, `[{"type":"x","name":"a","payload":{}}]`, 400},
		{"batch empty", "/ingest/batch", "application/json", "", key, `[]`, 400},
		{"batch no key", "/ingest/batch", "application/json", "", "", `[{"type":"event","name":"a","payload":{}}]`, 401},
		{"batch gzip", "/ingest/batch", "application/json", "gzip", key, zipped.String(), 202},
		{"batch bad encoding", "/ingest/batch", "application/json", "br", key, `[]`, 415},
		{"batch too many", "/ingest/batch", "application/json", "", key, "[" + strings.Repeat(`{"type":"event","name":"a","payload":{}},`, 1000) + `{"type":"event","name":"a","payload":{}}]`, 413},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(http.MethodPost, in.ingest+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.ctype)
		if tc.encoding != "" {
			req.Header.Set("Content-Encoding", tc.encoding)
		}
		if tc.apiKey != "" {
			req.Header.Set("X-API-Key", tc.apiKey)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err, tc.name)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, tc.want, resp.StatusCode, "%s: %s", tc.name, body)

		// Validate against the document's ingestor server address.
		u, _ := url.Parse("http://localhost:3002" + tc.path)
		vreq := &http.Request{Method: http.MethodPost, URL: u, Header: http.Header{}}
		vresp := &http.Response{StatusCode: resp.StatusCode, Header: resp.Header, Request: vreq, Body: io.NopCloser(bytes.NewReader(body))}
		ok, errs := v.ValidateHttpResponse(vreq, vresp)
		for _, e := range errs {
			t.Errorf("%s: %d does not match openapi.json: %s\nbody: %s", tc.name, resp.StatusCode, e.Error(), body)
		}
		require.True(t, ok, tc.name)
	}

	// The check is not vacuous: a wrong body for a documented status fails.
	u, _ := url.Parse("http://localhost:3002/ingest")
	vreq := &http.Request{Method: http.MethodPost, URL: u, Header: http.Header{}}
	ok, _ = v.ValidateHttpResponse(vreq, &http.Response{StatusCode: 202, Request: vreq,
		Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		Body:   io.NopCloser(strings.NewReader(fmt.Sprintf(`{"success":true,"data":{"id":%d}}`, 1)))})
	require.False(t, ok)
}
