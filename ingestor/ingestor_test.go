package ingestor_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

var isoMillis = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)

// TestIngestSingle is the compat POST /ingest: the old backend's body and answer, and the
// event on Kafka exactly as returned, keyed and partitioned by project id.
func TestIngestSingle(t *testing.T) {
	t.Parallel()
	b := setup(t)

	eventID := uuid.New()
	before := time.Now().UTC().Truncate(time.Millisecond)
	res := b.ingest(t, map[string]any{
		"apiKey": b.project.APIKey, "type": "error", "name": "TypeError: x is undefined",
		"payload":   map[string]any{"message": "boom", "line": 42, "ratio": 1.5, "nested": map[string]any{"list": []any{1, "two", nil, true}}},
		"timestamp": "2026-01-02T05:04:05.678+02:00",
		"context":   map[string]any{"os": "ios", "appVersion": "1.2.3"},
		"eventId":   eventID.String(),
		"sdk":       "react-native", // unknown fields are ignored
	})
	after := time.Now().UTC()

	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	require.Equal(t, "application/json; charset=utf-8", res.header.Get("Content-Type"))
	require.Equal(t, "nosniff", res.header.Get("X-Content-Type-Options"))
	// Browser SDKs post cross-origin with a key, never with cookies (B68).
	require.Equal(t, "*", res.header.Get("Access-Control-Allow-Origin"))
	require.Empty(t, res.header.Get("Access-Control-Allow-Credentials"))

	// The envelope has exactly the compat fields.
	var top map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(res.body, &top))
	require.Len(t, top, 3, "body: %s", res.body)
	require.JSONEq(t, `true`, string(top["success"]))
	require.JSONEq(t, `"Event accepted"`, string(top["message"]))

	data := []byte(top["data"])
	require.Equal(t, []string{"id", "projectId", "type", "name", "payload", "timestamp", "receivedAt", "context"}, objectKeys(t, data),
		"compat field order")
	var ev wireEvent
	require.NoError(t, json.Unmarshal(data, &ev))
	require.Equal(t, eventID, ev.ID, "the client's eventId is honoured")
	require.Equal(t, b.project.ID, ev.ProjectID)
	require.Equal(t, "error", ev.Type)
	require.Equal(t, "TypeError: x is undefined", ev.Name)
	require.JSONEq(t, `{"message":"boom","line":42,"ratio":1.5,"nested":{"list":[1,"two",null,true]}}`, string(ev.Payload))
	require.JSONEq(t, `{"os":"ios","appVersion":"1.2.3"}`, string(ev.Context))
	require.Equal(t, "2026-01-02T03:04:05.678Z", ev.Timestamp, "normalised to UTC with milliseconds")
	require.Regexp(t, isoMillis, ev.ReceivedAt)
	recv, err := time.Parse(event.TimeLayout, ev.ReceivedAt)
	require.NoError(t, err)
	require.False(t, recv.Before(before) || recv.After(after), "receivedAt %s not within the request", recv)

	msgs := b.readTopic(t)
	require.Len(t, msgs, 1)
	m := msgs[0]
	require.Equal(t, b.project.ID.String(), string(m.Key))
	require.Equal(t, string(data), string(m.Value), "the produced value is exactly the returned event")
	requireMurmur2Partition(t, m)

	// Durability is configured, not defaulted (K1): acks from all in-sync replicas.
	require.Equal(t, -1.0, metricValue(t, b.reg, "pulseboard_ingest_writer_required_acks"))
	require.Equal(t, 1.0, metricValue(t, b.reg, "pulseboard_ingest_events_accepted_total"))
}

// TestIngestSingleDefaults: without timestamp, eventId and context, the server fills them in.
func TestIngestSingleDefaults(t *testing.T) {
	t.Parallel()
	b := setup(t)

	res := b.ingest(t, map[string]any{"apiKey": b.project.APIKey, "type": "metric", "name": "latency", "payload": map[string]any{}})
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	require.Equal(t, []string{"id", "projectId", "type", "name", "payload", "timestamp", "receivedAt"}, objectKeys(t, res.env.Data),
		"no context key when none was sent")
	var ev wireEvent
	require.NoError(t, json.Unmarshal(res.env.Data, &ev))
	require.Equal(t, uuid.Version(7), ev.ID.Version(), "server ids are UUIDv7")
	require.Equal(t, ev.ReceivedAt, ev.Timestamp, "an omitted timestamp is the receive time")
	require.JSONEq(t, `{}`, string(ev.Payload))

	// A null timestamp is the same as an omitted one.
	res = b.ingest(t, map[string]any{"apiKey": b.project.APIKey, "type": "event", "name": "x", "payload": map[string]any{}, "timestamp": nil})
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	require.NoError(t, json.Unmarshal(res.env.Data, &ev))
	require.Equal(t, ev.ReceivedAt, ev.Timestamp)

	msgs := b.readTopic(t)
	require.Len(t, msgs, 2)
}

// TestIngestPartitioner proves the Java-compatible murmur2 partitioner: events of several
// projects each land on the partition murmur2 picks for the project id (a chance match of
// kafka-go's default FNV-1a hash for all of them is 12^-6).
func TestIngestPartitioner(t *testing.T) {
	t.Parallel()
	b := setup(t)
	keys := []string{b.project.APIKey}
	for i := range 5 {
		keys = append(keys, b.newProject(t, "p"+string(rune('a'+i))).APIKey)
	}
	for _, k := range keys {
		for range 2 {
			res := b.ingest(t, validEvent(k))
			require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
		}
	}
	msgs := b.readTopic(t)
	require.Len(t, msgs, 2*len(keys))
	projects := map[string]int{}
	for _, m := range msgs {
		requireMurmur2Partition(t, m)
		var ev wireEvent
		require.NoError(t, json.Unmarshal(m.Value, &ev))
		require.Equal(t, ev.ProjectID.String(), string(m.Key))
		projects[string(m.Key)]++
	}
	require.Len(t, projects, len(keys))
}

// TestIngestAcceptedBoundaries: inputs at the limits, and timestamp forms clients send.
func TestIngestAcceptedBoundaries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.project.APIKey
	cases := []struct {
		name  string
		event map[string]any
		check func(t *testing.T, ev wireEvent)
	}{
		{"name of 200 characters (multi-byte)", map[string]any{"name": strings.Repeat("é", 200)}, func(t *testing.T, ev wireEvent) {
			require.Equal(t, strings.Repeat("é", 200), ev.Name)
		}},
		{"payload nested 32 deep", map[string]any{"payload": nested(32)}, func(t *testing.T, ev wireEvent) {
			require.JSONEq(t, string(nested(32)), string(ev.Payload))
		}},
		{"context nested 32 deep", map[string]any{"context": nested(32)}, func(t *testing.T, ev wireEvent) {
			require.JSONEq(t, string(nested(32)), string(ev.Context))
		}},
		{"date only", map[string]any{"timestamp": "2026-05-06"}, func(t *testing.T, ev wireEvent) {
			require.Equal(t, "2026-05-06T00:00:00.000Z", ev.Timestamp)
		}},
		{"no zone is UTC", map[string]any{"timestamp": "2026-05-06T07:08:09.123"}, func(t *testing.T, ev wireEvent) {
			require.Equal(t, "2026-05-06T07:08:09.123Z", ev.Timestamp)
		}},
		{"microseconds are truncated", map[string]any{"timestamp": "2026-05-06T07:08:09.123999Z"}, func(t *testing.T, ev wireEvent) {
			require.Equal(t, "2026-05-06T07:08:09.123Z", ev.Timestamp)
		}},
		{"year 9999", map[string]any{"timestamp": "9999-12-31T23:59:59.999Z"}, func(t *testing.T, ev wireEvent) {
			require.Equal(t, "9999-12-31T23:59:59.999Z", ev.Timestamp)
		}},
		{"forged log line and markup stored verbatim (B31)", map[string]any{"name": "\r\nlevel=error msg=forged <script>alert(1)</script>"}, func(t *testing.T, ev wireEvent) {
			require.Equal(t, "\r\nlevel=error msg=forged <script>alert(1)</script>", ev.Name)
		}},
	}
	for _, c := range cases {
		body := validEvent(key)
		for k, v := range c.event {
			body[k] = v
		}
		res := b.ingest(t, body)
		require.Equal(t, http.StatusAccepted, res.status, "%s: %s", c.name, res.body)
		var ev wireEvent
		require.NoError(t, json.Unmarshal(res.env.Data, &ev))
		c.check(t, ev)
	}
	require.EqualValues(t, len(cases), b.produced(t))
}

// TestIngestSanitises: invalid UTF-8, NUL and lone surrogates are accepted and replaced
// with U+FFFD (docs/api.md), so the produced value is always storable (promise 4, X3/X4).
func TestIngestSanitises(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Raw bytes: an invalid UTF-8 sequence in the name, \u0000 in a payload value and a
	// payload key, a lone high and a lone low surrogate in the context, and a valid pair.
	body := []byte(`{"apiKey":"` + b.project.APIKey + `","type":"event","name":"a` + "\xc3\x28" + `b",` +
		`"payload":{"nul":"x\u0000y","k\u0000":1,"pair":"\ud83d\ude00"},` +
		`"context":{"hi":"\ud800","lo":"z\udc00"}}`)
	require.False(t, utf8.Valid(body))
	res := b.post(t, "/ingest", body, nil)
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)

	msgs := b.readTopic(t)
	require.Len(t, msgs, 1)
	value := msgs[0].Value
	require.Equal(t, string(res.env.Data), string(value))
	require.True(t, utf8.Valid(value), "produced value is valid UTF-8: %q", value)
	require.NotContains(t, string(value), `\u0000`)
	require.NotContains(t, strings.ToLower(string(value)), `\ud8`)
	require.NotContains(t, strings.ToLower(string(value)), `\udc`)

	var ev struct {
		Name    string            `json:"name"`
		Payload map[string]any    `json:"payload"`
		Context map[string]string `json:"context"`
	}
	require.NoError(t, json.Unmarshal(value, &ev))
	require.Equal(t, "a\uFFFD(b", ev.Name)
	require.Equal(t, "x\uFFFDy", ev.Payload["nul"])
	require.Contains(t, ev.Payload, "k\uFFFD")
	require.Equal(t, "😀", ev.Payload["pair"])
	require.Equal(t, map[string]string{"hi": "\uFFFD", "lo": "z\uFFFD"}, ev.Context)

	// The consumer's strict decoder accepts what the ingestor produced.
	_, err := event.NewDecoder(event.DefaultLimits()).DecodeMessage(value)
	require.NoError(t, err)
}

// TestIngestIgnoresBodyProject (B06): the project comes from the API key only.
func TestIngestIgnoresBodyProject(t *testing.T) {
	t.Parallel()
	b := setup(t)
	other := b.newProject(t, "other")
	ev := validEvent(b.project.APIKey)
	ev["projectId"] = other.ID.String()
	ev["project_id"] = other.ID.String()
	res := b.ingest(t, ev)
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	var got wireEvent
	require.NoError(t, json.Unmarshal(res.env.Data, &got))
	require.Equal(t, b.project.ID, got.ProjectID)

	// Same on the batch endpoint, with the key in a header.
	batch := []map[string]any{{"type": "event", "name": "x", "payload": map[string]any{}, "projectId": other.ID.String()}}
	res = b.post(t, "/ingest/batch", mustJSON(t, batch), hdr{"X-API-Key": b.project.APIKey})
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)

	msgs := b.readTopic(t)
	require.Len(t, msgs, 2)
	for _, m := range msgs {
		require.Equal(t, b.project.ID.String(), string(m.Key))
		require.NoError(t, json.Unmarshal(m.Value, &got))
		require.Equal(t, b.project.ID, got.ProjectID)
	}
}

// TestIngestRoutes: unknown routes, wrong methods and CORS preflight.
func TestIngestRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/ingest"}, {http.MethodPut, "/ingest"}, {http.MethodDelete, "/ingest"},
		{http.MethodGet, "/ingest/batch"}, {http.MethodPatch, "/ingest/batch"},
	} {
		res := b.do(t, c.method, c.path, mustJSON(t, validEvent(b.project.APIKey)), nil)
		requireJSONError(t, res, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
		require.Contains(t, res.header.Get("Allow"), "POST", "%s %s", c.method, c.path)
	}
	for _, path := range []string{"/", "/nope", "/ingest/", "/ingest/batch/x", "/events"} {
		res := b.post(t, path, mustJSON(t, validEvent(b.project.APIKey)), nil)
		requireJSONError(t, res, http.StatusNotFound, "NOT_FOUND")
	}
	res := b.do(t, http.MethodOptions, "/ingest/batch", nil, hdr{"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
	require.Equal(t, http.StatusNoContent, res.status)
	require.Equal(t, "*", res.header.Get("Access-Control-Allow-Origin"))
	require.Contains(t, res.header.Get("Access-Control-Allow-Headers"), "X-API-Key")
	require.Zero(t, b.produced(t))
}

// objectKeys returns the top-level keys of a JSON object in order.
func objectKeys(t *testing.T, obj []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(obj))
	tok, err := dec.Token()
	require.NoError(t, err)
	require.Equal(t, json.Delim('{'), tok)
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		require.NoError(t, err)
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		require.NoError(t, dec.Decode(&skip))
	}
	return keys
}

// Issue 17 item 4: an error event of 114 KB (a long stack trace) is not refused: its
// longest string is shortened to fit the 64 KiB event limit, ending with a marker that
// says how much was cut, on both routes; the rest of the event is kept whole.
func TestIngestShortensOversizedStrings(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stack := "TypeError: x is undefined\n" + strings.Repeat("    at render (App.tsx:10:5)\n", 4000) // ~116 KB
	ev := map[string]any{
		"apiKey": b.project.APIKey, "type": "error", "name": "TypeError",
		"payload": map[string]any{"message": "x is undefined", "stack": stack, "fatal": true},
		"context": map[string]any{"screen": "Home"},
	}
	res := b.post(t, "/ingest", mustJSON(t, ev), nil)
	require.Equal(t, http.StatusAccepted, res.status, "body: %.500s", res.body)
	delete(ev, "apiKey")
	res = b.post(t, "/ingest/batch", mustJSON(t, []any{ev}), hdr{"X-API-Key": b.project.APIKey})
	require.Equal(t, http.StatusAccepted, res.status, "body: %.500s", res.body)
	require.Equal(t, 1, decodeBatch(t, res).Accepted)

	msgs := b.readTopic(t)
	require.Len(t, msgs, 2)
	for _, m := range msgs {
		require.LessOrEqual(t, len(m.Value), event.DefaultMaxEventBytes)
		var got struct {
			Payload struct {
				Message, Stack string
				Fatal          bool
			}
			Context map[string]string
		}
		require.NoError(t, json.Unmarshal(m.Value, &got))
		require.Equal(t, "x is undefined", got.Payload.Message)
		require.True(t, got.Payload.Fatal)
		require.Equal(t, map[string]string{"screen": "Home"}, got.Context)
		i := strings.Index(got.Payload.Stack, event.TruncatedMarker)
		require.Positive(t, i, "the stack ends with the marker")
		require.Equal(t, stack[:i], got.Payload.Stack[:i], "the stack keeps its beginning")
		require.True(t, strings.HasSuffix(got.Payload.Stack, " bytes]"))
		require.Contains(t, got.Payload.Stack, event.TruncatedMarker+strconv.Itoa(len(stack)-i)+" bytes]")
	}
	require.Equal(t, 2.0, metricValue(t, b.reg, "pulseboard_ingest_events_truncated_total"))
}
