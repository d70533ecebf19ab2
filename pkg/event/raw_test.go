package event

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fastjson"
)

// rawSeeds are bodies for FuzzRawPath and the unit tests: canonical ones the raw path must
// take, and near misses it must leave to Parse + Build.
var rawSeeds = []string{
	`[{"type":"event","name":"a","payload":{}}]`,
	`[{"eventId":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","type":"error","name":"load.3","payload":{"worker":3,"seq":-12.5e3,"ok":true,"n":null,"f":false,"data":"xxé"},"timestamp":"2024-01-15T10:20:30.5+02:00","context":{"ua":"x","a":[1,[2,{}]]}}]`,
	`[{"type":"event","name":"a","payload":{},"context":null,"timestamp":null,"eventId":null}]`,
	`[{"type":"event","name":"a","payload":{},"type":"error","name":"b"}]`,
	`[{"apiKey":"pb_live_a","type":"event","name":"a","payload":{},"apiKey":"pb_live_b"}]`,
	`[{"apiKey":7,"type":"event","name":"a","payload":{},"apiKey":"pb_live_b"}]`,
	`[{"type":"event","name":"a","payload":{"a":1e1001,"b":1e1000}}]`,
	`[{"type":"event","name":"a","payload":{"a":"\n"}}]`,
	`[{"type":"event","name":"a","payload":{"a":"\u0041"}}]`,
	`[{"typ\u0065":"event","name":"a","payload":{}}]`,
	`[{"type":"event","name":"a","payload":{"a": 1}}]`,
	`[ {"type":"event","name":"a","payload":{}} , {"type":"event", "name":"b","payload":{}} ]`,
	`[{"type":"event","name":"","payload":{}},{"type":"other","name":"a","payload":{}},{"type":"event","name":"a","payload":[]}]`,
	`[{"type":"event","name":"a","payload":{},"timestamp":"yesterday"},{"type":"event","name":"a","payload":{},"eventId":"nope"},{"type":"event","name":"a","payload":{},"eventId":5}]`,
	`[{"type":"event","name":"a","payload":{},"context":[]},{"type":"event","name":"a","payload":{},"other":{"x":[" ","\""]}}]`,
	`[1,"x",null,[],{}]`,
	`[]`,
	`{"type":"event","name":"a","payload":{"x":{"y":[1,2,3]}},"apiKey":"k"}`,
	`{"events":[{"type":"event","name":"a","payload":{}}]}`,
	`[{"type":"event","name":"a","payload":{"a":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}}]`,
	`[{"type":"event","name":"a","payload":{"a":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}}]`,
	`[{"type":"event","name":"a","payload":{"a":` + strings.Repeat("[", 400) + strings.Repeat("]", 400) + `}}]`,
	"[{\"type\":\"event\",\"name\":\"\xff\",\"payload\":{}}]",
	`[{"type":"event","name":"` + strings.Repeat("é", 200) + `","payload":{}}]`,
	`[{"type":"event","name":"` + strings.Repeat("é", 201) + `","payload":{}}]`,
	`[{"type":"event","name":"a","payload":{"a":1e308,"b":[-1.5e-300,0e-20,12.5e1]},"context":{"c":1e20}}]`,
	`[{"type":"event","name":"a","payload":{"a":1e-400}}]`,
	`[{"type":"event","name":"a","payload":{"a":[{"b":1,"c":2,"b":3}]}}]`,
	`[{"apiKey":7,"type":"event","name":"a","payload":{}}]`,
	// Labels (fields.go): top level, promoted from the context, wrong types and lengths.
	`[{"type":"event","name":"a","payload":{},"release":"1.2.3","environment":"prod","sessionId":"s1","userId":"u1"}]`,
	`[{"type":"event","name":"a","payload":{},"release":null,"context":{"app":{"appVersion":"2.0","environment":"staging"},"device":{"appVersion":"1.9","os":"iOS"},"session":{"sessionId":"s-9","startedAt":"x"},"user":{"userId":"u-7","email":"e"}}}]`,
	`[{"type":"event","name":"a","payload":{},"sessionId":"top","context":{"sessionId":"flat","session":{"sessionId":"nested"},"release":5,"app":{"appVersion":""},"device":{"appVersion":"d"},"user":[{"userId":"x"}],"environment":{"a":"b"}}}]`,
	`[{"type":"event","name":"a","payload":{},"release":7},{"type":"event","name":"a","payload":{},"userId":""},{"type":"event","name":"a","payload":{},"environment":"` + strings.Repeat("é", 201) + `"},{"type":"event","name":"a","payload":{},"environment":"` + strings.Repeat("é", 200) + `"}]`,
	`[{"type":"event","name":"a","payload":{},"context":{"userId":"` + strings.Repeat("x", 201) + `","user":{"userId":"ok"},"sessionId":"a\"b"}}]`,
	`[{"type":"event","name":"a","payload":{},"timestamp":"Tue, 01 Dec 2026 10:00:00 GMT"},{"type":"event","name":"b","payload":{},"timestamp":1796119200123},{"type":"event","name":"c","payload":{},"timestamp":-0},{"type":"event","name":"d","payload":{},"timestamp":17e11}]`,
}

func FuzzRawPath(f *testing.F) {
	for _, s := range rawSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		t.Parallel()
		checkRawPath(t, body)
	})
}

// checkRawPath compares the raw path with Parse + Build on body: whatever the raw path
// takes must come out exactly as Build would give it.
func checkRawPath(t *testing.T, body []byte) (taken, declined int) {
	t.Helper()
	now := time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC)
	slow, fast := NewDecoder(DefaultLimits()), NewDecoder(DefaultLimits())
	if obj, ok := fast.SplitObject(body); ok {
		v, _, perr := slow.Parse(body)
		require.Nil(t, perr, "SplitObject took a body Parse refuses")
		require.Equal(t, fastjson.TypeObject, v.Type())
		if compareRaw(t, slow, fast, v, obj, now) {
			taken++
		} else {
			declined++
		}
	}
	elems, ok := fast.SplitBatch(body)
	if !ok {
		return taken, declined
	}
	v, _, perr := slow.Parse(body)
	require.Nil(t, perr, "SplitBatch took a body Parse refuses")
	arr, err := v.Array()
	require.NoError(t, err, "SplitBatch took a body that is not an array")
	require.Len(t, elems, len(arr))
	for i, el := range elems {
		// Parse's tree stays valid while the other decoder works.
		if compareRaw(t, slow, fast, arr[i], el, now) {
			taken++
		} else {
			declined++
		}
	}
	return taken, declined
}

// compareRaw runs BuildRaw on elem and Build on v (the same event) and reports whether
// the raw path took it; if it did, both must agree.
func compareRaw(t *testing.T, slow, fast *Decoder, v *fastjson.Value, elem []byte, now time.Time) bool {
	t.Helper()
	ev, key, hasKey, ok := fast.BuildRaw(elem, now)
	if !ok {
		pv, perr := fast.ParseElement(elem)
		require.Nil(t, perr)
		require.Equal(t, v.String(), pv.String(), "ParseElement parses the element as Parse did")
		return false
	}
	growth := fast.NumberGrowth()
	want, werr := slow.Build(v, "body", uuid.Nil, now)
	require.Nil(t, werr, "BuildRaw took an event Build refuses: %s", elem)
	require.Equal(t, slow.NumberGrowth(), growth, "NumberGrowth")
	wantKey, wantHas := APIKey(v)
	require.Equal(t, wantHas, hasKey, "apiKey presence")
	require.Equal(t, wantKey, string(key), "apiKey")
	require.Equal(t, want.Type, ev.Type)
	require.Equal(t, want.Name, ev.Name)
	require.Equal(t, string(want.Payload), string(ev.Payload))
	require.Equal(t, want.Context == nil, ev.Context == nil, "context presence")
	require.Equal(t, string(want.Context), string(ev.Context))
	require.True(t, want.Timestamp.Equal(ev.Timestamp), "timestamp %v, want %v", ev.Timestamp, want.Timestamp)
	require.Equal(t, want.Timestamp.Location().String(), ev.Timestamp.Location().String())
	require.Equal(t, want.ReceivedAt, ev.ReceivedAt)
	require.Equal(t, want.Labels, ev.Labels, "labels")
	// A client's eventId is kept; without one, each path makes a new UUIDv7.
	var id *fastjson.Value
	obj, _ := v.Object()
	obj.Visit(func(k []byte, f *fastjson.Value) {
		if string(k) == "eventId" {
			id = f
		}
	})
	if id != nil && id.Type() != fastjson.TypeNull {
		require.Equal(t, want.ID, ev.ID)
	} else {
		require.Equal(t, uuid.Version(7), ev.ID.Version())
	}
	return true
}

func TestRawPathTakesCanonicalEvents(t *testing.T) {
	t.Parallel()
	taken, declined := checkRawPath(t, benchBatch)
	require.Equal(t, 100, taken, "a batch as pkg/client sends it goes the raw path")
	require.Zero(t, declined)

	taken, declined = checkRawPath(t, []byte(rawSeeds[1]))
	require.Equal(t, 1, taken)
	require.Zero(t, declined)
}

func TestRawPathDeclines(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, body      string
		taken, declined int
		split           bool
	}{
		{"nulls", rawSeeds[2], 1, 0, true},
		{"duplicate keys: Parse refuses them", rawSeeds[3], 0, 0, false},
		{"duplicate apiKey: Parse refuses it", rawSeeds[4], 0, 0, false},
		{"duplicate apiKey of another type: Parse refuses it", rawSeeds[5], 0, 0, false},
		{"number beyond a double", rawSeeds[6], 0, 1, true},
		{"numbers that grow once stored", rawSeeds[25], 1, 0, true},
		{"number that reads as 0", rawSeeds[26], 0, 1, true},
		{"duplicate key deep in the payload", rawSeeds[27], 0, 0, false},
		{"a non-string apiKey is none", rawSeeds[28], 1, 0, true},
		{"escape in the payload", rawSeeds[7], 0, 1, true},
		{"unicode escape", rawSeeds[8], 0, 1, true},
		{"escaped key", rawSeeds[9], 0, 1, true},
		{"space in the payload", rawSeeds[10], 0, 1, true},
		{"spaces between events and fields", rawSeeds[11], 1, 1, true},
		{"invalid fields", rawSeeds[12], 0, 3, true},
		{"invalid timestamp and ids", rawSeeds[13], 0, 3, true},
		{"context not an object; escapes in an ignored field", rawSeeds[14], 1, 1, true},
		{"not objects", rawSeeds[15], 0, 5, true},
		{"empty batch", rawSeeds[16], 0, 0, true},
		{"single object", rawSeeds[17], 1, 0, false},
		{"events object: Parse", rawSeeds[18], 0, 1, false},
		{"nesting beyond MaxDepth", rawSeeds[19], 0, 1, true},
		{"nesting at MaxDepth", rawSeeds[20], 1, 0, true},
		{"nesting beyond fastjson: Parse", rawSeeds[21], 0, 0, false},
		{"invalid UTF-8: Parse", rawSeeds[22], 0, 0, false},
		{"200 characters", rawSeeds[23], 1, 0, true},
		{"201 characters", rawSeeds[24], 0, 1, true},
		// HTTP dates and epoch milliseconds are taken; an exponent is left to Build.
		{"timestamp forms", rawSeeds[len(rawSeeds)-1], 3, 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, split := NewDecoder(DefaultLimits()).SplitBatch([]byte(c.body))
			require.Equal(t, c.split, split, "SplitBatch")
			taken, declined := checkRawPath(t, []byte(c.body))
			require.Equal(t, c.taken, taken, "taken")
			require.Equal(t, c.declined, declined, "declined")
		})
	}
}

// FuzzDecodeMessageRaw checks the consumer's raw path against Parse: whatever
// decodeMessageRaw takes, decodeMessageParsed must decode to the same event. Canonical
// messages (what the ingestor writes) must be taken.
func FuzzDecodeMessageRaw(f *testing.F) {
	ev := sampleEvent()
	f.Add(ev.AppendJSON(nil))
	ev.Context = []byte(`{"ua":"x","n":[1,2.5,-3e2,true,null,{"d":{}}]}`)
	ev.Name = "ünïcode ✓"
	f.Add(ev.AppendJSON(nil))
	ev.Timestamp = ev.ReceivedAt
	f.Add(ev.AppendJSON(nil))
	ev.Labels = Labels{"1.2.3", "prod", "s-1", "u\"1"}
	f.Add(ev.AppendJSON(nil))
	for _, s := range []string{
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{"a":1},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","release":1,"userId":null}`,
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{"a":1},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":{"sessionId":"ctx"},"environment":""}`,
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{"a":1},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":null}`,
		` {"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b", "projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{"a":1},"timestamp":null,"receivedAt":"x"} `,
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","id":"00000000-0000-0000-0000-000000000000","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"metric","name":"a\"b","payload":{"a":1e400},"timestamp":"2024-01-15T10:20:30.123+02:00","receivedAt":"2024-01-15T10:20:31.005Z"}`,
		`{}`, `[]`, `{"id":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		t.Parallel()
		checkDecodeMessageRaw(t, msg)
	})
}

// checkDecodeMessageRaw reports whether the raw path took msg; if it did, the parse path
// must agree field by field.
func checkDecodeMessageRaw(t *testing.T, msg []byte) bool {
	t.Helper()
	fast, slow := NewDecoder(DefaultLimits()), NewDecoder(DefaultLimits())
	got, ok := fast.decodeMessageRaw(msg)
	if !ok {
		return false
	}
	want, err := slow.decodeMessageParsed(msg)
	require.NoError(t, err, "the raw path took a message Parse refuses: %s", msg)
	require.Equal(t, want.ID, got.ID)
	require.Equal(t, want.ProjectID, got.ProjectID)
	require.Equal(t, want.Type, got.Type)
	require.Equal(t, want.Name, got.Name)
	require.Equal(t, string(want.Payload), string(got.Payload))
	require.Equal(t, want.Context == nil, got.Context == nil, "context presence")
	require.Equal(t, string(want.Context), string(got.Context))
	require.True(t, want.Timestamp.Equal(got.Timestamp), "timestamp %v vs %v", want.Timestamp, got.Timestamp)
	require.True(t, want.ReceivedAt.Equal(got.ReceivedAt), "receivedAt %v vs %v", want.ReceivedAt, got.ReceivedAt)
	require.Equal(t, want.Timestamp.Location(), got.Timestamp.Location())
	require.Equal(t, want.ReceivedAt.Location(), got.ReceivedAt.Location())
	require.Equal(t, want.Labels, got.Labels, "labels")
	return true
}

// Everything AppendJSON writes goes through the raw path, and a message that is valid but
// not canonical (spaces, escapes) goes through Parse with the same result.
func TestDecodeMessageRawTakesCanonicalMessages(t *testing.T) {
	t.Parallel()
	ev := sampleEvent()
	ev.Context = []byte(`{"ua":"x"}`)
	canonical := ev.AppendJSON(nil)
	require.True(t, checkDecodeMessageRaw(t, canonical), "a canonical message takes the raw path")
	got, err := NewDecoder(DefaultLimits()).DecodeMessage(canonical)
	require.NoError(t, err)
	require.Equal(t, string(canonical), string(got.AppendJSON(nil)), "decoding and encoding again gives the same bytes")

	spaced := strings.Replace(string(canonical), `"type":`, `"type": `, 1)
	require.False(t, checkDecodeMessageRaw(t, []byte(spaced)), "whitespace declines")
	viaParse, err := NewDecoder(DefaultLimits()).DecodeMessage([]byte(spaced))
	require.NoError(t, err)
	require.Equal(t, string(canonical), string(viaParse.AppendJSON(nil)))
}
