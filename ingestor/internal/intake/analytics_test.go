package intake

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/pulseboard/pulseboard/ingestor/internal/ratelimit"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// The SDK's EnrichedContext (react-native/src/context.ts of mrarslanark/pulseboard at
// HEAD), as its collect() fills it on an iPhone.
const sdkContext = `{"app":{"appVersion":"1.4.0","buildNumber":"42","environment":"production"},` +
	`"device":{"platform":"ios","os":"iOS","osVersion":"17.4","model":"iPhone15,2","manufacturer":"Apple","brand":"Apple","isTablet":false,` +
	`"appVersion":"1.4.0","buildNumber":"42","bundleId":"com.example.shop","screenWidth":393,"screenHeight":852,"fontScale":1,"isEmulator":false,` +
	`"language":"en-US","timezone":"Europe/Berlin"},` +
	`"network":{"type":"wifi","isConnected":true,"isWifiEnabled":true,"carrier":"unknown","ipAddress":"192.168.1.20"},` +
	`"session":{"sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z"},` +
	`"user":{"userId":"u-1","email":"ada@example.com"}}`

// The bodies the SDK's trackCrash, startSession, endSession, trackScreen and trackApiCall
// post (react-native/src/index.ts at HEAD), field for field and in its order; undefined
// optional fields are left out by JSON.stringify.
func sdkBodies(key string) map[string]string {
	return map[string]string{
		"crash": `{"apiKey":"` + key + `","errorName":"TypeError","errorMessage":"undefined is not an object (evaluating 'cart.items')",` +
			`"stackTrace":"TypeError: undefined is not an object\n    at CartScreen (CartScreen.tsx:42:17)\n    at renderWithHooks","isFatal":true,` +
			`"sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
		"session_start": `{"apiKey":"` + key + `","sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z","context":` + sdkContext + `}`,
		"session_end": `{"apiKey":"` + key + `","sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z",` +
			`"endedAt":"2026-03-01T12:07:30.250Z","duration":450250,"context":` + sdkContext + `}`,
		"screen_view": `{"apiKey":"` + key + `","screenName":"Checkout","loadTime":182.5,"sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
		"api_call": `{"apiKey":"` + key + `","endpoint":"https://api.example.com/v1/cart","httpMethod":"POST","statusCode":502,"duration":1234.5,` +
			`"payloadSize":2048,"sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
	}
}

var analyticsPaths = map[string]string{
	"crash": pathCrash, "session_start": pathSession, "session_end": pathSession,
	"screen_view": pathScreenView, "api_call": pathAPICall,
}

// analyticsWant is the documented event of each SDK body: type, name, payload (exact
// text: the body's fields in order, without apiKey and context) and timestamp ("" is the
// receive time).
var analyticsWant = map[string]struct{ typ, name, payload, timestamp string }{
	"crash": {"error", "TypeError", `{"errorName":"TypeError","errorMessage":"undefined is not an object (evaluating 'cart.items')",` +
		`"stackTrace":"TypeError: undefined is not an object\n    at CartScreen (CartScreen.tsx:42:17)\n    at renderWithHooks","isFatal":true,` +
		`"sessionId":"m7x2k9q1-4f8a2b1c"}`, ""},
	"session_start": {"event", "session_start", `{"sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z"}`, "2026-03-01T12:00:00.000Z"},
	"session_end": {"event", "session_end", `{"sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z",` +
		`"endedAt":"2026-03-01T12:07:30.250Z","duration":450250}`, "2026-03-01T12:07:30.250Z"},
	"screen_view": {"event", "screen_view", `{"screenName":"Checkout","loadTime":182.5,"sessionId":"m7x2k9q1-4f8a2b1c"}`, ""},
	"api_call": {"metric", "api_call", `{"endpoint":"https://api.example.com/v1/cart","httpMethod":"POST","statusCode":502,"duration":1234.5,` +
		`"payloadSize":2048,"sessionId":"m7x2k9q1-4f8a2b1c","value":1234.5}`, ""},
}

// mapped runs body through Parse, mapAnalytics and Build, and returns the event's
// canonical encoding decoded.
func mapped(t *testing.T, kind analyticsKind, body string) (wire map[string]json.RawMessage, err *event.Error) {
	t.Helper()
	d := event.NewDecoder(event.DefaultLimits())
	v, _, perr := d.Parse([]byte(body))
	if perr != nil {
		t.Fatalf("parse: %v", perr)
	}
	var a fastjson.Arena
	m, err := mapAnalytics(kind, v, &a, event.DefaultMaxNameChars)
	if err != nil {
		return nil, err
	}
	ev, err := d.Build(m, "body", fuzzProjectA, fuzzNow)
	if err != nil {
		err.Message = analyticsMessage(err.Message)
		return nil, err
	}
	if err := json.Unmarshal(ev.AppendJSON(nil), &wire); err != nil {
		t.Fatal(err)
	}
	return wire, nil
}

func str(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return s
}

// Each SDK body maps to the documented event: type, name, payload with every field the
// SDK sent (in its order, apiKey left out), the SDK's context unchanged, and the
// timestamp the route's rule gives.
func TestMapAnalyticsSDKBodies(t *testing.T) {
	t.Parallel()
	received := string(event.AppendTime(nil, fuzzNow))
	for name, body := range sdkBodies(fuzzKeyA) {
		want := analyticsWant[name]
		ev, err := mapped(t, analyticsRoute([]byte(analyticsPaths[name])), body)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := str(t, ev["type"]); got != want.typ {
			t.Errorf("%s: type %q, want %q", name, got, want.typ)
		}
		if got := str(t, ev["name"]); got != want.name {
			t.Errorf("%s: name %q, want %q", name, got, want.name)
		}
		if got := string(ev["payload"]); got != want.payload {
			t.Errorf("%s: payload\n got %s\nwant %s", name, got, want.payload)
		}
		if got := string(ev["context"]); got != sdkContext {
			t.Errorf("%s: context\n got %s\nwant %s", name, got, sdkContext)
		}
		ts := want.timestamp
		if ts == "" {
			ts = received
		}
		if got := str(t, ev["timestamp"]); got != ts {
			t.Errorf("%s: timestamp %s, want %s", name, got, ts)
		}
		if got := str(t, ev["receivedAt"]); got != received {
			t.Errorf("%s: receivedAt %s, want %s", name, got, received)
		}
		if strings.Contains(string(ev["payload"]), fuzzKeyA) {
			t.Errorf("%s: the API key is stored in the payload", name)
		}
	}
}

// The mapping's edges: eventId and timestamp work as on /ingest and are not payload;
// extra fields are kept; a client's own value is not overwritten; a null optional field
// passes and is kept as sent; an empty errorName is "Error", a long one is cut in the name
// only.
func TestMapAnalyticsEdges(t *testing.T) {
	t.Parallel()
	const id = "0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f0001"
	ev, err := mapped(t, analyticsScreenView, `{"apiKey":"k","screenName":"Home","eventId":"`+id+`","timestamp":"Tue, 01 Dec 2026 10:00:00 GMT","extra":{"a":[1]},"loadTime":null}`)
	if err != nil {
		t.Fatal(err)
	}
	if str(t, ev["id"]) != id || str(t, ev["timestamp"]) != "2026-12-01T10:00:00.000Z" {
		t.Errorf("eventId/timestamp not honoured: %s %s", ev["id"], ev["timestamp"])
	}
	if got := string(ev["payload"]); got != `{"screenName":"Home","extra":{"a":[1]},"loadTime":null}` {
		t.Errorf("payload %s", got)
	}
	if _, ok := ev["context"]; ok {
		t.Error("context without one sent")
	}

	ev, err = mapped(t, analyticsAPICall, `{"apiKey":"k","endpoint":"/a","httpMethod":"GET","statusCode":200,"duration":5,"value":7}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(ev["payload"]); got != `{"endpoint":"/a","httpMethod":"GET","statusCode":200,"duration":5,"value":7}` {
		t.Errorf("payload %s", got)
	}

	ev, err = mapped(t, analyticsCrash, `{"apiKey":"k","errorName":"","errorMessage":"","stackTrace":"","isFatal":false}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := str(t, ev["name"]); got != "Error" {
		t.Errorf("empty errorName: name %q", got)
	}

	long := strings.Repeat("é", event.DefaultMaxNameChars+50)
	ev, err = mapped(t, analyticsCrash, `{"apiKey":"k","errorName":"`+long+`","errorMessage":"m","stackTrace":"s","isFatal":true}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := str(t, ev["name"]); got != strings.Repeat("é", event.DefaultMaxNameChars) {
		t.Errorf("long errorName: name of %d characters", len([]rune(got)))
	}
	if !strings.Contains(string(ev["payload"]), long) {
		t.Error("the payload does not keep the whole errorName")
	}
	for _, tc := range []struct{ in, want string }{{"", "Error"}, {"ab", "ab"}, {"abc", "ab"}, {"日本語", "日本"}} {
		if got := crashName([]byte(tc.in), 2); got != tc.want {
			t.Errorf("crashName(%q, 2) = %q", tc.in, got)
		}
	}
}

// Bodies the old backend's schema refused are 400 with our codes and a message naming
// the field, and bad dates are INVALID_TIMESTAMP.
func TestMapAnalyticsRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kind      analyticsKind
		body      string
		code, msg string
	}{
		{analyticsCrash, `{"apiKey":"k","errorMessage":"m","stackTrace":"s","isFatal":true}`, event.CodeValidationFailed, "body must have required property 'errorName'"},
		{analyticsCrash, `{"apiKey":"k","errorName":"E","errorMessage":"m","stackTrace":"s"}`, event.CodeValidationFailed, "body must have required property 'isFatal'"},
		{analyticsCrash, `{"apiKey":"k","errorName":"E","errorMessage":"m","stackTrace":null,"isFatal":true}`, event.CodeValidationFailed, "body must have required property 'stackTrace'"},
		{analyticsCrash, `{"apiKey":"k","errorName":"E","errorMessage":"m","stackTrace":"s","isFatal":"yes"}`, event.CodeValidationFailed, "body/isFatal must be boolean"},
		{analyticsCrash, `{"apiKey":"k","errorName":1,"errorMessage":"m","stackTrace":"s","isFatal":true}`, event.CodeValidationFailed, "body/errorName must be string"},
		{analyticsSession, `{"apiKey":"k","startedAt":"2026-03-01T12:00:00Z"}`, event.CodeValidationFailed, "body must have required property 'sessionId'"},
		{analyticsSession, `{"apiKey":"k","sessionId":"s"}`, event.CodeValidationFailed, "body must have required property 'startedAt'"},
		{analyticsSession, `{"apiKey":"k","sessionId":"s","startedAt":"yesterday"}`, event.CodeInvalidTimestamp, "body/startedAt " + event.TimestampRule},
		{analyticsSession, `{"apiKey":"k","sessionId":"s","startedAt":"2026-03-01T12:00:00Z","endedAt":"soon"}`, event.CodeInvalidTimestamp, "body/endedAt " + event.TimestampRule},
		{analyticsSession, `{"apiKey":"k","sessionId":"s","startedAt":"2026-03-01T12:00:00Z","duration":"5"}`, event.CodeValidationFailed, "body/duration must be number"},
		{analyticsScreenView, `{"apiKey":"k","loadTime":3}`, event.CodeValidationFailed, "body must have required property 'screenName'"},
		{analyticsScreenView, `{"apiKey":"k","screenName":"H","context":"ios"}`, event.CodeValidationFailed, "body/context must be object"},
		{analyticsScreenView, `{"apiKey":"k","screenName":"H","eventId":"nope"}`, event.CodeValidationFailed, "body/eventId must be a UUID"},
		{analyticsScreenView, `{"apiKey":"k","screenName":"H","loadTime":1e400}`, event.CodeValidationFailed, "body/loadTime"},
		{analyticsAPICall, `{"apiKey":"k","endpoint":"/a","httpMethod":"GET","duration":5}`, event.CodeValidationFailed, "body must have required property 'statusCode'"},
		{analyticsAPICall, `{"apiKey":"k","endpoint":"/a","httpMethod":"GET","statusCode":"200","duration":5}`, event.CodeValidationFailed, "body/statusCode must be number"},
		{analyticsAPICall, `{"apiKey":"k","endpoint":"/a","httpMethod":"GET","statusCode":200}`, event.CodeValidationFailed, "body must have required property 'duration'"},
		{analyticsAPICall, `[]`, event.CodeValidationFailed, "body must be object"},
	} {
		_, err := mapped(t, tc.kind, tc.body)
		if err == nil {
			t.Errorf("%s: accepted", tc.body)
			continue
		}
		if err.Code != tc.code || !strings.HasPrefix(err.Message, tc.msg) {
			t.Errorf("%s: %s %q, want %s %q", tc.body, err.Code, err.Message, tc.code, tc.msg)
		}
	}
}

// serveAnalytics posts body to path on h.
func serveAnalytics(h *Handler, method, path, contentType, body string, header ...string) *fasthttp.RequestCtx {
	ctx := new(fasthttp.RequestCtx)
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI(path)
	ctx.Request.Header.SetContentType(contentType)
	for i := 0; i+1 < len(header); i += 2 {
		ctx.Request.Header.Set(header[i], header[i+1])
	}
	ctx.Request.SetBodyString(body)
	h.ServeFastHTTP(ctx)
	return ctx
}

// The routes on the handler: 201 with the old backend's body after the producer took
// the event, the usual error answers, and the requests counted under route="analytics".
func TestAnalyticsRoutes(t *testing.T) {
	t.Parallel()
	prod := &fuzzProducer{}
	reg := prometheus.NewRegistry()
	h := New(DefaultLimits(), fuzzKeys{}, prod, ratelimit.New(0, 1000), slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	h.now = func() time.Time { return fuzzNow }
	n := 0
	for name, body := range sdkBodies(fuzzKeyA) {
		ctx := serveAnalytics(h, fasthttp.MethodPost, analyticsPaths[name], "application/json", body)
		if ctx.Response.StatusCode() != fasthttp.StatusCreated {
			t.Fatalf("%s: %d %s", name, ctx.Response.StatusCode(), ctx.Response.Body())
		}
		n++
		if len(prod.acked) != n {
			t.Fatalf("%s: answered before the producer took it", name)
		}
		var got struct {
			ID   string `json:"id"`
			Type string `json:"type"`
			Name string `json:"name"`
		}
		if err := json.Unmarshal(prod.acked[n-1].Value, &got); err != nil || got.Name != analyticsWant[name].name || got.Type != analyticsWant[name].typ {
			t.Fatalf("%s: produced %s", name, prod.acked[n-1].Value)
		}
		want := `{"success":true}`
		if name == "crash" {
			want = `{"success":true,"data":{"crashGroupId":"` + got.ID + `"}}`
		}
		if string(ctx.Response.Body()) != want {
			t.Errorf("%s: body %s, want %s", name, ctx.Response.Body(), want)
		}
		if string(ctx.Response.Header.Peek("Access-Control-Allow-Origin")) != "*" {
			t.Errorf("%s: no CORS header", name)
		}
	}

	// A key in a header when the body has none, as on /ingest/batch.
	ctx := serveAnalytics(h, fasthttp.MethodPost, pathScreenView, "application/json", `{"screenName":"H"}`, "X-API-Key", fuzzKeyB)
	if ctx.Response.StatusCode() != fasthttp.StatusCreated || !bytes.Contains(prod.acked[len(prod.acked)-1].Key, []byte(fuzzProjectB.String())) {
		t.Errorf("header key: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	for _, tc := range []struct {
		method, path, ctype, body string
		status                    int
		code                      string
	}{
		{fasthttp.MethodPost, pathCrash, "application/json", `{"apiKey":"pb_live_unknown","errorName":"E","errorMessage":"m","stackTrace":"s","isFatal":true}`, 401, "INVALID_API_KEY"},
		{fasthttp.MethodPost, pathCrash, "application/json", `{"errorName":"E","errorMessage":"m","stackTrace":"s","isFatal":true}`, 401, "INVALID_API_KEY"},
		{fasthttp.MethodPost, pathCrash, "application/json", `{"apiKey":"` + fuzzKeyA + `","errorName":"E"}`, 400, "VALIDATION_FAILED"},
		{fasthttp.MethodPost, pathSession, "application/json", `{"apiKey":"` + fuzzKeyA + `",`, 400, "INVALID_JSON"},
		{fasthttp.MethodPost, pathSession, "text/plain", `{}`, 415, "UNSUPPORTED_MEDIA_TYPE"},
		{fasthttp.MethodPost, pathAPICall, "application/json", `{"apiKey":"` + fuzzKeyDown + `"}`, 503, "UNAVAILABLE"},
		{fasthttp.MethodGet, pathAPICall, "application/json", ``, 405, "METHOD_NOT_ALLOWED"},
		{fasthttp.MethodPost, "/analytics/metric", "application/json", `{}`, 404, "NOT_FOUND"},
		{fasthttp.MethodPost, "/analytics/crash/", "application/json", `{}`, 404, "NOT_FOUND"},
	} {
		before := len(prod.acked)
		ctx := serveAnalytics(h, tc.method, tc.path, tc.ctype, tc.body)
		var ans ingestAnswer
		_ = json.Unmarshal(ctx.Response.Body(), &ans)
		if ctx.Response.StatusCode() != tc.status || ans.Code != tc.code || ans.Success == nil || *ans.Success || ans.Message == "" {
			t.Errorf("%s %s %s: %d %s, want %d %s", tc.method, tc.path, tc.body, ctx.Response.StatusCode(), ctx.Response.Body(), tc.status, tc.code)
		}
		if len(prod.acked) != before {
			t.Errorf("%s %s %s: produced", tc.method, tc.path, tc.body)
		}
	}
	if got := testutil.ToFloat64(h.requests.WithLabelValues(routeAnalytics, "201")); got != float64(n+1) {
		t.Errorf("route=analytics code=201: %v, want %d", got, n+1)
	}
	if got := testutil.ToFloat64(h.requests.WithLabelValues(routeAnalytics, "400")); got != 2 {
		t.Errorf("route=analytics code=400: %v, want 2", got)
	}
	if got := testutil.ToFloat64(h.requests.WithLabelValues(routeOther, "404")); got != 2 {
		t.Errorf("route=other code=404: %v, want 2", got)
	}
	if got := testutil.ToFloat64(h.accepted); got != float64(n+1) {
		t.Errorf("accepted: %v, want %d", got, n+1)
	}
}

// A crash over the event limit has its stack cut with the marker, as on /ingest, and is
// accepted; what cannot be made to fit is 413.
func TestAnalyticsCrashTruncated(t *testing.T) {
	t.Parallel()
	// Events of at most 2048 bytes, bodies of 8 KiB: a stack of ~5 KB.
	fx := newIngestFixture()
	stack := "Error: boom\n" + strings.Repeat("    at f (a.js:1:1)\n", 250)
	body := `{"apiKey":"` + fuzzKeyA + `","errorName":"Error","errorMessage":"boom","stackTrace":` + string(mustMarshal(stack)) + `,"isFatal":true,"context":{"os":"iOS"}}`
	ctx := serveAnalytics(fx.h, fasthttp.MethodPost, pathCrash, "application/json", body)
	if ctx.Response.StatusCode() != fasthttp.StatusCreated {
		t.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	m := fx.prod.acked[0]
	if len(m.Value) > fuzzLimits.Event.MaxEventBytes {
		t.Fatalf("produced %d bytes", len(m.Value))
	}
	var got struct {
		Payload struct {
			ErrorMessage, StackTrace string
			IsFatal                  bool
		}
		Context map[string]string
	}
	if err := json.Unmarshal(m.Value, &got); err != nil {
		t.Fatal(err)
	}
	i := strings.Index(got.Payload.StackTrace, event.TruncatedMarker)
	if i <= 0 || stack[:i] != got.Payload.StackTrace[:i] || !strings.HasSuffix(got.Payload.StackTrace, " bytes]") {
		t.Errorf("stack not cut with the marker: %q", got.Payload.StackTrace)
	}
	if got.Payload.ErrorMessage != "boom" || !got.Payload.IsFatal || got.Context["os"] != "iOS" {
		t.Errorf("the rest of the event changed: %s", m.Value)
	}
	if testutil.ToFloat64(fx.h.truncated) != 1 {
		t.Error("not counted as truncated")
	}

	// Many keys cannot be shortened: 413.
	var many strings.Builder
	for i := range 400 {
		many.WriteString(`,"k` + strings.Repeat("x", 3) + string(rune('a'+i%26)) + strings.Repeat("y", i/26) + `":1`)
	}
	ctx = serveAnalytics(fx.h, fasthttp.MethodPost, pathScreenView, "application/json", `{"apiKey":"`+fuzzKeyA+`","screenName":"H"`+many.String()+`}`)
	if ctx.Response.StatusCode() != fasthttp.StatusRequestEntityTooLarge {
		t.Errorf("unshortenable event: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
