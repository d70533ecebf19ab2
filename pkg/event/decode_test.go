package event

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

var (
	testProject = uuid.MustParse("3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8")
	testNow     = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	testEventID = "0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b"
)

// nest returns n nested JSON containers: nest(1, false) is {}, nest(2, false) is {"a":{}},
// nest(2, true) is {"a":[[]]} (the outermost container is always an object).
func nest(n int, arrays bool) string {
	if arrays {
		return `{"a":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + `}`
	}
	return strings.Repeat(`{"a":`, n-1) + `{}` + strings.Repeat(`}`, n-1)
}

// event returns a client event body with the given payload and extra members appended
// (extra starts with a comma).
func event(payload, extra string) string {
	return `{"type":"event","name":"signup","payload":` + payload + extra + `}`
}

// parseBuild runs Parse and Build with a fresh Decoder and default limits. Parse must succeed.
func parseBuild(t *testing.T, body string) (Event, *Error) {
	t.Helper()
	d := NewDecoder(DefaultLimits())
	v, _, perr := d.Parse([]byte(body))
	require.Nil(t, perr, "Parse(%q)", body)
	return d.Build(v, "body", testProject, testNow)
}

func TestBuildValidation(t *testing.T) {
	t.Parallel()
	const (
		vf = CodeValidationFailed
		it = CodeInvalidTimestamp
	)
	tsMsg := "body/timestamp " + TimestampRule
	tests := []struct {
		name string
		body string
		code string
		msg  string
	}{
		// Required fields.
		{"missing type", `{"name":"n","payload":{}}`, vf, "body must have required property 'type'"},
		{"missing name", `{"type":"event","payload":{}}`, vf, "body must have required property 'name'"},
		{"missing payload", `{"type":"event","name":"n"}`, vf, "body must have required property 'payload'"},
		{"empty object", `{}`, vf, "body must have required property 'type'"},
		{"keys are case sensitive", `{"Type":"event","name":"n","payload":{}}`, vf, "body must have required property 'type'"},

		// type.
		{"type number", `{"type":1,"name":"n","payload":{}}`, vf, "body/type must be string"},
		{"type null", `{"type":null,"name":"n","payload":{}}`, vf, "body/type must be string"},
		{"type array", `{"type":["event"],"name":"n","payload":{}}`, vf, "body/type must be string"},
		{"type not in enum", `{"type":"log","name":"n","payload":{}}`, vf, "body/type must be equal to one of the allowed values (error, event, metric)"},
		{"type wrong case", `{"type":"Event","name":"n","payload":{}}`, vf, "body/type must be equal to one of the allowed values (error, event, metric)"},
		{"type empty", `{"type":"","name":"n","payload":{}}`, vf, "body/type must be equal to one of the allowed values (error, event, metric)"},

		// name.
		{"name number", `{"type":"event","name":1,"payload":{}}`, vf, "body/name must be string"},
		{"name null", `{"type":"event","name":null,"payload":{}}`, vf, "body/name must be string"},
		{"name object", `{"type":"event","name":{},"payload":{}}`, vf, "body/name must be string"},
		{"name of 0 chars", `{"type":"event","name":"","payload":{}}`, vf, "body/name must NOT have fewer than 1 characters"},
		{"name of 201 ASCII chars", `{"type":"event","name":"` + strings.Repeat("a", 201) + `","payload":{}}`, vf, "body/name must NOT have more than 200 characters"},
		{"name of 201 two-byte chars", `{"type":"event","name":"` + strings.Repeat("é", 201) + `","payload":{}}`, vf, "body/name must NOT have more than 200 characters"},
		{"name of 201 escaped pairs", `{"type":"event","name":"` + strings.Repeat(`\ud83d\ude00`, 201) + `","payload":{}}`, vf, "body/name must NOT have more than 200 characters"},

		// payload and context.
		{"payload array", event(`[]`, ``), vf, "body/payload must be object"},
		{"payload string", event(`"{}"`, ``), vf, "body/payload must be object"},
		{"payload number", event(`1`, ``), vf, "body/payload must be object"},
		{"payload null", event(`null`, ``), vf, "body/payload must be object"},
		{"payload true", event(`true`, ``), vf, "body/payload must be object"},
		{"context array", event(`{}`, `,"context":[]`), vf, "body/context must be object"},
		{"context string", event(`{}`, `,"context":"x"`), vf, "body/context must be object"},
		{"context number", event(`{}`, `,"context":0`), vf, "body/context must be object"},
		{"context false", event(`{}`, `,"context":false`), vf, "body/context must be object"},

		// eventId.
		{"eventId not a UUID", event(`{}`, `,"eventId":"not-a-uuid"`), vf, "body/eventId must be a UUID"},
		{"eventId nil UUID", event(`{}`, `,"eventId":"00000000-0000-0000-0000-000000000000"`), vf, "body/eventId must be a UUID"},
		{"eventId number", event(`{}`, `,"eventId":12345`), vf, "body/eventId must be a UUID"},
		{"eventId object", event(`{}`, `,"eventId":{}`), vf, "body/eventId must be a UUID"},
		{"eventId empty", event(`{}`, `,"eventId":""`), vf, "body/eventId must be a UUID"},
		{"eventId without dashes", event(`{}`, `,"eventId":"0190a6b27c3e7d4f8a1b2c3d4e5f6a7b"`), vf, "body/eventId must be a UUID"},
		{"eventId in braces", event(`{}`, `,"eventId":"{`+testEventID+`}"`), vf, "body/eventId must be a UUID"},
		{"eventId URN", event(`{}`, `,"eventId":"urn:uuid:`+testEventID+`"`), vf, "body/eventId must be a UUID"},
		{"eventId bad hex", event(`{}`, `,"eventId":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7g"`), vf, "body/eventId must be a UUID"},
		{"eventId misplaced dash", event(`{}`, `,"eventId":"0190a6b27-c3e-7d4f-8a1b-2c3d4e5f6a7b"`), vf, "body/eventId must be a UUID"},

		// timestamp: wrong type is VALIDATION_FAILED, unparseable is INVALID_TIMESTAMP.
		{"timestamp bool", event(`{}`, `,"timestamp":true`), vf, "body/timestamp must be string or number"},
		{"timestamp object", event(`{}`, `,"timestamp":{}`), vf, "body/timestamp must be string or number"},
		{"timestamp array", event(`{}`, `,"timestamp":[1]`), vf, "body/timestamp must be string or number"},
		{"timestamp epoch millis with a fraction", event(`{}`, `,"timestamp":1715000000000.5`), it, tsMsg},
		{"timestamp epoch millis as exponent", event(`{}`, `,"timestamp":1.715e12`), it, tsMsg},
		{"timestamp epoch millis past year 9999", event(`{}`, `,"timestamp":253402300800000`), it, tsMsg},
		{"timestamp epoch millis before year 1", event(`{}`, `,"timestamp":-62135596800001`), it, tsMsg},
		{"timestamp epoch millis over int64", event(`{}`, `,"timestamp":9223372036854775808`), it, tsMsg},
		{"timestamp HTTP date in a named zone", event(`{}`, `,"timestamp":"Mon, 06 May 2024 07:08:09 PST"`), it, tsMsg},
		{"timestamp HTTP date with a wrong weekday format", event(`{}`, `,"timestamp":"Monday, 06 May 2024 07:08:09 GMT"`), it, tsMsg},
		{"timestamp yesterday", event(`{}`, `,"timestamp":"yesterday"`), it, tsMsg},
		{"timestamp empty", event(`{}`, `,"timestamp":""`), it, tsMsg},
		{"timestamp epoch string", event(`{}`, `,"timestamp":"1715000000"`), it, tsMsg},
		{"timestamp offset +25:00", event(`{}`, `,"timestamp":"2024-05-06T07:08:09+25:00"`), it, tsMsg},
		{"timestamp offset without colon", event(`{}`, `,"timestamp":"2024-05-06T07:08:09+0100"`), it, tsMsg},
		{"timestamp year 0000", event(`{}`, `,"timestamp":"0000-01-01T00:00:00Z"`), it, tsMsg},
		{"timestamp year 0000 date only", event(`{}`, `,"timestamp":"0000-12-31"`), it, tsMsg},
		{"timestamp year 10000", event(`{}`, `,"timestamp":"10000-01-01T00:00:00Z"`), it, tsMsg},
		{"timestamp offset moves before year 1", event(`{}`, `,"timestamp":"0001-01-01T00:30:00+01:00"`), it, tsMsg},
		{"timestamp offset moves past year 9999", event(`{}`, `,"timestamp":"9999-12-31T23:30:00-01:00"`), it, tsMsg},
		{"timestamp February 30", event(`{}`, `,"timestamp":"2024-02-30"`), it, tsMsg},
		{"timestamp hour 24", event(`{}`, `,"timestamp":"2024-05-06T24:00:00Z"`), it, tsMsg},
		{"timestamp space separator", event(`{}`, `,"timestamp":"2024-05-06 07:08:09Z"`), it, tsMsg},
		{"timestamp trailing garbage", event(`{}`, `,"timestamp":"2024-05-06T07:08:09Zjunk"`), it, tsMsg},

		// Not an object at all (B08).
		{"top-level array", `[]`, vf, "body must be object"},
		{"top-level string", `"event"`, vf, "body must be object"},
		{"top-level number", `42`, vf, "body must be object"},
		{"top-level null", `null`, vf, "body must be object"},

		// Depth (the payload object itself is depth 1) and numbers.
		{"payload depth 33", event(nest(33, false), ``), vf, "body/payload must NOT be nested deeper than 32 levels"},
		{"payload depth 33 arrays", event(nest(33, true), ``), vf, "body/payload must NOT be nested deeper than 32 levels"},
		{"payload depth 100", event(nest(100, false), ``), vf, "body/payload must NOT be nested deeper than 32 levels"},
		{"context depth 33", event(`{}`, `,"context":`+nest(33, false)), vf, "body/context must NOT be nested deeper than 32 levels"},
		// Numbers must be IEEE-754 doubles (numbers.go); the message names the number.
		{"number 1e1001", event(`{"n":1e1001}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e1001 is beyond ±1.7976931348623157e308"},
		{"number 1E+1001", event(`{"n":1E+1001}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1E+1001 is beyond ±1.7976931348623157e308"},
		{"number 1e1000", event(`{"n":1e1000}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e1000 is beyond ±1.7976931348623157e308"},
		{"number -1e400", event(`{"n":-1e400}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): -1e400 is beyond ±1.7976931348623157e308"},
		{"number 1e309", event(`{"n":1e309}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e309 is beyond ±1.7976931348623157e308"},
		{"number just over the largest double", event(`{"n":1.7976931348623159e308}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1.7976931348623159e308 is beyond ±1.7976931348623157e308"},
		{"number of 310 digits", event(`{"n":1`+strings.Repeat("0", 309)+`}`, ``), vf, "body/payload/n must be a number of at most 128 characters"},
		{"number 0.0…01e-300", event(`{"n":0.000000000000000000000001e-300}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 0.000000000000000000000001e-300 is too small and would read as 0"},
		{"number 1e-400", event(`{"n":1e-400}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e-400 is too small and would read as 0"},
		{"number 2e-324", event(`{"n":2e-324}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 2e-324 is too small and would read as 0"},
		{"number 1e-1001", event(`{"n":1e-1001}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e-1001 is too small and would read as 0"},
		{"number 1e0001001", event(`{"n":1e0001001}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e0001001 is beyond ±1.7976931348623157e308"},
		{"number with a huge exponent", event(`{"n":1e99999999999999999999}`, ``), vf, "body/payload/n must be a number JavaScript can read (an IEEE-754 double): 1e99999999999999999999 is beyond ±1.7976931348623157e308"},
		{"zero with an exponent beyond 1000", event(`{"n":0e1001}`, ``), vf, "body/payload/n must be a number with an exponent within ±1000"},
		{"number of 129 chars", event(`{"n":`+strings.Repeat("9", 129)+`}`, ``), vf, "body/payload/n must be a number of at most 128 characters"},
		{"number of 129 chars with fraction", event(`{"n":-0.`+strings.Repeat("1", 126)+`}`, ``), vf, "body/payload/n must be a number of at most 128 characters"},
		{"bad number deep in an array", event(`{"a":[1,[2,{"b":1e2000}]]}`, ``), vf, "body/payload/a/1/1/b must be a number JavaScript can read (an IEEE-754 double): 1e2000 is beyond ±1.7976931348623157e308"},
		{"the first bad number is named", event(`{"a":1,"b":[1e-999,1e999]}`, ``), vf, "body/payload/b/0 must be a number JavaScript can read (an IEEE-754 double): 1e-999 is too small and would read as 0"},
		{"key with / and ~ in the path", event(`{"a/b~":{"c":1e500}}`, ``), vf, "body/payload/a~1b~0/c must be a number JavaScript can read (an IEEE-754 double): 1e500 is beyond ±1.7976931348623157e308"},
		{"bad number in context", event(`{}`, `,"context":{"n":1e1001}`), vf, "body/context/n must be a number JavaScript can read (an IEEE-754 double): 1e1001 is beyond ±1.7976931348623157e308"},
		{"bad number among 9000 copies", event(`{"a":[`+strings.Repeat("1e1000,", 8999)+`1e1000]}`, ``), vf, "body/payload/a/0 must be a number JavaScript can read (an IEEE-754 double): 1e1000 is beyond ±1.7976931348623157e308"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseBuild(t, tt.body)
			require.NotNil(t, err, "body %q was accepted", tt.body)
			require.Equal(t, tt.code, err.Code)
			require.Equal(t, tt.msg, err.Message)
			require.Equal(t, tt.code+": "+tt.msg, err.Error())
		})
	}
}

func TestBuildPathPrefixesMessages(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	v, _, perr := d.Parse([]byte(`{"events":[{"type":"event","name":"n","payload":{}},{"type":"event","name":2,"payload":{}}]}`))
	require.Nil(t, perr)
	arr := v.GetArray("events")
	require.Len(t, arr, 2)
	_, err := d.Build(arr[0], "body/events/0", testProject, testNow)
	require.Nil(t, err)
	_, err = d.Build(arr[1], "body/events/1", testProject, testNow)
	require.NotNil(t, err)
	require.Equal(t, "body/events/1/name must be string", err.Message)
}

func TestBuildAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		body        string
		wantType    string
		wantName    string
		wantPayload string
		wantContext string // "" means nil
	}{
		{"minimal", event(`{}`, ``), TypeEvent, "signup", `{}`, ""},
		{"type error", `{"type":"error","name":"n","payload":{}}`, TypeError, "n", `{}`, ""},
		{"type metric", `{"type":"metric","name":"n","payload":{}}`, TypeMetric, "n", `{}`, ""},
		{"name of 1 char", `{"type":"event","name":"x","payload":{}}`, TypeEvent, "x", `{}`, ""},
		{"name of 200 ASCII chars", `{"type":"event","name":"` + strings.Repeat("a", 200) + `","payload":{}}`, TypeEvent, strings.Repeat("a", 200), `{}`, ""},
		{"name of 200 two-byte chars", `{"type":"event","name":"` + strings.Repeat("é", 200) + `","payload":{}}`, TypeEvent, strings.Repeat("é", 200), `{}`, ""},
		{"name of 200 four-byte chars", `{"type":"event","name":"` + strings.Repeat("😀", 200) + `","payload":{}}`, TypeEvent, strings.Repeat("😀", 200), `{}`, ""},
		{"name of 200 escaped pairs", `{"type":"event","name":"` + strings.Repeat(`\ud83d\ude00`, 200) + `","payload":{}}`, TypeEvent, strings.Repeat("😀", 200), `{}`, ""},
		{"forged log line name verbatim (B31)", `{"type":"event","name":"\r\nlevel=error msg=forged","payload":{}}`, TypeEvent, "\r\nlevel=error msg=forged", `{}`, ""},
		{"script name verbatim (B31)", `{"type":"event","name":"<script>alert(1)</script>","payload":{}}`, TypeEvent, "<script>alert(1)</script>", `{}`, ""},
		{"extra fields ignored", `{"apiKey":"k","project_id":"B","type":"event","name":"n","payload":{},"extra":[1,{"x":null}]}`, TypeEvent, "n", `{}`, ""},
		{"escaped keys are matched", `{"typ\u0065":"event","name":"n","p\u0061yload":{}}`, TypeEvent, "n", `{}`, ""},
		{"whitespace around the body", " \t\r\n" + event(`{}`, ``) + " \n", TypeEvent, "signup", `{}`, ""},
		{"payload canonicalised", event(` { "b" : [ 1 , 2.50 , "x\u00e9\/" ] , "a" : null , "c" : true , "d" : false } `, ``), TypeEvent, "signup", `{"b":[1,2.50,"xé/"],"a":null,"c":true,"d":false}`, ""},
		{"payload escapes re-encoded", event(`{"s":"\u0041\b\f\n\r\t\"\\\u001f\u007f\u2028"}`, ``), TypeEvent, "signup", `{"s":"A\u0008\u000c\n\r\t\"\\\u001f` + "\u007f\u2028" + `"}`, ""},
		{"payload key escapes re-encoded", event(`{"a\"b\\c\n":1}`, ``), TypeEvent, "signup", `{"a\"b\\c\n":1}`, ""},
		{"payload not HTML-escaped", event(`{"h":"<b>&amp;</b>"}`, ``), TypeEvent, "signup", `{"h":"<b>&amp;</b>"}`, ""},
		{"the same key in different objects", event(`{"a":{"a":1},"b":[{"a":1},{"a":2}]}`, `,"context":{"a":1}`), TypeEvent, "signup", `{"a":{"a":1},"b":[{"a":1},{"a":2}]}`, `{"a":1}`},
		{"payload depth 32", event(nest(32, false), ``), TypeEvent, "signup", nest(32, false), ""},
		{"payload depth 32 arrays", event(nest(32, true), ``), TypeEvent, "signup", nest(32, true), ""},
		{"scalars below depth 32", event(`{"a":`+strings.Repeat(`[`, 31)+`1,"s",null`+strings.Repeat(`]`, 31)+`}`, ``), TypeEvent, "signup", `{"a":` + strings.Repeat(`[`, 31) + `1,"s",null` + strings.Repeat(`]`, 31) + `}`, ""},
		{"context depth 32", event(`{}`, `,"context":`+nest(32, false)), TypeEvent, "signup", `{}`, nest(32, false)},
		{"deep extra field ignored", event(`{}`, `,"extra":`+nest(200, false)), TypeEvent, "signup", `{}`, ""},
		{"context null", event(`{}`, `,"context":null`), TypeEvent, "signup", `{}`, ""},
		{"context empty", event(`{}`, `,"context":{}`), TypeEvent, "signup", `{}`, `{}`},
		{"context canonicalised", event(`{}`, `,"context": { "ua" : "x" , "n" : [ ] }`), TypeEvent, "signup", `{}`, `{"ua":"x","n":[]}`},
		{"numbers that are doubles", event(`{"a":0,"b":-0,"c":1.5,"d":1e308,"e":1E+308,"f":5e-324,"g":-1.7976931348623157e308,"h":1e0000308,"i":12345678901234567890,"j":0.1,"k":4.9406564584124654e-324,"l":0e-1000,"m":-0.0e1000,"n":1.7976931348623158e308,"o":3e-324}`, ``), TypeEvent, "signup", `{"a":0,"b":-0,"c":1.5,"d":1e308,"e":1E+308,"f":5e-324,"g":-1.7976931348623157e308,"h":1e0000308,"i":12345678901234567890,"j":0.1,"k":4.9406564584124654e-324,"l":0e-1000,"m":-0.0e1000,"n":1.7976931348623158e308,"o":3e-324}`, ""},
		{"number of 128 chars", event(`{"n":`+strings.Repeat("9", 128)+`}`, ``), TypeEvent, "signup", `{"n":` + strings.Repeat("9", 128) + `}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := parseBuild(t, tt.body)
			require.Nil(t, err)
			require.Equal(t, tt.wantType, ev.Type)
			require.Equal(t, tt.wantName, ev.Name)
			require.Equal(t, tt.wantPayload, string(ev.Payload))
			if tt.wantContext == "" {
				require.Nil(t, ev.Context)
			} else {
				require.Equal(t, tt.wantContext, string(ev.Context))
			}
			require.Equal(t, testProject, ev.ProjectID)
			require.True(t, json.Valid(ev.AppendJSON(nil)))
		})
	}
}

func TestBuildTimestamp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ts   string // JSON value; "" means absent
		want time.Time
	}{
		{"absent defaults to receivedAt", ``, testNow.Truncate(time.Millisecond)},
		{"null defaults to receivedAt", `null`, testNow.Truncate(time.Millisecond)},
		{"RFC3339 Z", `"2024-01-15T10:20:30Z"`, time.Date(2024, 1, 15, 10, 20, 30, 0, time.UTC)},
		{"RFC3339 milliseconds", `"2024-01-15T10:20:30.123Z"`, time.Date(2024, 1, 15, 10, 20, 30, 123e6, time.UTC)},
		{"RFC3339 nanoseconds truncated", `"2024-01-15T10:20:30.123999999Z"`, time.Date(2024, 1, 15, 10, 20, 30, 123e6, time.UTC)},
		{"RFC3339 one fraction digit", `"2024-01-15T10:20:30.5Z"`, time.Date(2024, 1, 15, 10, 20, 30, 500e6, time.UTC)},
		{"RFC3339 positive offset", `"2024-01-15T10:20:30+02:00"`, time.Date(2024, 1, 15, 8, 20, 30, 0, time.UTC)},
		{"RFC3339 negative offset with fraction", `"2024-01-15T22:20:30.250-05:30"`, time.Date(2024, 1, 16, 3, 50, 30, 250e6, time.UTC)},
		{"RFC3339 +00:00", `"2024-01-15T10:20:30+00:00"`, time.Date(2024, 1, 15, 10, 20, 30, 0, time.UTC)},
		{"no zone is UTC", `"2024-01-15T10:20:30"`, time.Date(2024, 1, 15, 10, 20, 30, 0, time.UTC)},
		{"no zone with fraction", `"2024-01-15T10:20:30.789"`, time.Date(2024, 1, 15, 10, 20, 30, 789e6, time.UTC)},
		{"date only", `"2024-01-15"`, time.Date(2024, 1, 15, 0, 0, 0, 0, time.UTC)},
		{"year 0001", `"0001-01-01T00:00:00Z"`, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"year 9999 date only (B29)", `"9999-12-31"`, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)},
		{"last storable millisecond", `"9999-12-31T23:59:59.999999Z"`, time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)},
		{"escaped string", `"2024-01-15T10:20:30\u005a"`, time.Date(2024, 1, 15, 10, 20, 30, 0, time.UTC)},
		// Issue 17 item 5: the forms the reference backend took (JavaScript's Date).
		{"HTTP date (RFC 1123, GMT)", `"Tue, 01 Dec 2026 10:00:00 GMT"`, time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)},
		{"RFC 1123 in UTC", `"Tue, 01 Dec 2026 10:00:00 UTC"`, time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)},
		{"RFC 1123 numeric zone", `"Tue, 01 Dec 2026 10:00:00 +0130"`, time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC)},
		{"HTTP date, obsolete RFC 850 form", `"Tuesday, 01-Dec-26 10:00:00 GMT"`, time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)},
		{"HTTP date, obsolete asctime form", `"Tue Dec  1 10:00:00 2026"`, time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)},
		{"epoch milliseconds", `1796119200123`, time.Date(2026, 12, 1, 10, 0, 0, 123e6, time.UTC)},
		{"epoch milliseconds 0", `0`, time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"negative epoch milliseconds", `-1000`, time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC)},
		{"epoch milliseconds, last storable", `253402300799999`, time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)},
		{"epoch milliseconds, first storable", `-62135596800000`, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			extra := ""
			if tt.ts != "" {
				extra = `,"timestamp":` + tt.ts
			}
			ev, err := parseBuild(t, event(`{}`, extra))
			require.Nil(t, err)
			require.True(t, tt.want.Equal(ev.Timestamp), "got %v, want %v", ev.Timestamp, tt.want)
			require.Equal(t, time.UTC, ev.Timestamp.Location())
			require.True(t, testNow.Truncate(time.Millisecond).Equal(ev.ReceivedAt))
		})
	}
}

func TestBuildReceivedAtTruncatedToUTC(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	v, _, perr := d.Parse([]byte(event(`{}`, ``)))
	require.Nil(t, perr)
	zone := time.FixedZone("X", 5*3600+30*60)
	now := time.Date(2024, 5, 6, 12, 38, 9, 987654321, zone)
	ev, err := d.Build(v, "body", testProject, now)
	require.Nil(t, err)
	require.Equal(t, time.Date(2024, 5, 6, 7, 8, 9, 987e6, time.UTC), ev.ReceivedAt)
	require.Equal(t, ev.ReceivedAt, ev.Timestamp)
}

func TestBuildEventID(t *testing.T) {
	t.Parallel()
	t.Run("client id used", func(t *testing.T) {
		t.Parallel()
		ev, err := parseBuild(t, event(`{}`, `,"eventId":"`+testEventID+`"`))
		require.Nil(t, err)
		require.Equal(t, uuid.MustParse(testEventID), ev.ID)
	})
	t.Run("client id upper case normalised", func(t *testing.T) {
		t.Parallel()
		ev, err := parseBuild(t, event(`{}`, `,"eventId":"`+strings.ToUpper(testEventID)+`"`))
		require.Nil(t, err)
		require.Equal(t, uuid.MustParse(testEventID), ev.ID)
		require.Contains(t, string(ev.AppendJSON(nil)), `"id":"`+testEventID+`"`)
	})
	t.Run("client id of any version", func(t *testing.T) {
		t.Parallel()
		v4 := "9b2f3c1a-8d7e-4f6a-b5c4-d3e2f1a0b9c8"
		ev, err := parseBuild(t, event(`{}`, `,"eventId":"`+v4+`"`))
		require.Nil(t, err)
		require.Equal(t, uuid.MustParse(v4), ev.ID)
	})
	for _, tc := range []struct{ name, extra string }{{"absent", ``}, {"null", `,"eventId":null`}} {
		t.Run("generated when "+tc.name, func(t *testing.T) {
			t.Parallel()
			seen := map[uuid.UUID]bool{}
			for range 100 {
				ev, err := parseBuild(t, event(`{}`, tc.extra))
				require.Nil(t, err)
				require.Equal(t, uuid.Version(7), ev.ID.Version())
				require.Equal(t, uuid.RFC4122, ev.ID.Variant())
				require.False(t, seen[ev.ID], "duplicate id %s", ev.ID)
				seen[ev.ID] = true
			}
		})
	}
}

func TestParseInvalidJSON(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, body string }{
		{"truncated object (B07)", `{"name":`},
		{"truncated string", `{"name":"abc`},
		{"truncated array", `[1,2`},
		{"truncated escape", `{"a":"\u00`},
		{"empty body", ``},
		{"only whitespace", " \n\t"},
		{"top-level garbage", `garbage`},
		{"trailing garbage", `{"a":1} x`},
		{"two values", `{"a":1}{"b":2}`},
		{"trailing comma", `{"a":1,}`},
		{"single quotes", `{'a':1}`},
		{"unquoted key", `{a:1}`},
		{"NaN", `{"a":NaN}`},
		{"top-level NaN", `NaN`},
		{"Infinity", `{"a":Infinity}`},
		{"-Inf", `{"a":-Inf}`},
		{"leading zero", `{"a":01}`},
		{"leading plus", `{"a":+1}`},
		{"bare fraction", `{"a":.5}`},
		{"dangling exponent", `{"a":1e}`},
		{"hex number", `{"a":0x10}`},
		{"invalid escape", `{"a":"\x41"}`},
		{"short unicode escape", `{"a":"\u12"}`},
		{"raw control character in string", "{\"a\":\"x\ny\"}"},
		{"raw NUL in string", "{\"a\":\"x\x00y\"}"},
		{"raw invalid UTF-8 outside a string", "{\"a\":1\xFF}"},
		{"BOM", "\uFEFF{}"},
		{"comment", `{"a":1 /* c */}`},
		{"nesting beyond encoding/json's limit", strings.Repeat("[", 10001) + strings.Repeat("]", 10001)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := NewDecoder(DefaultLimits())
			v, _, err := d.Parse([]byte(tt.body))
			require.Nil(t, v)
			require.NotNil(t, err)
			require.Equal(t, CodeInvalidJSON, err.Code)
			require.Equal(t, "body is not valid JSON", err.Message)
		})
	}
}

func TestParseTooDeepForTheParser(t *testing.T) {
	t.Parallel()
	// Valid JSON nested beyond fastjson's fixed maximum is refused as a validation error,
	// without overflowing the stack.
	d := NewDecoder(DefaultLimits())
	v, _, err := d.Parse([]byte(event(`{}`, `,"extra":`+nest(5000, true))))
	require.Nil(t, v)
	require.NotNil(t, err)
	require.Equal(t, CodeValidationFailed, err.Code)
	require.Equal(t, "body must NOT be nested deeper than 32 levels", err.Message)
}

func TestLimitsAreConfigurable(t *testing.T) {
	t.Parallel()
	d := NewDecoder(Limits{MaxNameChars: 3, MaxEventBytes: DefaultMaxEventBytes, MaxDepth: 2})
	build := func(body string) *Error {
		v, _, perr := d.Parse([]byte(body))
		require.Nil(t, perr)
		_, err := d.Build(v, "body", testProject, testNow)
		return err
	}
	require.Nil(t, build(`{"type":"event","name":"abc","payload":{"a":{}}}`))
	err := build(`{"type":"event","name":"abcd","payload":{}}`)
	require.NotNil(t, err)
	require.Equal(t, "body/name must NOT have more than 3 characters", err.Message)
	err = build(`{"type":"event","name":"abc","payload":{"a":[[]]}}`)
	require.NotNil(t, err)
	require.Equal(t, "body/payload must NOT be nested deeper than 2 levels", err.Message)
}

func TestAPIKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want string
		ok   bool
	}{
		{"string", `{"apiKey":"pk_live_123"}`, "pk_live_123", true},
		{"escaped", `{"apiKey":"pk\u005flive"}`, "pk_live", true},
		{"empty string", `{"apiKey":""}`, "", true},
		{"missing", `{"type":"event"}`, "", false},
		{"number", `{"apiKey":123}`, "", false},
		{"null", `{"apiKey":null}`, "", false},
		{"wrong case", `{"apikey":"k"}`, "", false},
		{"top-level array", `[{"apiKey":"k"}]`, "", false},
		{"top-level string", `"apiKey"`, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := NewDecoder(DefaultLimits())
			v, _, perr := d.Parse([]byte(tt.body))
			require.Nil(t, perr)
			got, ok := APIKey(v)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.want, got)
		})
	}
}

// buildMessage builds an event with one Decoder and returns its canonical encoding.
func buildMessage(t *testing.T, body string) (Event, []byte) {
	t.Helper()
	ev, err := parseBuild(t, body)
	require.Nil(t, err)
	enc := ev.AppendJSON(nil)
	// The Event's Payload and Context alias the builder's buffers; detach them.
	ev.Payload = append([]byte(nil), ev.Payload...)
	if ev.Context != nil {
		ev.Context = append([]byte(nil), ev.Context...)
	}
	return ev, enc
}

func TestDecodeMessageRoundTrip(t *testing.T) {
	t.Parallel()
	bodies := map[string]string{
		"minimal":                 event(`{}`, ``),
		"with context":            event(`{"a":[1,2.5,"x"],"b":{"c":null}}`, `,"context":{"ua":"Mozilla/5.0","n":1e300}`),
		"empty context":           event(`{}`, `,"context":{}`),
		"client id and timestamp": event(`{}`, `,"eventId":"`+testEventID+`","timestamp":"2024-01-15T10:20:30.123+02:00"`),
		"escapes": `{"type":"error","name":"\r\nlevel=error msg=forged \"q\" \\ \u0001 <script>",` +
			`"payload":{"s":"\u001f\t\u2028\ud83d\ude00 é","k\"\\":"\u0000"}}`,
		"sanitised": "{\"type\":\"metric\",\"name\":\"\xFF\",\"payload\":{\"s\":\"\\ud800\"}}",
		"deep":      event(nest(32, false), `,"context":`+nest(32, true)),
		"long name": `{"type":"event","name":"` + strings.Repeat("😀", 200) + `","payload":{}}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			want, enc := buildMessage(t, body)
			d := NewDecoder(DefaultLimits())
			got, err := d.DecodeMessage(enc)
			require.NoError(t, err)
			require.Equal(t, want, got)
			require.Equal(t, string(enc), string(got.AppendJSON(nil)))
		})
	}
}

func TestDecodeMessageOwnsMemory(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	_, enc1 := buildMessage(t, event(`{"k":"aaaaaaaa"}`, `,"context":{"c":"aaaaaaaa"}`))
	_, enc2 := buildMessage(t, event(`{"k":"bbbbbbbb"}`, `,"context":{"c":"bbbbbbbb"}`))

	ev1, err := d.DecodeMessage(enc1)
	require.NoError(t, err)
	require.Equal(t, `{"k":"aaaaaaaa"}`, string(ev1.Payload))
	require.Equal(t, `{"c":"aaaaaaaa"}`, string(ev1.Context))

	// Reuse the decoder: its scratch buffers are overwritten in place.
	ev2, err := d.DecodeMessage(enc2)
	require.NoError(t, err)
	v, _, perr := d.Parse([]byte(event(`{"k":"cccccccc"}`, `,"context":{"c":"cccccccc"}`)))
	require.Nil(t, perr)
	_, berr := d.Build(v, "body", testProject, testNow)
	require.Nil(t, berr)

	require.Equal(t, `{"k":"aaaaaaaa"}`, string(ev1.Payload))
	require.Equal(t, `{"c":"aaaaaaaa"}`, string(ev1.Context))
	require.Equal(t, `{"k":"bbbbbbbb"}`, string(ev2.Payload))
	require.Equal(t, `{"c":"bbbbbbbb"}`, string(ev2.Context))

	// Mutating the returned slices does not touch the decoder or the input.
	ev2.Payload[2] = 'X'
	require.Equal(t, `{"k":"cccccccc"}`, string(d.payload))
	require.Contains(t, string(enc2), `{"k":"bbbbbbbb"}`)
}

func TestDecodeMessageRejects(t *testing.T) {
	t.Parallel()
	_, validMsg := buildMessage(t, event(`{"a":1}`, `,"context":{"c":2}`))
	valid := string(validMsg)
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(validMsg, &fields))
	// with returns the valid message with key set to raw (or removed when raw is "").
	with := func(key, raw string) string {
		m := make(map[string]json.RawMessage, len(fields))
		for k, v := range fields {
			m[k] = v
		}
		if raw == "" {
			delete(m, key)
		} else {
			m[key] = json.RawMessage(raw)
		}
		b, err := json.Marshal(m)
		require.NoError(t, err)
		return string(b)
	}
	const (
		vf = CodeValidationFailed
		it = CodeInvalidTimestamp
	)
	sanitised := "message contains invalid UTF-8, NUL characters or unpaired surrogates"
	tests := []struct {
		name string
		msg  string
		code string
		text string
	}{
		{"invalid JSON", `{"id":`, CodeInvalidJSON, "body is not valid JSON"},
		{"empty", ``, CodeInvalidJSON, "body is not valid JSON"},
		{"NaN", strings.Replace(valid, `"payload":{"a":1}`, `"payload":{"a":NaN}`, 1), CodeInvalidJSON, "body is not valid JSON"},
		{"top-level array", `[]`, vf, "message must be object"},
		{"top-level string", `"x"`, vf, "message must be object"},
		{"NUL escape in name", with("name", `"a\u0000b"`), vf, sanitised},
		{"NUL escape in payload key", with("payload", `{"\u0000":1}`), vf, sanitised},
		{"lone high surrogate", with("payload", `{"s":"\ud800"}`), vf, sanitised},
		{"lone low surrogate", with("context", `{"s":"\udfff"}`), vf, sanitised},
		{"raw invalid UTF-8", strings.Replace(valid, `"event"`, "\"ev\xC3\x28nt\"", 1), vf, sanitised},
		{"missing id", with("id", ""), vf, "message must have required property 'id'"},
		{"id not a UUID", with("id", `"x"`), vf, "message/id must be a UUID"},
		{"id nil UUID", with("id", `"00000000-0000-0000-0000-000000000000"`), vf, "message/id must be a UUID"},
		{"id number", with("id", `1`), vf, "message/id must be a UUID"},
		{"missing projectId", with("projectId", ""), vf, "message must have required property 'projectId'"},
		{"projectId not a UUID", with("projectId", `"B"`), vf, "message/projectId must be a UUID"},
		{"missing timestamp", with("timestamp", ""), vf, "message must have required property 'timestamp'"},
		{"null timestamp", with("timestamp", `null`), vf, "message must have required property 'timestamp'"},
		{"timestamp number", with("timestamp", `0`), vf, "message/timestamp must be string"},
		{"timestamp unparseable", with("timestamp", `"yesterday"`), it, "message/timestamp must be an ISO-8601 date-time between years 0001 and 9999"},
		{"missing receivedAt", with("receivedAt", ""), vf, "message must have required property 'receivedAt'"},
		{"null receivedAt", with("receivedAt", `null`), vf, "message must have required property 'receivedAt'"},
		{"receivedAt number", with("receivedAt", `1715000000000`), vf, "message must have required property 'receivedAt'"},
		{"receivedAt unparseable", with("receivedAt", `"10000-01-01T00:00:00.000Z"`), it, "message/receivedAt must be an ISO-8601 date-time"},
		{"missing type", with("type", ""), vf, "message must have required property 'type'"},
		{"bad type", with("type", `"log"`), vf, "message/type must be equal to one of the allowed values (error, event, metric)"},
		{"missing name", with("name", ""), vf, "message must have required property 'name'"},
		{"long name", with("name", `"`+strings.Repeat("a", 201)+`"`), vf, "message/name must NOT have more than 200 characters"},
		{"missing payload", with("payload", ""), vf, "message must have required property 'payload'"},
		{"payload not object", with("payload", `[]`), vf, "message/payload must be object"},
		{"payload too deep", with("payload", nest(33, false)), vf, "message/payload must NOT be nested deeper than 32 levels"},
		{"payload number too big", with("payload", `{"n":1e1001}`), vf, "message/payload contains a number outside the storable range"},
		{"context not object", with("context", `"x"`), vf, "message/context must be object"},
		{"oversize", with("payload", `{"s":"`+strings.Repeat("x", DefaultMaxEventBytes)+`"}`), CodePayloadTooLarge, "message is larger than 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := NewDecoder(DefaultLimits())
			_, err := d.DecodeMessage([]byte(tt.msg))
			require.Error(t, err)
			var e *Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, tt.code, e.Code, "message %q", tt.msg)
			require.Equal(t, tt.text, e.Message)
		})
	}
}

func TestDecodeMessageSizeBoundary(t *testing.T) {
	t.Parallel()
	_, small := buildMessage(t, event(`{"s":""}`, ``))
	pad := DefaultMaxEventBytes - len(small)
	_, exact := buildMessage(t, event(`{"s":"`+strings.Repeat("x", pad)+`"}`, ``))
	require.Len(t, exact, DefaultMaxEventBytes)
	_, over := buildMessage(t, event(`{"s":"`+strings.Repeat("x", pad+1)+`"}`, ``))

	d := NewDecoder(DefaultLimits())
	_, err := d.DecodeMessage(exact)
	require.NoError(t, err)
	_, err = d.DecodeMessage(over)
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, CodePayloadTooLarge, e.Code)
}

func TestDecodeMessageAcceptsMemberOrderAndWhitespace(t *testing.T) {
	t.Parallel()
	msg := ` { "receivedAt" : "2024-05-06T07:08:09.123Z" , "context" : null , "payload" : { "a" : 1 } ,
		"name" : "n" , "type" : "metric" , "timestamp" : "2024-05-06T07:08:00Z" ,
		"projectId" : "` + testProject.String() + `" , "id" : "` + testEventID + `" } `
	d := NewDecoder(DefaultLimits())
	ev, err := d.DecodeMessage([]byte(msg))
	require.NoError(t, err)
	require.Equal(t, Event{
		ID:         uuid.MustParse(testEventID),
		ProjectID:  testProject,
		Type:       TypeMetric,
		Name:       "n",
		Payload:    []byte(`{"a":1}`),
		Timestamp:  time.Date(2024, 5, 6, 7, 8, 0, 0, time.UTC),
		ReceivedAt: time.Date(2024, 5, 6, 7, 8, 9, 123e6, time.UTC),
	}, ev)
}

// Names are interned: the same name gives the same string without an allocation, up to
// maxNames distinct names, and any name beyond that is still returned right.
func TestDecoderInternsNames(t *testing.T) {
	d := NewDecoder(DefaultLimits())
	a := d.name([]byte("checkout failed"))
	require.Equal(t, "checkout failed", a)
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = d.name([]byte("checkout failed")) }))
	for i := range maxNames + 10 {
		n := "n" + strconv.Itoa(i)
		require.Equal(t, n, d.name([]byte(n)))
	}
	require.Len(t, d.names, maxNames)
	require.Equal(t, "checkout failed", d.name([]byte("checkout failed")))
}
