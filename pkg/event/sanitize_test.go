package event

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestSanitize(t *testing.T) {
	t.Parallel()
	const fffd = "\uFFFD" // the raw replacement character (3 bytes)
	tests := []struct {
		name    string
		in      string
		want    string
		changed bool
	}{
		{"empty", ``, ``, false},
		{"plain object", `{"a":"b","c":[1,2,{"d":null}]}`, `{"a":"b","c":[1,2,{"d":null}]}`, false},
		{"valid multibyte kept", `{"a":"é日本😀"}`, `{"a":"é日本😀"}`, false},
		{"raw U+FFFD kept, not reported", `{"a":"` + fffd + `"}`, `{"a":"` + fffd + `"}`, false},
		{"ordinary escapes kept", `{"a":"\" \\ \/ \b \f \n \r \t \u0041 \u00e9 \uFFFF"}`, `{"a":"\" \\ \/ \b \f \n \r \t \u0041 \u00e9 \uFFFF"}`, false},

		// Raw invalid UTF-8 inside strings (B21, X4).
		{"raw 0xC3 0x28", "{\"a\":\"\xC3\x28\"}", `{"a":"` + fffd + `("}`, true},
		{"raw 0xFF", "{\"a\":\"x\xFFy\"}", `{"a":"x` + fffd + `y"}`, true},
		{"truncated sequence at end of string", "{\"a\":\"\xE6\x97\"}", `{"a":"` + fffd + fffd + `"}`, true},
		{"overlong NUL 0xC0 0x80", "{\"a\":\"\xC0\x80\"}", `{"a":"` + fffd + fffd + `"}`, true},
		{"UTF-8 encoded surrogate", "{\"a\":\"\xED\xA0\x80\"}", `{"a":"` + fffd + fffd + fffd + `"}`, true},
		{"beyond U+10FFFF", "{\"a\":\"\xF4\x90\x80\x80\"}", `{"a":"` + fffd + fffd + fffd + fffd + `"}`, true},
		{"raw invalid UTF-8 in a key", "{\"k\xFF\":1}", `{"k` + fffd + `":1}`, true},

		// NUL escapes (X3).
		{"\\u0000", `{"a":"x\u0000y"}`, `{"a":"x\ufffdy"}`, true},
		{"\\u0000 in a key", `{"\u0000":1}`, `{"\ufffd":1}`, true},
		{"\\u0000 in a nested array", `{"a":[{"b":["\u0000"]}]}`, `{"a":[{"b":["\ufffd"]}]}`, true},
		{"\\u0000 after an escaped quote", `{"a":"\"\u0000"}`, `{"a":"\"\ufffd"}`, true},
		{"escaped backslash then u0000 is literal text", `{"a":"\\u0000"}`, `{"a":"\\u0000"}`, false},
		{"two escaped backslashes then u0000", `{"a":"\\\\u0000"}`, `{"a":"\\\\u0000"}`, false},
		{"escaped backslash then a real \\u0000", `{"a":"\\\u0000"}`, `{"a":"\\\ufffd"}`, true},
		{"u0000 outside strings is not touched", `{"a":1}\u0000`, `{"a":1}\u0000`, false},

		// Surrogate escapes.
		{"lone high surrogate", `{"a":"\ud800"}`, `{"a":"\ufffd"}`, true},
		{"lone high surrogate upper case", `{"a":"x\uD83Dy"}`, `{"a":"x\ufffdy"}`, true},
		{"lone low surrogate", `{"a":"\udc00"}`, `{"a":"\ufffd"}`, true},
		{"lone low surrogate in a key", `{"\uDFFF":1}`, `{"\ufffd":1}`, true},
		{"valid pair kept", `{"a":"\ud83d\ude00"}`, `{"a":"\ud83d\ude00"}`, false},
		{"valid pair upper case kept", `{"a":"\uD83D\uDE00"}`, `{"a":"\uD83D\uDE00"}`, false},
		{"reversed pair", `{"a":"\ude00\ud83d"}`, `{"a":"\ufffd\ufffd"}`, true},
		{"high high low", `{"a":"\ud800\ud800\udc00"}`, `{"a":"\ufffd\ud800\udc00"}`, true},
		{"high then non-surrogate escape", `{"a":"\ud800\u0041"}`, `{"a":"\ufffd\u0041"}`, true},
		{"high then text", `{"a":"\ud800udc00"}`, `{"a":"\ufffdudc00"}`, true},
		{"high then escaped backslash", `{"a":"\ud800\\udc00"}`, `{"a":"\ufffd\\udc00"}`, true},
		{"high at end of input", `"\ud800`, `"\ufffd`, true},

		// Malformed input is copied (json.Valid rejects it afterwards).
		{"lone backslash at end", `"\`, `"\`, false},
		{"short \\u escape", `"\u00`, `"\u00`, false},
		{"non-hex \\u escape", `"\u00zz"`, `"\u00zz"`, false},
		{"raw bytes outside strings untouched", "{\"a\":1}\xFF", "{\"a\":1}\xFF", false},
		{"backslash before a valid non-ASCII character", "\"\\\xC3\xA9\"", "\"\\\xC3\xA9\"", false},
		{"backslash before invalid UTF-8", "\"\\\xFF\"", "\"\\" + fffd + "\"", true},
		{"backslash before a truncated sequence", "\"\\\xE8", "\"\\" + fffd, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, changed := Sanitize(nil, []byte(tt.in))
			require.Equal(t, tt.want, string(got))
			require.Equal(t, tt.changed, changed)

			// dst is appended to, not overwritten.
			prefixed, _ := Sanitize([]byte("prefix"), []byte(tt.in))
			require.Equal(t, "prefix"+tt.want, string(prefixed))

			// Idempotent.
			again, changedAgain := Sanitize(nil, got)
			require.Equal(t, string(got), string(again))
			require.False(t, changedAgain)

			if json.Valid([]byte(tt.in)) {
				require.True(t, json.Valid(got), "sanitised valid JSON must stay valid: %q", got)
			}
		})
	}
}

func TestSanitizeOutputIsValidUTF8(t *testing.T) {
	t.Parallel()
	// Every byte value inside a string.
	for b := 0x80; b <= 0xFF; b++ {
		in := []byte{'"', 'a', byte(b), 'z', '"'}
		out, changed := Sanitize(nil, in)
		require.True(t, utf8.Valid(out), "byte %#x: %q", b, out)
		require.True(t, changed, "byte %#x", b)
	}
}

// TestSanitizeThroughBuild checks the documented ingest behaviour (docs/api.md): invalid UTF-8,
// NUL characters and unpaired surrogates are replaced with U+FFFD and the event is accepted.
func TestSanitizeThroughBuild(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		body        string
		wantName    string
		wantPayload string
	}{
		{"raw invalid UTF-8 in name", "{\"type\":\"event\",\"name\":\"a\xC3\x28\",\"payload\":{}}", "a\uFFFD(", `{}`},
		{"NUL in name", `{"type":"event","name":"a\u0000b","payload":{}}`, "a\uFFFDb", `{}`},
		{"lone surrogates in payload", `{"type":"event","name":"n","payload":{"s":"\ud800-\udfff"}}`, "n", `{"s":"` + "\uFFFD-\uFFFD" + `"}`},
		{"pair decoded", `{"type":"event","name":"\ud83d\ude00","payload":{"\ud83d\ude00":1}}`, "😀", `{"😀":1}`},
		{"NUL in payload key", `{"type":"event","name":"n","payload":{"\u0000":"\u0000"}}`, "n", `{"` + "\uFFFD" + `":"` + "\uFFFD" + `"}`},
		{"literal backslash-u0000 kept", `{"type":"event","name":"\\u0000","payload":{"k":"\\u0000"}}`, `\u0000`, `{"k":"\\u0000"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := NewDecoder(DefaultLimits())
			v, _, perr := d.Parse([]byte(tt.body))
			require.Nil(t, perr)
			ev, err := d.Build(v, "body", testProject, testNow)
			require.Nil(t, err)
			require.Equal(t, tt.wantName, ev.Name)
			require.Equal(t, tt.wantPayload, string(ev.Payload))
			enc := ev.AppendJSON(nil)
			require.True(t, utf8.Valid(enc))
			var got struct{ Name string }
			require.NoError(t, json.Unmarshal(enc, &got))
			require.Equal(t, tt.wantName, got.Name)
		})
	}
}

func TestParseReportsChanged(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	_, changed, perr := d.Parse([]byte(`{"a":"\u0000"}`))
	require.Nil(t, perr)
	require.True(t, changed)
	_, changed, perr = d.Parse([]byte(`{"a":"\\u0000"}`))
	require.Nil(t, perr)
	require.False(t, changed)
}
