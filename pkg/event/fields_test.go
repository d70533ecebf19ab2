package event

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// buildBoth decodes one client event body on the tree path (Parse + Build) and, when it
// takes it, on the raw path (SplitObject + BuildRaw), and checks that they agree.
func buildBoth(t *testing.T, body string) (ev Event, rawTook bool, err *Error) {
	t.Helper()
	d := NewDecoder(DefaultLimits())
	v, _, perr := d.Parse([]byte(body))
	require.Nil(t, perr, "Parse(%s)", body)
	ev, err = d.Build(v, "body", testProject, testNow)
	fast := NewDecoder(DefaultLimits())
	if obj, ok := fast.SplitObject([]byte(body)); ok {
		rev, _, _, ok := fast.BuildRaw(obj, testNow)
		if ok {
			require.Nil(t, err, "the raw path took an event Build refuses: %s", body)
			require.Equal(t, ev.Labels, rev.Labels, "raw and tree paths agree on the labels of %s", body)
			rawTook = true
		}
	}
	return ev, rawTook, err
}

func TestLabelsFromTopLevelAndContext(t *testing.T) {
	t.Parallel()
	rn := `{"app":{"appVersion":"2.0.1","environment":"staging"},"device":{"appVersion":"1.9","os":"iOS"},` +
		`"session":{"sessionId":"sess-9","startedAt":"2024-01-01T00:00:00Z"},"user":{"userId":"user-7","email":"a@b"}}`
	tests := []struct {
		name string
		body string
		want Labels
	}{
		{"none", event(`{}`, ``), Labels{}},
		{"top level", event(`{}`, `,"release":"1.2.3","environment":"prod","sessionId":"s1","userId":"u1"`),
			Labels{"1.2.3", "prod", "s1", "u1"}},
		{"null top level is unset", event(`{}`, `,"release":null,"userId":null`), Labels{}},
		{"React Native SDK context", event(`{}`, `,"context":`+rn), Labels{"2.0.1", "staging", "sess-9", "user-7"}},
		{"top level wins over context", event(`{}`, `,"sessionId":"top","release":"9","context":`+rn),
			Labels{"9", "staging", "top", "user-7"}},
		{"flat context keys win over nested", event(`{}`, `,"context":{"sessionId":"flat","session":{"sessionId":"nested"},"release":"r","app":{"appVersion":"a"}}`),
			Labels{"r", "", "flat", ""}},
		{"device appVersion when app has none", event(`{}`, `,"context":{"app":{},"device":{"appVersion":"1.9"}}`),
			Labels{"1.9", "", "", ""}},
		{"wrong types in context are not promoted", event(`{}`, `,"context":{"sessionId":5,"session":{"sessionId":"ok"},"userId":{"x":1},"user":["u"],"app":"x","environment":true}`),
			Labels{"", "", "ok", ""}},
		{"empty or too long in context is not promoted", event(`{}`, `,"context":{"userId":"","user":{"userId":"`+strings.Repeat("x", MaxLabelChars+1)+`"},"release":"`+strings.Repeat("é", MaxLabelChars)+`"}`),
			Labels{strings.Repeat("é", MaxLabelChars), "", "", ""}},
		{"escaped values (tree path)", event(`{}`, `,"userId":"a\"b","context":{"session":{"sessionId":"x\u0041"}}`),
			Labels{"", "", "xA", `a"b`}},
		{"sanitised like names", event(`{}`, `,"environment":"p\u0000d"`), Labels{"", "p\uFFFDd", "", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, _, err := buildBoth(t, tt.body)
			require.Nil(t, err)
			require.Equal(t, tt.want, ev.Labels)
		})
	}
	// The common cases go the raw path (and agree with the tree path, checked above).
	for _, body := range []string{tests[1].body, tests[3].body, tests[4].body, tests[5].body, tests[7].body} {
		_, raw, _ := buildBoth(t, body)
		require.True(t, raw, "raw path: %s", body)
	}
}

func TestLabelErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", MaxLabelChars+1)
	tests := []struct{ extra, msg string }{
		{`,"release":1`, "body/release must be string"},
		{`,"environment":{"a":1}`, "body/environment must be string"},
		{`,"sessionId":["s"]`, "body/sessionId must be string"},
		{`,"userId":true`, "body/userId must be string"},
		{`,"userId":""`, "body/userId must NOT have fewer than 1 characters"},
		{`,"sessionId":"` + long + `"`, "body/sessionId must NOT have more than 200 characters"},
	}
	for _, tt := range tests {
		_, raw, err := buildBoth(t, event(`{}`, tt.extra))
		require.False(t, raw)
		require.NotNil(t, err, tt.extra)
		require.Equal(t, CodeValidationFailed, err.Code)
		require.Equal(t, tt.msg, err.Message)
	}
	// The bound is inclusive.
	ev, raw, err := buildBoth(t, event(`{}`, `,"sessionId":"`+strings.Repeat("é", MaxLabelChars)+`"`))
	require.Nil(t, err)
	require.True(t, raw)
	require.Equal(t, strings.Repeat("é", MaxLabelChars), ev.Labels[LabelSessionID])

	// A Kafka message is held to the same rules, and its labels are never promoted again.
	msg := sampleEvent()
	msg.Context = []byte(`{"sessionId":"ctx"}`)
	enc := string(msg.AppendJSON(nil))
	got, derr := NewDecoder(DefaultLimits()).DecodeMessage([]byte(enc))
	require.NoError(t, derr)
	require.Equal(t, Labels{}, got.Labels, "a message's context is not promoted")
	bad := strings.TrimSuffix(enc, "}") + `,"userId":7}`
	_, derr = NewDecoder(DefaultLimits()).DecodeMessage([]byte(bad))
	require.EqualError(t, derr, CodeValidationFailed+": message/userId must be string")
}

// Every field of the table survives client decode → canonical encoding → message decode
// on both message paths, and the encoding has the table's members in the table's order.
func TestFieldsRoundTrip(t *testing.T) {
	t.Parallel()
	body := `{"eventId":"` + testEventID + `","type":"error","name":"n","payload":{"a":1},"timestamp":"2024-01-15T10:20:30.123Z",` +
		`"context":{"c":"x"},"release":"1.0","environment":"prod","sessionId":"s-1","userId":"u \"1\""}`
	ev, _, err := buildBoth(t, body)
	require.Nil(t, err)
	enc := ev.AppendJSON(nil)
	var enc2 Encoder
	require.Equal(t, string(enc), string(enc2.AppendJSON(nil, &ev)), "Encoder and AppendJSON agree")

	// Every field is set, so every member is present, in table order.
	var order []string
	dec := json.NewDecoder(strings.NewReader(string(enc)))
	_, _ = dec.Token()
	for dec.More() {
		k, err := dec.Token()
		require.NoError(t, err)
		order = append(order, k.(string))
		var skip json.RawMessage
		require.NoError(t, dec.Decode(&skip))
	}
	var want []string
	for i := range Fields {
		want = append(want, Fields[i].Wire)
	}
	require.Equal(t, want, order, "the encoding follows the field table")

	raw, ok := NewDecoder(DefaultLimits()).decodeMessageRaw(enc)
	require.False(t, ok, "an escaped label leaves the message to the parse path")
	parsed, perr := NewDecoder(DefaultLimits()).decodeMessageParsed(enc)
	require.NoError(t, perr)
	ev.Labels[LabelUserID] = "u1"
	enc = ev.AppendJSON(nil)
	raw, ok = NewDecoder(DefaultLimits()).decodeMessageRaw(enc)
	require.True(t, ok)
	for i := range Fields {
		f := &Fields[i]
		require.Equal(t, f.Ptr(&ev), f.Ptr(&raw), "field %s after the raw message path", f.Wire)
	}
	require.Equal(t, `u "1"`, parsed.Labels[LabelUserID])
	require.Equal(t, string(enc), string(raw.AppendJSON(nil)))
}

func TestFieldTable(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"id", "project_id", "type", "name", "payload", "timestamp", "received_at", "context",
		"release", "environment", "session_id", "user_id"}, Columns())
	require.True(t, strings.HasPrefix(SelectList(), `"id", "project_id", "type"`))
	for l := Label(0); l < NumLabels; l++ {
		f := LabelField(l)
		require.Equal(t, KindLabel, f.Kind)
		require.Equal(t, l, f.Label)
		var e Event
		e.Labels[l] = "x"
		require.Equal(t, "x", *f.Ptr(&e).(*string))
	}
}

func TestPeekLabels(t *testing.T) {
	t.Parallel()
	ev := sampleEvent()
	ev.Context = []byte(`{"release":"ctx","a":[1,{"b":"}"}]}`)
	ev.Labels = Labels{"1.0", "", "s\"1", "u1"}
	ls, ok := PeekLabels(ev.AppendJSON(nil))
	require.True(t, ok)
	require.Equal(t, ev.Labels, ls)
	ls, ok = PeekLabels([]byte(`{"release":null,"x":1}`))
	require.True(t, ok)
	require.Equal(t, Labels{}, ls)
	for _, bad := range []string{`[]`, `{"release":1}`, `{"release":"a"`, ``} {
		_, ok := PeekLabels([]byte(bad))
		require.False(t, ok, bad)
	}
}

func TestCheckLabel(t *testing.T) {
	t.Parallel()
	require.Nil(t, CheckLabel("q/release", "1.2.3"))
	require.Nil(t, CheckLabel("q/release", strings.Repeat("é", MaxLabelChars)))
	require.Equal(t, "q/release must NOT have more than 200 characters", CheckLabel("q/release", strings.Repeat("a", 201)).Message)
	require.Equal(t, "q/release must NOT have fewer than 1 characters", CheckLabel("q/release", "").Message)
	require.Equal(t, "q/release must be valid UTF-8 without NUL characters", CheckLabel("q/release", "a\x00").Message)
	require.Equal(t, "q/release must be valid UTF-8 without NUL characters", CheckLabel("q/release", "\xff").Message)
	require.Equal(t, CodeValidationFailed, CheckLabel("q/release", "").Code)
}
