package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pulseboard/pulseboard/api/internal/passwords"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// apiError is an error with its API code and message. Handlers return these for
// everything the client caused; writeError maps all other errors.
type apiError struct {
	code       httperr.Code
	msg        string
	retryAfter time.Duration
}

func (e *apiError) Error() string { return string(e.code) + ": " + e.msg }

func newError(code httperr.Code, msg string) *apiError { return &apiError{code: code, msg: msg} }

// invalid is a validation failure; msg names the field the way Fastify/ajv did
// ("body/name must NOT have fewer than 2 characters").
func invalid(msg string) *apiError { return newError(httperr.ValidationFailed, msg) }

var (
	errProjectNotFound = newError(httperr.ProjectNotFound, "Project not found")
	errUnauthorized    = newError(httperr.Unauthorized, "Missing or invalid access token")
)

// handlerFunc is a handler that returns its failure instead of writing it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle adapts a handlerFunc: the one place where errors become responses.
func (s *Service) handle(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

// writeError maps err to a status and the JSON error body. Anything that is not the
// client's fault is logged with the request id and answered with a generic message
// carrying that id: never SQL, driver messages or stack traces (B69).
func (s *Service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ae      *apiError
		tooBig  *http.MaxBytesError
		reqID   = requestID(r.Context())
		unavail = func(msg string) *apiError {
			return &apiError{code: httperr.Unavailable, msg: msg + " (request id " + reqID + ")", retryAfter: time.Second}
		}
	)
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, store.ErrNotFound):
		// The only resources that can be missing behind a route are projects; users
		// and tokens are handled by the auth handlers themselves.
		ae = errProjectNotFound
	case errors.Is(err, store.ErrEmailTaken):
		ae = newError(httperr.EmailTaken, "Email already registered")
	case errors.As(err, &tooBig):
		ae = newError(httperr.PayloadTooLarge, "body is larger than "+strconv.FormatInt(tooBig.Limit, 10)+" bytes")
	case errors.Is(err, passwords.ErrBusy):
		s.m.hashRejected.Inc()
		ae = unavail("Too many sign-ins in progress; retry shortly")
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		s.logger.Debug("request cancelled by the client", "request_id", reqID)
		w.WriteHeader(499)
		return
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		s.logger.Warn("dependency unavailable", "request_id", reqID, "route", r.Pattern, "error", err)
		ae = unavail("Service temporarily unavailable; retry shortly")
	default:
		s.logger.Error("internal error", "request_id", reqID, "route", r.Pattern, "error", err)
		ae = newError(httperr.Internal, "Internal server error (request id "+reqID+")")
	}
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((ae.retryAfter+time.Second-1)/time.Second)))
	}
	writeBody(w, ae.code.Status(), httperr.AppendBody(make([]byte, 0, 96+len(ae.msg)), ae.code, ae.msg))
}

func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshal encodes v without HTML escaping: stored text comes back verbatim (B31), as
// the old backend's JSON.stringify did; nosniff and the JSON content type keep it inert.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// writeData answers {"success":true,"data":…}.
func writeData(w http.ResponseWriter, status int, data any) error {
	b, err := marshal(data)
	if err != nil {
		return err
	}
	out := make([]byte, 0, len(b)+32)
	out = append(out, `{"success":true,"data":`...)
	out = append(out, b...)
	writeBody(w, status, append(out, '}'))
	return nil
}

// writeMessage answers {"success":true,"message":…} plus "data" when data is not nil.
func writeMessage(w http.ResponseWriter, status int, msg string, data any) error {
	out := append([]byte(`{"success":true,"message":`), event.AppendString(nil, msg)...)
	if data != nil {
		b, err := marshal(data)
		if err != nil {
			return err
		}
		out = append(out, `,"data":`...)
		out = append(out, b...)
	}
	writeBody(w, status, append(out, '}'))
	return nil
}

// writePage answers {"success":true,"data":<raw array>,"nextCursor":…|null}.
func writePage(w http.ResponseWriter, rawData []byte, next string) {
	out := make([]byte, 0, len(rawData)+96)
	out = append(out, `{"success":true,"data":`...)
	out = append(out, rawData...)
	out = append(out, `,"nextCursor":`...)
	if next == "" {
		out = append(out, "null"...)
	} else {
		out = event.AppendString(out, next)
	}
	writeBody(w, http.StatusOK, append(out, '}'))
}

// jsonTime is a time in the wire format (ISO-8601 UTC, milliseconds).
type jsonTime time.Time

func (t jsonTime) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 26)
	b = append(b, '"')
	b = time.Time(t).UTC().AppendFormat(b, event.TimeLayout)
	return append(b, '"'), nil
}

func optTime(t *time.Time) *jsonTime {
	if t == nil {
		return nil
	}
	j := jsonTime(*t)
	return &j
}

// ---- request bodies ----

// bodyReadError maps a failure to read the request body. Too large stays a 413; a body
// that did not arrive within API_READ_TIMEOUT (a slow client) is a 408; a broken one
// (malformed chunked framing, a client that hung up mid-body) is the client's 400. None
// is a server error. The connection cannot be reused after any of them: it is closed.
func bodyReadError(w http.ResponseWriter, err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return err
	}
	w.Header().Set("Connection", "close")
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return newError(httperr.RequestTimeout, "request body was not received in time")
	}
	return newError(httperr.BadRequest, "request body could not be read")
}

// fields is a decoded JSON object body, validated field by field so that messages name
// the field as ajv did. Unknown fields are ignored.
type fields struct {
	path string
	m    map[string]json.RawMessage
}

// decodeObject reads a JSON object body: at most MaxBodyBytes (413), application/json
// when not empty (415), exactly one JSON value (trailing data is INVALID_JSON), no object
// in it with a duplicate key (INVALID_JSON, the ingestor's rule: event.CheckUniqueKeys),
// and an object (VALIDATION_FAILED "body must be object").
func (s *Service) decodeObject(w http.ResponseWriter, r *http.Request) (fields, error) {
	f := fields{path: "body"}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		return f, bodyReadError(w, err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return f, invalid("body must be object")
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return f, newError(httperr.UnsupportedMediaType, "Content-Type must be application/json")
	}
	// One JSON value, nothing after it (Unmarshal refuses trailing data), an object.
	if err := json.Unmarshal(body, &f.m); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return f, invalid("body must be object")
		}
		return f, newError(httperr.InvalidJSON, "body is not valid JSON")
	}
	// encoding/json keeps the last of duplicate keys; the ingestor refuses them, and so
	// does every endpoint (one meaning for every reader of a body).
	if derr := event.CheckUniqueKeys(body, "body"); derr != nil {
		return f, newError(httperr.InvalidJSON, derr.Message)
	}
	if f.m == nil { // null
		return f, invalid("body must be object")
	}
	return f, nil
}

// object returns the nested object at name (ok false when absent or null).
func (f fields) object(name string) (fields, bool, error) {
	raw, ok := f.m[name]
	if !ok || string(raw) == "null" {
		return fields{}, false, nil
	}
	sub := fields{path: f.path + "/" + name}
	if err := json.Unmarshal(raw, &sub.m); err != nil || sub.m == nil {
		return fields{}, false, invalid(sub.path + " must be object")
	}
	return sub, true, nil
}

// required fails with ajv's message for the first missing name.
func (f fields) required(names ...string) error {
	for _, n := range names {
		if _, ok := f.m[n]; !ok {
			return invalid(f.path + " must have required property '" + n + "'")
		}
	}
	return nil
}

// str returns the string at name. Invalid UTF-8 has become U+FFFD (encoding/json) and
// NUL characters, which PostgreSQL text cannot hold, are replaced with U+FFFD as well.
func (f fields) str(name string) (string, bool, error) {
	raw, ok := f.m[name]
	if !ok {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", true, invalid(f.path + "/" + name + " must be string")
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD"), true, nil
}

// boolean returns the boolean at name.
func (f fields) boolean(name string) (*bool, error) {
	raw, ok := f.m[name]
	if !ok {
		return nil, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, invalid(f.path + "/" + name + " must be boolean")
	}
	return &b, nil
}

// optionalInt returns an integer in [lo, hi], or null, at name.
func (f fields) optionalInt(name string, lo, hi int64) (store.OptionalInt, error) {
	raw, ok := f.m[name]
	if !ok {
		return store.OptionalInt{}, nil
	}
	if string(raw) == "null" {
		return store.OptionalInt{Set: true}, nil
	}
	p := f.path + "/" + name
	var n json.Number
	// json.Number would also take a string holding a number: "5" is not an integer.
	if err := json.Unmarshal(raw, &n); err != nil || raw[0] == '"' {
		return store.OptionalInt{}, invalid(p + " must be integer")
	}
	fl, err := n.Float64()
	if err != nil || fl != float64(int64(fl)) {
		return store.OptionalInt{}, invalid(p + " must be integer")
	}
	switch v := int64(fl); {
	case v < lo:
		return store.OptionalInt{}, invalid(p + " must be >= " + strconv.FormatInt(lo, 10))
	case v > hi:
		return store.OptionalInt{}, invalid(p + " must be <= " + strconv.FormatInt(hi, 10))
	default:
		i := int32(v)
		return store.OptionalInt{Set: true, Value: &i}, nil
	}
}

// checkLength applies ajv's minLength/maxLength (in characters).
func checkLength(path, s string, lo, hi int) error {
	n := utf8.RuneCountInString(s)
	switch {
	case n < lo:
		return invalid(path + " must NOT have fewer than " + strconv.Itoa(lo) + " characters")
	case n > hi:
		return invalid(path + " must NOT have more than " + strconv.Itoa(hi) + " characters")
	}
	return nil
}

// ---- query strings ----

func queryInt(q url.Values, name string, def, lo, hi int) (int, error) {
	v := q.Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		return 0, invalid("querystring/" + name + " must be integer")
	case n < lo:
		return 0, invalid("querystring/" + name + " must be >= " + strconv.Itoa(lo))
	case n > hi:
		return 0, invalid("querystring/" + name + " must be <= " + strconv.Itoa(hi))
	}
	return n, nil
}

func queryTime(q url.Values, name string) (*time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return nil, nil
	}
	t, ok := event.ParseTime(v)
	if !ok {
		return nil, invalid("querystring/" + name + " must be an ISO-8601 date-time")
	}
	return &t, nil
}

func queryEventType(q url.Values) (string, error) {
	switch t := q.Get("type"); t {
	case "", event.TypeError, event.TypeEvent, event.TypeMetric:
		return t, nil
	}
	return "", invalid("querystring/type must be equal to one of the allowed values (error, event, metric)")
}
