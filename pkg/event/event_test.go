package event

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

func sampleEvent() Event {
	return Event{
		ID:         uuid.MustParse(testEventID),
		ProjectID:  testProject,
		Type:       TypeError,
		Name:       "checkout failed",
		Payload:    []byte(`{"code":500,"tags":["a","b"]}`),
		Timestamp:  time.Date(2024, 1, 15, 10, 20, 30, 123456789, time.UTC),
		ReceivedAt: time.Date(2024, 1, 15, 10, 20, 31, 5e6, time.UTC),
	}
}

func TestAppendJSONFields(t *testing.T) {
	t.Parallel()
	withContext := sampleEvent()
	withContext.Context = []byte(`{"ua":"x"}`)
	emptyContext := sampleEvent()
	emptyContext.Context = []byte(`{}`)
	tests := []struct {
		name       string
		ev         Event
		wantFields []string
		want       string
	}{
		{
			"without context", sampleEvent(),
			[]string{"id", "name", "payload", "projectId", "receivedAt", "timestamp", "type"},
			`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8",` +
				`"type":"error","name":"checkout failed","payload":{"code":500,"tags":["a","b"]},` +
				`"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z"}`,
		},
		{
			"with context", withContext,
			[]string{"context", "id", "name", "payload", "projectId", "receivedAt", "timestamp", "type"},
			`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8",` +
				`"type":"error","name":"checkout failed","payload":{"code":500,"tags":["a","b"]},` +
				`"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":{"ua":"x"}}`,
		},
		{
			"with empty context", emptyContext,
			[]string{"context", "id", "name", "payload", "projectId", "receivedAt", "timestamp", "type"},
			`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8",` +
				`"type":"error","name":"checkout failed","payload":{"code":500,"tags":["a","b"]},` +
				`"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":{}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.ev.AppendJSON(nil)
			require.True(t, json.Valid(got), "%s", got)
			require.Equal(t, tt.want, string(got))

			var fields map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(got, &fields))
			keys := make([]string, 0, len(fields))
			for k := range fields {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			require.Equal(t, tt.wantFields, keys)

			// AppendJSON appends.
			prefixed := tt.ev.AppendJSON([]byte("prefix"))
			require.Equal(t, "prefix"+tt.want, string(prefixed))

			// MarshalJSON is the same encoding, also through encoding/json.
			m, err := tt.ev.MarshalJSON()
			require.NoError(t, err)
			require.Equal(t, tt.want, string(m))
			viaJSON, err := json.Marshal(tt.ev)
			require.NoError(t, err)
			require.JSONEq(t, tt.want, string(viaJSON))
		})
	}
}

func TestAppendJSONTimes(t *testing.T) {
	t.Parallel()
	zone := time.FixedZone("UTC+2", 2*3600)
	tests := []struct {
		name string
		in   time.Time
		want string
	}{
		{"UTC milliseconds", time.Date(2024, 1, 15, 10, 20, 30, 123e6, time.UTC), "2024-01-15T10:20:30.123Z"},
		{"whole seconds keep .000", time.Date(2024, 1, 15, 10, 20, 30, 0, time.UTC), "2024-01-15T10:20:30.000Z"},
		{"sub-millisecond digits dropped", time.Date(2024, 1, 15, 10, 20, 30, 999999999, time.UTC), "2024-01-15T10:20:30.999Z"},
		{"other zones converted to UTC", time.Date(2024, 1, 15, 0, 20, 30, 7e6, zone), "2024-01-14T22:20:30.007Z"},
		{"local time converted", time.Date(2024, 1, 15, 10, 20, 30, 0, time.UTC).Local(), "2024-01-15T10:20:30.000Z"},
		{"year 1", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), "0001-01-01T00:00:00.000Z"},
		{"year 9999", time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC), "9999-12-31T23:59:59.999Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev := sampleEvent()
			ev.Timestamp = tt.in
			ev.ReceivedAt = tt.in
			var got struct{ Timestamp, ReceivedAt string }
			require.NoError(t, json.Unmarshal(ev.AppendJSON(nil), &got))
			require.Equal(t, tt.want, got.Timestamp)
			require.Equal(t, tt.want, got.ReceivedAt)
			_, err := time.Parse(TimeLayout, got.Timestamp)
			require.NoError(t, err)
			back, ok := ParseTime(got.Timestamp)
			require.True(t, ok)
			require.True(t, tt.in.Truncate(Precision).Equal(back))
		})
	}
}

func TestAppendUUID(t *testing.T) {
	t.Parallel()
	for _, id := range []uuid.UUID{uuid.Nil, uuid.Max, uuid.MustParse(testEventID), uuid.MustParse("ABCDEF01-2345-6789-ABCD-EF0123456789"), uuid.New()} {
		require.Equal(t, id.String(), string(appendUUID(nil, id)))
	}
}

func TestAppendStringRoundTrip(t *testing.T) {
	t.Parallel()
	var allControl strings.Builder
	for c := range 0x20 {
		allControl.WriteByte(byte(c))
	}
	tests := []struct {
		name string
		in   string
		want string // exact encoding; "" to check only the round trip
	}{
		{"empty", "", `""`},
		{"plain", "checkout", `"checkout"`},
		{"quote", `say "hi"`, `"say \"hi\""`},
		{"backslash", `C:\path\`, `"C:\\path\\"`},
		{"backslash u0000 text", `\u0000`, `"\\u0000"`},
		{"newline, return, tab", "a\nb\rc\td", `"a\nb\rc\td"`},
		{"other controls", "\x00\x01\x08\x0c\x1b\x1f", `"\u0000\u0001\u0008\u000c\u001b\u001f"`},
		{"all control characters", allControl.String(), ""},
		{"forged log line (B31)", "\r\nlevel=error msg=forged", `"\r\nlevel=error msg=forged"`},
		{"script tag verbatim (B31)", "<script>alert(1)</script>", `"<script>alert(1)</script>"`},
		{"ampersand verbatim", "a&b", `"a&b"`},
		{"DEL not escaped", "\x7f", "\"\x7f\""},
		{"non-ASCII verbatim", "é日本😀\uFFFD", "\"é日本😀\uFFFD\""},
		{"line separators verbatim", "\u2028\u2029", "\"\u2028\u2029\""},
		{"mixed", "\"\\\n\x00é\"", `"\"\\\n\u0000é\""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			enc := AppendString(nil, tt.in)
			if tt.want != "" {
				require.Equal(t, tt.want, string(enc))
			}
			require.True(t, json.Valid(enc), "%q", enc)
			require.True(t, utf8.Valid(enc))
			for _, b := range enc {
				require.GreaterOrEqual(t, b, byte(0x20), "raw control byte in %q", enc)
			}
			var back string
			require.NoError(t, json.Unmarshal(enc, &back))
			require.Equal(t, tt.in, back)

			// The same through a whole event.
			ev := sampleEvent()
			ev.Name = tt.in
			var got struct{ Name string }
			full := ev.AppendJSON(nil)
			require.True(t, json.Valid(full))
			require.NoError(t, json.Unmarshal(full, &got))
			require.Equal(t, tt.in, got.Name)

			// And through the byte-slice instantiation used for payload strings and keys.
			require.Equal(t, string(enc), string(appendString(nil, []byte(tt.in))))
		})
	}
}

func TestDefaultLimits(t *testing.T) {
	t.Parallel()
	require.Equal(t, Limits{MaxNameChars: 200, MaxEventBytes: 64 << 10, MaxDepth: 32}, DefaultLimits())
	require.Equal(t, DefaultLimits(), NewDecoder(DefaultLimits()).Limits)
}

// An Encoder gives exactly AppendJSON's bytes over a sequence of events whose projects
// and receive times change, repeat and come back, including times outside years 0-9999
// and a receive time equal to the timestamp.
func TestEncoderMatchesAppendJSON(t *testing.T) {
	t.Parallel()
	projects := []uuid.UUID{testProject, uuid.New(), uuid.Nil}
	base := time.Date(2026, 11, 26, 14, 0, 0, 0, time.UTC)
	received := []time.Time{base, base.Add(time.Millisecond), base.In(time.FixedZone("x", 3600)),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), {}}
	var enc Encoder
	var got, want []byte
	for i := range 200 {
		ev := sampleEvent()
		ev.ID = uuid.New()
		ev.ProjectID = projects[(i/3)%len(projects)]
		ev.ReceivedAt = received[(i/2)%len(received)]
		if i%7 == 0 {
			ev.Timestamp = ev.ReceivedAt
		}
		if i%5 == 0 {
			ev.Context = []byte(`{"i":1}`)
		}
		want = ev.AppendJSON(want[:0])
		got = enc.AppendJSON(got[:0], &ev)
		require.Equal(t, string(want), string(got), "event %d", i)
	}
}
