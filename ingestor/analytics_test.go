package ingestor_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// Issue 17 item 3: the reference React Native SDK (mrarslanark/pulseboard,
// react-native/src at HEAD) posts to POST /analytics/{crash,session,screen-view,api-call}
// with its apiKey and its enriched context in the body, and takes only a 2xx as
// delivered. These are its bodies, field for field and in its order (JSON.stringify
// leaves undefined optional fields out).

// sdkContext is the SDK's EnrichedContext (context.ts collect()) on an Android phone.
const sdkContext = `{"app":{"appVersion":"2.0.1","buildNumber":"201","environment":"staging"},` +
	`"device":{"platform":"android","os":"Android","osVersion":"14","model":"Pixel 8","manufacturer":"Google","brand":"google","isTablet":false,` +
	`"appVersion":"2.0.1","buildNumber":"201","bundleId":"com.example.shop","screenWidth":411.43,"screenHeight":914.29,"fontScale":1.15,"isEmulator":false,` +
	`"language":"de-DE","timezone":"Europe/Berlin"},` +
	`"network":{"type":"cellular","isConnected":true,"isWifiEnabled":false,"carrier":"Telekom","ipAddress":"10.20.30.40"},` +
	`"session":{"sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z"},` +
	`"user":{"userId":"u-42","email":"grace@example.com","username":"grace"}}`

const sdkStack = "TypeError: Cannot read property 'total' of undefined\n    at CheckoutScreen (CheckoutScreen.tsx:88:21)\n    at renderWithHooks (react-native.js:1:1)"

// analyticsCase is one SDK call: the route, the body it posts, and the event PulseBoard
// documents for it (README "Analytics routes (reference SDK)").
type analyticsCase struct {
	sdkCall, path, body string
	typ, name, payload  string // payload: the exact canonical text
	timestamp           string // "" = the receive time
}

func analyticsCases(key string) []analyticsCase {
	return []analyticsCase{
		{
			sdkCall: "trackCrash(error, true)", path: "/analytics/crash",
			body: `{"apiKey":"` + key + `","errorName":"TypeError","errorMessage":"Cannot read property 'total' of undefined",` +
				`"stackTrace":` + jsonString(sdkStack) + `,"isFatal":true,"sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
			typ: "error", name: "TypeError",
			payload: `{"errorName":"TypeError","errorMessage":"Cannot read property 'total' of undefined","stackTrace":` + jsonString(sdkStack) +
				`,"isFatal":true,"sessionId":"m7x2k9q1-4f8a2b1c"}`,
		},
		{
			sdkCall: "startSession()", path: "/analytics/session",
			body: `{"apiKey":"` + key + `","sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z","context":` + sdkContext + `}`,
			typ:  "event", name: "session_start", timestamp: "2026-03-01T12:00:00.000Z",
			payload: `{"sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z"}`,
		},
		{
			sdkCall: "endSession(450250)", path: "/analytics/session",
			body: `{"apiKey":"` + key + `","sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z","endedAt":"2026-03-01T12:07:30.250Z",` +
				`"duration":450250,"context":` + sdkContext + `}`,
			typ: "event", name: "session_end", timestamp: "2026-03-01T12:07:30.250Z",
			payload: `{"sessionId":"m7x2k9q1-4f8a2b1c","startedAt":"2026-03-01T12:00:00.000Z","endedAt":"2026-03-01T12:07:30.250Z","duration":450250}`,
		},
		{
			sdkCall: "trackScreen('Checkout', 182.5)", path: "/analytics/screen-view",
			body: `{"apiKey":"` + key + `","screenName":"Checkout","loadTime":182.5,"sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
			typ:  "event", name: "screen_view",
			payload: `{"screenName":"Checkout","loadTime":182.5,"sessionId":"m7x2k9q1-4f8a2b1c"}`,
		},
		{
			sdkCall: "trackApiCall('/v1/cart', 'POST', 502, 1234.5, 2048)", path: "/analytics/api-call",
			body: `{"apiKey":"` + key + `","endpoint":"https://api.example.com/v1/cart","httpMethod":"POST","statusCode":502,"duration":1234.5,` +
				`"payloadSize":2048,"sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
			typ: "metric", name: "api_call",
			payload: `{"endpoint":"https://api.example.com/v1/cart","httpMethod":"POST","statusCode":502,"duration":1234.5,` +
				`"payloadSize":2048,"sessionId":"m7x2k9q1-4f8a2b1c","value":1234.5}`,
		},
		{
			sdkCall: "trackScreen('Home')", path: "/analytics/screen-view",
			body: `{"apiKey":"` + key + `","screenName":"Home","sessionId":"m7x2k9q1-4f8a2b1c","context":` + sdkContext + `}`,
			typ:  "event", name: "screen_view",
			payload: `{"screenName":"Home","sessionId":"m7x2k9q1-4f8a2b1c"}`,
		},
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestAnalyticsSDKRoutes: each SDK body is answered 201 with the old backend's body, only
// after Kafka acknowledged it, and the event on Kafka is the documented one: type, name,
// payload with every field the SDK sent, the SDK's context unchanged, the route's
// timestamp; keyed and partitioned by project like any event.
func TestAnalyticsSDKRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cases := analyticsCases(b.project.APIKey)
	ids := make([]uuid.UUID, len(cases))
	start := time.Now().UTC().Truncate(time.Millisecond)
	for i, c := range cases {
		before := b.produced(t)
		res := b.post(t, c.path, []byte(c.body), nil)
		require.Equal(t, http.StatusCreated, res.status, "%s: %s", c.sdkCall, res.body)
		require.Equal(t, "application/json; charset=utf-8", res.header.Get("Content-Type"))
		require.Equal(t, "*", res.header.Get("Access-Control-Allow-Origin"))
		require.Equal(t, before+1, b.produced(t), "%s: on Kafka before the answer", c.sdkCall)
		if c.name == "TypeError" {
			// The old backend's answer to a crash: {"success":true,"data":{"crashGroupId":…}};
			// PulseBoard has no crash groups and gives the event's id.
			var ans struct {
				Success bool
				Data    struct{ CrashGroupID uuid.UUID }
			}
			require.NoError(t, json.Unmarshal(res.body, &ans))
			require.True(t, ans.Success)
			require.Equal(t, `{"success":true,"data":{"crashGroupId":"`+ans.Data.CrashGroupID.String()+`"}}`, string(res.body))
			ids[i] = ans.Data.CrashGroupID
		} else {
			require.Equal(t, `{"success":true}`, string(res.body), c.sdkCall)
		}
	}
	end := time.Now().UTC()

	msgs := b.readTopic(t)
	require.Len(t, msgs, len(cases))
	byID := messagesByID(t, msgs)
	seen := map[string]int{}
	for _, m := range msgs {
		require.Equal(t, b.project.ID.String(), string(m.Key))
		requireMurmur2Partition(t, m)
		var ev wireEvent
		require.NoError(t, json.Unmarshal(m.Value, &ev))
		require.Equal(t, b.project.ID, ev.ProjectID)
		// Match the message to its case by name and payload (two screen views).
		var c *analyticsCase
		for i := range cases {
			if cases[i].name == ev.Name && cases[i].payload == string(ev.Payload) {
				c = &cases[i]
			}
		}
		require.NotNil(t, c, "unexpected event %s", m.Value)
		seen[c.sdkCall]++
		require.Equal(t, c.typ, ev.Type, c.sdkCall)
		require.Equal(t, sdkContext, string(ev.Context), "%s: the SDK's context, unchanged", c.sdkCall)
		require.NotContains(t, string(m.Value), b.project.APIKey, "the API key is never stored")
		require.Equal(t, uuid.Version(7), ev.ID.Version())
		recv, err := time.Parse(event.TimeLayout, ev.ReceivedAt)
		require.NoError(t, err)
		require.False(t, recv.Before(start) || recv.After(end), "receivedAt %s", ev.ReceivedAt)
		if c.timestamp == "" {
			require.Equal(t, ev.ReceivedAt, ev.Timestamp, "%s: timed at receipt, as the old backend did", c.sdkCall)
		} else {
			require.Equal(t, c.timestamp, ev.Timestamp, c.sdkCall)
		}
	}
	for _, c := range cases {
		require.Equal(t, 1, seen[c.sdkCall], c.sdkCall)
	}
	_, ok := byID[ids[0]]
	require.True(t, ok, "the crash's answer names its event")

	require.Equal(t, float64(len(cases)), metricValue(t, b.reg, "pulseboard_ingest_requests_total", "route", "analytics", "code", "201"))
	require.Equal(t, float64(len(cases)), metricValue(t, b.reg, "pulseboard_ingest_events_accepted_total"))
}

// TestAnalyticsRefusals: the usual error answers ({success:false,code,message}) and
// nothing on Kafka: a missing required field is 400 VALIDATION_FAILED naming it, a bad
// date INVALID_TIMESTAMP, an unknown or missing key 401, a body over the limit 413, a
// project over its rate limit 429 with the RateLimit headers.
func TestAnalyticsRefusals(t *testing.T) {
	t.Parallel()
	// The bucket holds at least one full batch; a small batch size keeps the burst small.
	b := setup(t, withConfig(func(c *ingestor.Config) { c.MaxBatchEvents = 10 }))
	key := b.project.APIKey
	for _, c := range []struct {
		path, body  string
		status      int
		code, inMsg string
	}{
		{"/analytics/crash", `{"apiKey":"` + key + `","errorName":"E","errorMessage":"m","isFatal":true}`, 400, "VALIDATION_FAILED", "required property 'stackTrace'"},
		{"/analytics/session", `{"apiKey":"` + key + `","startedAt":"2026-03-01T12:00:00.000Z"}`, 400, "VALIDATION_FAILED", "required property 'sessionId'"},
		{"/analytics/session", `{"apiKey":"` + key + `","sessionId":"s","startedAt":"not a date"}`, 400, "INVALID_TIMESTAMP", "body/startedAt"},
		{"/analytics/screen-view", `{"apiKey":"` + key + `","loadTime":12}`, 400, "VALIDATION_FAILED", "required property 'screenName'"},
		{"/analytics/api-call", `{"apiKey":"` + key + `","endpoint":"/a","httpMethod":"GET","statusCode":"200","duration":5}`, 400, "VALIDATION_FAILED", "body/statusCode must be number"},
		{"/analytics/api-call", `{"apiKey":"` + key + `","endpoint":"/a","httpMethod":"GET","statusCode":200,"duration":5,"context":[]}`, 400, "VALIDATION_FAILED", "body/context must be object"},
		{"/analytics/crash", `{"apiKey":"pb_live_notAKeyOfAnyProject0000000000","errorName":"E","errorMessage":"m","stackTrace":"s","isFatal":true}`, 401, "INVALID_API_KEY", ""},
		{"/analytics/screen-view", `{"screenName":"Home"}`, 401, "INVALID_API_KEY", ""},
		{"/analytics/screen-view", `{"apiKey":"` + key + `","screenName":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "PAYLOAD_TOO_LARGE", ""},
	} {
		res := b.post(t, c.path, []byte(c.body), nil)
		requireJSONError(t, res, c.status, c.code)
		require.Contains(t, res.env.Message, c.inMsg)
	}
	require.Zero(t, b.produced(t))
	require.Equal(t, 6.0, metricValue(t, b.reg, "pulseboard_ingest_requests_total", "route", "analytics", "code", "400"))

	limited := b.newProject(t, "limited")
	_, err := b.pool.Exec(context.Background(), `UPDATE projects SET rate_limit = 5 WHERE id = $1`, limited.ID)
	require.NoError(t, err)
	c := analyticsCases(limited.APIKey)[3]
	var refused *response
	for range 100 {
		res := b.post(t, c.path, []byte(c.body), nil)
		if res.status == http.StatusCreated {
			require.Equal(t, "5", res.header.Get("RateLimit-Limit"))
			continue
		}
		refused = &res
		break
	}
	require.NotNil(t, refused, "the project's rate limit was never enforced")
	requireJSONError(t, *refused, http.StatusTooManyRequests, "RATE_LIMITED")
	retry, err := strconv.Atoi(refused.header.Get("Retry-After"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, retry, 1)
}

// TestAnalyticsCrashLongStack (issue 17 item 4 on the analytics route): a crash with a
// 114 KB stack trace is not refused: its stack is cut to fit the 64 KiB event limit and
// ends with the marker saying how much was cut; the rest is kept whole.
func TestAnalyticsCrashLongStack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stack := "RangeError: Maximum call stack size exceeded\n" + strings.Repeat("    at recurse (utils.ts:12:3)\n", 3800)
	require.Greater(t, len(stack), 110_000)
	body := `{"apiKey":"` + b.project.APIKey + `","errorName":"RangeError","errorMessage":"Maximum call stack size exceeded",` +
		`"stackTrace":` + jsonString(stack) + `,"isFatal":false,"sessionId":"s-1","context":` + sdkContext + `}`
	res := b.post(t, "/analytics/crash", []byte(body), nil)
	require.Equal(t, http.StatusCreated, res.status, "body: %.500s", res.body)

	msgs := b.readTopic(t)
	require.Len(t, msgs, 1)
	m := msgs[0]
	require.LessOrEqual(t, len(m.Value), event.DefaultMaxEventBytes)
	var got struct {
		Type, Name string
		Payload    struct {
			ErrorName, ErrorMessage, StackTrace, SessionID string
			IsFatal                                        *bool
		}
		Context json.RawMessage
	}
	require.NoError(t, json.Unmarshal(m.Value, &got))
	require.Equal(t, "error", got.Type)
	require.Equal(t, "RangeError", got.Name)
	require.Equal(t, "Maximum call stack size exceeded", got.Payload.ErrorMessage)
	require.Equal(t, "s-1", got.Payload.SessionID)
	require.NotNil(t, got.Payload.IsFatal)
	require.False(t, *got.Payload.IsFatal)
	require.JSONEq(t, sdkContext, string(got.Context))
	i := strings.Index(got.Payload.StackTrace, event.TruncatedMarker)
	require.Positive(t, i, "the stack ends with the marker")
	require.Equal(t, stack[:i], got.Payload.StackTrace[:i], "the stack keeps its beginning")
	require.True(t, strings.HasSuffix(got.Payload.StackTrace, event.TruncatedMarker+strconv.Itoa(len(stack)-i)+" bytes]"))
	require.Equal(t, 1.0, metricValue(t, b.reg, "pulseboard_ingest_events_truncated_total"))
}
