package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// Issue 17 item 3, acceptance 2 for the analytics routes: the reference React Native
// SDK's (mrarslanark/pulseboard, react-native/src at HEAD) POST /analytics/{crash,
// session,screen-view,api-call} bodies, sent to the all-in-one's ingest origin, are each
// answered 201, stored exactly once, published on the project's Redis channel and read
// back through the api.

// analyticsSDKContext is the SDK's EnrichedContext (context.ts collect()).
const analyticsSDKContext = `{"app":{"appVersion":"3.1.0","buildNumber":"310","environment":"production"},` +
	`"device":{"platform":"ios","os":"iOS","osVersion":"18.1","model":"iPhone16,1","manufacturer":"Apple","brand":"Apple","isTablet":false,` +
	`"appVersion":"3.1.0","buildNumber":"310","bundleId":"com.example.shop","screenWidth":393,"screenHeight":852,"fontScale":1,"isEmulator":false,` +
	`"language":"en-GB","timezone":"Europe/London"},` +
	`"network":{"type":"wifi","isConnected":true,"isWifiEnabled":true,"carrier":"unknown","ipAddress":"192.168.0.12"},` +
	`"session":{"sessionId":"%[1]s","startedAt":"2026-03-01T12:00:00.000Z"},` +
	`"user":{"userId":"u-7"}}`

// sentAnalytics is one SDK call sent: the event it must become.
type sentAnalytics struct {
	path, body string
	typ, name  string
	sessionID  string // unique per call: identifies the stored row
}

// analyticsSDKCalls returns the SDK's six kinds of call (trackCrash, startSession,
// endSession, trackScreen with and without loadTime, trackApiCall) for round r, each
// with its own sessionId so that every stored row can be told apart.
func analyticsSDKCalls(key string, r int) []sentAnalytics {
	sid := func(i int) string { return fmt.Sprintf("r%d-call%d-%d", r, i, time.Now().UnixNano()) }
	ctx := func(s string) string { return fmt.Sprintf(analyticsSDKContext, s) }
	var out []sentAnalytics
	add := func(path, typ, name, fields string) {
		s := sid(len(out))
		body := `{"apiKey":"` + key + `",` + strings.ReplaceAll(fields, "SID", s) + `,"context":` + ctx(s) + `}`
		out = append(out, sentAnalytics{path: path, body: body, typ: typ, name: name, sessionID: s})
	}
	add("/analytics/crash", "error", "TypeError", `"errorName":"TypeError","errorMessage":"undefined is not a function",`+
		`"stackTrace":"TypeError: undefined is not a function\n    at onPress (Cart.tsx:7:3)","isFatal":false,"sessionId":"SID"`)
	add("/analytics/session", "event", "session_start", `"sessionId":"SID","startedAt":"2026-03-01T12:00:00.000Z"`)
	add("/analytics/session", "event", "session_end", `"sessionId":"SID","startedAt":"2026-03-01T12:00:00.000Z","endedAt":"2026-03-01T12:30:00.000Z","duration":1800000`)
	add("/analytics/screen-view", "event", "screen_view", `"screenName":"Cart","loadTime":95,"sessionId":"SID"`)
	add("/analytics/screen-view", "event", "screen_view", `"screenName":"Home","sessionId":"SID"`)
	add("/analytics/api-call", "metric", "api_call", `"endpoint":"https://api.example.com/v1/orders","httpMethod":"GET","statusCode":200,"duration":87.5,"payloadSize":512,"sessionId":"SID"`)
	return out
}

// analyticsAnswer is an answer to one analytics request.
type analyticsAnswer struct {
	path   string
	status int
	header http.Header
	body   []byte
}

// postAnalytics sends body to origin+path as the SDK does (fetch: Content-Type JSON, no
// other header).
func postAnalytics(t *testing.T, origin, path, body string) analyticsAnswer {
	t.Helper()
	resp, err := http.Post(origin+path, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return analyticsAnswer{path: path, status: resp.StatusCode, header: resp.Header, body: raw}
}

// postAnalyticsSDK sends calls to origin and requires the old backend's answer: 201,
// {"success":true}, and for a crash the event's id as crashGroupId.
func postAnalyticsSDK(t *testing.T, origin string, calls []sentAnalytics) []analyticsAnswer {
	t.Helper()
	var out []analyticsAnswer
	for _, c := range calls {
		a := postAnalytics(t, origin, c.path, c.body)
		require.Equal(t, http.StatusCreated, a.status, "%s %s: %.300s", c.path, c.name, a.body)
		if c.path == "/analytics/crash" {
			require.Regexp(t, `^\{"success":true,"data":\{"crashGroupId":"[0-9a-f-]{36}"\}\}$`, string(a.body))
		} else {
			require.Equal(t, `{"success":true}`, string(a.body))
		}
		out = append(out, a)
	}
	return out
}

// requireAnswersMatchOpenAPI validates answers against the api's /openapi.json, at the
// ingest server address the document gives for the analytics routes.
func requireAnswersMatchOpenAPI(t *testing.T, in *instance, answers []analyticsAnswer) {
	t.Helper()
	code, doc := get(t, in.api+"/openapi.json")
	require.Equal(t, http.StatusOK, code)
	var paths struct {
		Paths map[string]struct {
			Servers []struct{ URL string }
		}
	}
	require.NoError(t, json.Unmarshal([]byte(doc), &paths))
	item, ok := paths.Paths["/analytics/{kind}"]
	require.True(t, ok, "openapi.json describes the analytics routes")
	require.NotEmpty(t, item.Servers)
	d, err := libopenapi.NewDocument([]byte(doc))
	require.NoError(t, err)
	v, errs := validator.NewValidator(d)
	require.Empty(t, errs)
	for _, a := range answers {
		u, _ := url.Parse(item.Servers[0].URL + a.path)
		req := &http.Request{Method: http.MethodPost, URL: u, Header: http.Header{}}
		resp := &http.Response{StatusCode: a.status, Header: a.header, Request: req, Body: io.NopCloser(bytes.NewReader(a.body))}
		ok, verrs := v.ValidateHttpResponse(req, resp)
		for _, e := range verrs {
			t.Errorf("%s %d does not match openapi.json: %s\nbody: %.300s", a.path, a.status, e.Error(), a.body)
		}
		require.True(t, ok, "%s %d", a.path, a.status)
	}
}

func TestAllInOneAnalyticsRoutesStoreEachEventOnce(t *testing.T) {
	t.Parallel()
	in := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	sub := in.redis.Subscribe(ctx, "project:"+in.project+":events")
	defer sub.Close()
	_, err := sub.Receive(ctx) // subscribed before anything is sent
	require.NoError(t, err)

	var calls []sentAnalytics
	for r := range 3 {
		calls = append(calls, analyticsSDKCalls(in.apiKey, r)...)
	}
	// A fatal crash with a 200 KB stack: stored, its stack cut with the marker (item 4).
	bigSID := fmt.Sprintf("big-%d", time.Now().UnixNano())
	bigStack := "RangeError: Maximum call stack size exceeded\n" + strings.Repeat("    at walk (tree.ts:41:9)\n", 7500)
	require.Greater(t, len(bigStack), 200_000)
	stackJSON, _ := json.Marshal(bigStack)
	calls = append(calls, sentAnalytics{
		path: "/analytics/crash", typ: "error", name: "RangeError", sessionID: bigSID,
		body: `{"apiKey":"` + in.apiKey + `","errorName":"RangeError","errorMessage":"Maximum call stack size exceeded","stackTrace":` +
			string(stackJSON) + `,"isFatal":true,"sessionId":"` + bigSID + `","context":` + fmt.Sprintf(analyticsSDKContext, bigSID) + `}`,
	})
	// Rounds 0 and 1 to the ingest origin; round 2 and the big crash to the api's origin,
	// which forwards them (one public origin, item 2): both store each call once.
	viaIngest := 2 * len(calls) / 3
	answers := postAnalyticsSDK(t, in.ingest, calls[:viaIngest])
	answers = append(answers, postAnalyticsSDK(t, in.api, calls[viaIngest:])...)
	// The usual error answers, on the same routes.
	answers = append(answers,
		postAnalytics(t, in.ingest, "/analytics/api-call", `{"apiKey":"`+in.apiKey+`","endpoint":"/a","httpMethod":"GET","duration":5}`),
		postAnalytics(t, in.ingest, "/analytics/session", `{"apiKey":"pb_live_notAKeyOfAnyProject0000000000","sessionId":"s","startedAt":"2026-03-01T12:00:00.000Z"}`),
	)
	require.Equal(t, http.StatusBadRequest, answers[len(answers)-2].status)
	require.Contains(t, string(answers[len(answers)-2].body), `"code":"VALIDATION_FAILED"`)
	require.Contains(t, string(answers[len(answers)-2].body), "required property 'statusCode'")
	require.Equal(t, http.StatusUnauthorized, answers[len(answers)-1].status)
	require.Contains(t, string(answers[len(answers)-1].body), `"code":"INVALID_API_KEY"`)
	requireAnswersMatchOpenAPI(t, in, answers)

	// Every call is stored exactly once: one row per sessionId, and no other row.
	require.Eventually(t, func() bool {
		var n int
		return in.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE project_id = $1`, in.project).Scan(&n) == nil && n >= len(calls)
	}, 30*time.Second, 50*time.Millisecond, "not every analytics event was stored")
	// The consumer stores in offset order per partition (one partition per project): a
	// marker stored after them means nothing else of theirs is still coming.
	marker := `{"apiKey":"` + in.apiKey + `","type":"event","name":"analytics-marker","payload":{}}`
	mresp, err := http.Post(in.ingest+"/ingest", "application/json", strings.NewReader(marker))
	require.NoError(t, err)
	mresp.Body.Close()
	require.Equal(t, http.StatusAccepted, mresp.StatusCode)
	require.Eventually(t, func() bool {
		var n int
		return in.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE name = 'analytics-marker'`).Scan(&n) == nil && n == 1
	}, 30*time.Second, 50*time.Millisecond)

	var total, distinct int
	require.NoError(t, in.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM events WHERE project_id = $1 AND name <> 'analytics-marker'`,
		in.project).Scan(&total, &distinct))
	require.Equal(t, len(calls), total, "one row per SDK call")
	require.Equal(t, len(calls), distinct)
	ids := map[string]bool{}
	for _, c := range calls {
		var id, typ, name, sessionInContext string
		var payload []byte
		err := in.pool.QueryRow(ctx, `SELECT id::text, type, name, payload::text, context->'session'->>'sessionId' FROM events
			WHERE project_id = $1 AND (payload->>'sessionId' = $2)`, in.project, c.sessionID).Scan(&id, &typ, &name, &payload, &sessionInContext)
		require.NoError(t, err, "%s %s: not stored exactly once", c.path, c.name)
		require.Equal(t, c.typ, typ, c.name)
		require.Equal(t, c.name, name)
		require.Equal(t, c.sessionID, sessionInContext, "the SDK's context is stored")
		require.NotContains(t, string(payload), in.apiKey, "the API key is never stored")
		ids[id] = true
		if c.sessionID == bigSID {
			var p struct{ StackTrace string }
			require.NoError(t, json.Unmarshal(payload, &p))
			i := strings.Index(p.StackTrace, event.TruncatedMarker)
			require.Positive(t, i, "the stored stack ends with the marker")
			require.Equal(t, bigStack[:i], p.StackTrace[:i])
			require.True(t, strings.HasSuffix(p.StackTrace, fmt.Sprintf("%s%d bytes]", event.TruncatedMarker, len(bigStack)-i)))
		}
	}
	require.Len(t, ids, len(calls))

	// Streamed like any event: each one published once on the project's channel.
	published := map[string]int{}
	for len(published) < len(calls)+1 {
		msg, err := sub.ReceiveMessage(ctx)
		require.NoError(t, err, "published %d of %d", len(published), len(calls)+1)
		var ev struct{ ID, Name string }
		require.NoError(t, json.Unmarshal([]byte(msg.Payload), &ev))
		published[ev.ID]++
		require.Equal(t, 1, published[ev.ID], "event %s published twice", ev.ID)
		if ev.Name != "analytics-marker" {
			require.True(t, ids[ev.ID], "published %s, which is not a stored analytics event", ev.ID)
		}
	}

	// And read back through the api like any event.
	resp, err := http.Get(in.api + "/events?limit=100&apiKey=" + url.QueryEscape(in.apiKey))
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%.300s", raw)
	var page struct {
		Data []struct {
			ID, Type, Name string
			Context        map[string]json.RawMessage
		}
	}
	require.NoError(t, json.Unmarshal(raw, &page))
	read := 0
	for _, ev := range page.Data {
		if ids[ev.ID] {
			read++
			require.Contains(t, ev.Context, "device", "%s: context read back", ev.Name)
		}
	}
	require.Equal(t, len(calls), read)
}
