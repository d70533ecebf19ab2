package intake

// The reference backend's analytics routes (issue 17 item 3): the React Native SDK of
// mrarslanark/pulseboard posts crashes, sessions, screen views and API calls to
// POST /analytics/{crash,session,screen-view,api-call}, each body with its apiKey inside,
// and took a 201 as delivered. PulseBoard stores them as ordinary events: each body is
// mapped to the event /ingest would take (mapAnalytics) and then goes through exactly
// what /ingest does: the same key resolution and unknown-key guard, validation and
// canonical encoding (event.Decoder.Build), truncation of oversized strings
// (event.Decoder.Fit), the per-project rate limit, and Kafka's acknowledgement before the
// answer. Only the answer differs: 201 with the old backend's body.
//
// The mapping (README "Analytics routes (reference SDK)"):
//
//	route                      type    name                           timestamp
//	/analytics/crash           error   errorName ("Error" if empty)   receive time
//	/analytics/session         event   session_start / session_end    startedAt / endedAt
//	/analytics/screen-view     event   screen_view                    receive time
//	/analytics/api-call        metric  api_call                       receive time
//
// The payload is the body's fields as sent, in their order, less apiKey (never stored),
// context (the event's context, as on /ingest) and eventId and timestamp (which, when a
// client sends them, work as on /ingest; the SDK sends neither). api_call also gets
// "value": its duration, as the SDK's own metrics carry their value. A session whose body
// has endedAt is session_end and is timed at endedAt, otherwise session_start at
// startedAt. The required fields and their types are the old backend's schema's.

import (
	"strings"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// routeAnalytics is the route label of the four analytics routes.
const routeAnalytics = "analytics"

// analyticsKind is one of the analytics routes; 0 is none.
type analyticsKind uint8

const (
	analyticsCrash analyticsKind = iota + 1
	analyticsSession
	analyticsScreenView
	analyticsAPICall
)

// The analytics routes' paths.
const (
	pathCrash      = "/analytics/crash"
	pathSession    = "/analytics/session"
	pathScreenView = "/analytics/screen-view"
	pathAPICall    = "/analytics/api-call"
)

// analyticsRoute is the analytics route of path, or 0.
func analyticsRoute(path []byte) analyticsKind {
	switch string(path) {
	case pathCrash:
		return analyticsCrash
	case pathSession:
		return analyticsSession
	case pathScreenView:
		return analyticsScreenView
	case pathAPICall:
		return analyticsAPICall
	}
	return 0
}

// Event names of the analytics routes (a crash is named by its errorName).
const (
	nameSessionStart = "session_start"
	nameSessionEnd   = "session_end"
	nameScreenView   = "screen_view"
	nameAPICall      = "api_call"
	// nameCrashDefault names a crash whose errorName is empty (JavaScript's default name).
	nameCrashDefault = "Error"
)

// JSON types of the old backend's schema fields.
type fieldType uint8

const (
	fieldString fieldType = iota
	fieldNumber
	fieldBool
)

var fieldTypeNames = [...]string{fieldString: "string", fieldNumber: "number", fieldBool: "boolean"}

type analyticsField struct {
	name     string
	typ      fieldType
	required bool
}

// analyticsSchemas are the old backend's body schemas (backend/src/schemas/analytics.ts),
// apiKey and context aside (context may be anything there; here it must be an object, as
// on /ingest, which is what the SDK sends).
var analyticsSchemas = [...][]analyticsField{
	analyticsCrash: {
		{"errorName", fieldString, true}, {"errorMessage", fieldString, true},
		{"stackTrace", fieldString, true}, {"isFatal", fieldBool, true},
		{"sessionId", fieldString, false},
	},
	analyticsSession: {
		{"sessionId", fieldString, true}, {"startedAt", fieldString, true},
		{"endedAt", fieldString, false}, {"duration", fieldNumber, false},
		{"crashed", fieldBool, false},
	},
	analyticsScreenView: {
		{"screenName", fieldString, true}, {"loadTime", fieldNumber, false},
		{"timeSpent", fieldNumber, false}, {"sessionId", fieldString, false},
	},
	analyticsAPICall: {
		{"endpoint", fieldString, true}, {"httpMethod", fieldString, true},
		{"statusCode", fieldNumber, true}, {"duration", fieldNumber, true},
		{"payloadSize", fieldNumber, false}, {"sessionId", fieldString, false},
	},
}

// present is v's field name unless it is absent or null.
func present(v *fastjson.Value, name string) *fastjson.Value {
	f := v.Get(name)
	if f == nil || f.Type() == fastjson.TypeNull {
		return nil
	}
	return f
}

func hasType(v *fastjson.Value, t fieldType) bool {
	switch t {
	case fieldString:
		return v.Type() == fastjson.TypeString
	case fieldNumber:
		return v.Type() == fastjson.TypeNumber
	default:
		return v.Type() == fastjson.TypeTrue || v.Type() == fastjson.TypeFalse
	}
}

// mapAnalytics validates the body of an analytics route (as parsed by event.Decoder.Parse)
// against the old backend's schema and returns, built in a, the event object /ingest
// would take for it: {"type","name","payload"} plus "timestamp", "context" and "eventId"
// when there are. Event.Decoder.Build validates the rest (context, eventId, timestamp,
// numbers, depth) and encodes it; messages name the body's fields ("body/loadTime").
// maxName bounds the name in characters (a longer errorName is cut; the payload keeps it
// whole).
func mapAnalytics(kind analyticsKind, body *fastjson.Value, a *fastjson.Arena, maxName int) (*fastjson.Value, *event.Error) {
	if body.Type() != fastjson.TypeObject {
		return nil, &event.Error{Code: event.CodeValidationFailed, Message: "body must be object"}
	}
	schema := analyticsSchemas[kind]
	for _, f := range schema { // required properties first, as the old backend's validator
		if f.required && present(body, f.name) == nil {
			return nil, &event.Error{Code: event.CodeValidationFailed, Message: "body must have required property '" + f.name + "'"}
		}
	}
	for _, f := range schema {
		if v := present(body, f.name); v != nil && !hasType(v, f.typ) {
			return nil, &event.Error{Code: event.CodeValidationFailed, Message: "body/" + f.name + " must be " + fieldTypeNames[f.typ]}
		}
	}

	out := a.NewObject()
	var typ, name string
	ts := present(body, "timestamp")
	switch kind {
	case analyticsCrash:
		typ = event.TypeError
		b, _ := body.Get("errorName").StringBytes()
		name = crashName(b, maxName)
	case analyticsSession:
		typ, name = event.TypeEvent, nameSessionStart
		for _, field := range []string{"startedAt", "endedAt"} {
			v := present(body, field)
			if v == nil {
				continue
			}
			s, _ := v.StringBytes()
			if _, ok := event.ParseClientTime(string(s)); !ok {
				return nil, &event.Error{Code: event.CodeInvalidTimestamp, Message: "body/" + field + " " + event.TimestampRule}
			}
		}
		if ended := present(body, "endedAt"); ended != nil {
			name = nameSessionEnd
			if ts == nil {
				ts = ended
			}
		} else if ts == nil {
			ts = body.Get("startedAt")
		}
	case analyticsScreenView:
		typ, name = event.TypeEvent, nameScreenView
	case analyticsAPICall:
		typ, name = event.TypeMetric, nameAPICall
	}
	out.Set("type", a.NewString(typ))
	out.Set("name", a.NewString(name))

	payload := a.NewObject()
	obj, _ := body.Object()
	obj.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "apiKey", "context", "eventId", "timestamp":
			return
		}
		payload.Set(string(k), v)
	})
	if kind == analyticsAPICall && body.Get("value") == nil {
		payload.Set("value", body.Get("duration"))
	}
	out.Set("payload", payload)
	if ts != nil {
		out.Set("timestamp", ts)
	}
	for _, field := range []string{"context", "eventId"} {
		if v := body.Get(field); v != nil {
			out.Set(field, v)
		}
	}
	// The body's sessionId (a string, checked above) is also the event's sessionId label
	// (pkg/event fields.go), when it can be one; the payload keeps it in any case.
	if v := present(body, "sessionId"); v != nil {
		if b, _ := v.StringBytes(); event.CheckLabel("body/sessionId", string(b)) == nil {
			out.Set("sessionId", v)
		}
	}
	return out, nil
}

// crashName is a crash event's name: its errorName, cut to maxName characters, or
// nameCrashDefault when empty.
func crashName(errorName []byte, maxName int) string {
	if len(errorName) == 0 {
		return nameCrashDefault
	}
	n := 0
	for i := range string(errorName) { // rune starts (Parse left only valid UTF-8)
		if n == maxName {
			return string(errorName[:i])
		}
		n++
	}
	return string(errorName)
}

// analyticsMessage rewords a message of Build about the mapped event for the body that
// was sent: the payload's fields are the body's own.
func analyticsMessage(msg string) string {
	if rest, ok := strings.CutPrefix(msg, "body/payload"); ok {
		return "body" + rest
	}
	return msg
}

// analytics serves POST /analytics/{crash,session,screen-view,api-call}: the body is
// mapped to an event (mapAnalytics) and then treated as POST /ingest treats its body.
// The answer is the old backend's: 201 {"success":true}, and for a crash
// {"success":true,"data":{"crashGroupId":…}} with the event's id (PulseBoard has no crash
// groups; the SDK reads nothing but the status).
func (h *Handler) analytics(ctx *fasthttp.RequestCtx) {
	kind := analyticsRoute(ctx.Path())
	body, d, w, done, ok := h.oneEventRequest(ctx, routeAnalytics)
	if !ok {
		return
	}
	defer done()
	v, _, perr := d.Parse(body)
	if perr != nil {
		h.fail(ctx, routeAnalytics, httperr.Code(perr.Code), perr.Message, 1)
		return
	}
	if v.Type() != fastjson.TypeObject {
		h.fail(ctx, routeAnalytics, httperr.ValidationFailed, "body must be object", 1)
		return
	}
	// The key is the body's apiKey, as on /ingest (what the SDK sends); a body without one
	// may carry it in X-API-Key or Authorization: Bearer, as on /ingest/batch.
	key, _ := event.APIKey(v)
	if key == "" {
		key = headerKey(&ctx.Request.Header)
	}
	proj, ok := h.resolve(ctx, routeAnalytics, key)
	if !ok {
		return
	}
	var a fastjson.Arena
	mapped, verr := mapAnalytics(kind, v, &a, h.limits.Event.MaxNameChars)
	if verr != nil {
		h.fail(ctx, routeAnalytics, httperr.Code(verr.Code), verr.Message, 1)
		return
	}
	ev, verr := d.Build(mapped, "body", proj.ID, h.now())
	if verr != nil {
		h.fail(ctx, routeAnalytics, httperr.Code(verr.Code), analyticsMessage(verr.Message), 1)
		return
	}
	if _, ok := h.produceOne(ctx, routeAnalytics, d, w, &ev, proj, len(body)); !ok {
		return
	}
	out := append(w.out, `{"success":true`...)
	if kind == analyticsCrash {
		out = append(out, `,"data":{"crashGroupId":"`...)
		out = event.AppendUUID(out, ev.ID)
		out = append(out, `"}`...)
	}
	w.out = append(out, '}')
	h.respond(ctx, fasthttp.StatusCreated, w.out)
}
