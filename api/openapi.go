package api

import (
	_ "embed"
	"net/http"
	"strconv"
)

// openAPIDocument describes every route of the api and the ingestor's POST /ingest and
// POST /ingest/batch (OpenAPI 3.1). A test validates it with a real OpenAPI library and
// checks the running api's answers against it.
//
//go:embed openapi.json
var openAPIDocument []byte

// OpenAPIDocument returns a copy of the OpenAPI 3.1 document served at /openapi.json,
// for other modules' tests (e.g. checking the ingestor's answers against it).
func OpenAPIDocument() []byte { return append([]byte(nil), openAPIDocument...) }

// serveOpenAPI: GET /openapi.json. Public and identical for everyone, so cacheable.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
	_, _ = w.Write(openAPIDocument)
}
