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

func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	require.NoError(t, err)
	return string(b)
}

// buildFor parses and builds body as the ingestor does.
func buildFor(t *testing.T, d *Decoder, body string) Event {
	t.Helper()
	v, _, perr := d.Parse([]byte(body))
	require.Nil(t, perr)
	ev, err := d.Build(v, "body", uuid.New(), time.Now())
	require.Nil(t, err)
	ev.Payload, ev.Context = append([]byte(nil), ev.Payload...), append([]byte(nil), ev.Context...)
	return ev
}

// An error event with a 114 KB stack trace (issue 17 item 4) fits after Fit: the stack
// keeps its beginning and ends with a marker saying how much was cut; short strings and
// numbers are untouched; the result is canonical JSON.
func TestFitShortensTheLongestStrings(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	stack := "Error: boom\n" + strings.Repeat("    at frame (file.js:1:2)\n", 4300) // ~116 KB
	message := strings.Repeat("m", 30_000)
	body := `{"type":"error","name":"TypeError","payload":{"message":` + strconv.Quote(message) + `,"stack":` + strconv.Quote(stack) +
		`,"code":42,"tags":["a","b"]},"context":{"screen":"Home","ua":"x"}}`
	ev := buildFor(t, d, body)
	size := len(ev.AppendJSON(nil))
	require.Greater(t, size, DefaultMaxEventBytes)

	n, ok := d.Fit(&ev, size, DefaultMaxEventBytes)
	require.True(t, ok)
	require.Equal(t, 1, n, "only the stack had to be cut")
	require.LessOrEqual(t, len(ev.AppendJSON(nil)), DefaultMaxEventBytes)

	v, _, perr := NewDecoder(DefaultLimits()).Parse(ev.Payload)
	require.Nil(t, perr)
	got := string(v.GetStringBytes("stack"))
	require.True(t, strings.HasPrefix(got, "Error: boom\n    at frame"), "the stack keeps its beginning")
	cut := len(stack) - strings.Index(got, TruncatedMarker)
	require.True(t, strings.HasSuffix(got, TruncatedMarker+strconv.Itoa(cut)+" bytes]"), "marker: %q", got[len(got)-40:])
	require.Equal(t, message, string(v.GetStringBytes("message")), "a string that did not need cutting is whole")
	require.Equal(t, 42, v.GetInt("code"))
	require.Equal(t, `{"screen":"Home","ua":"x"}`, string(ev.Context))

	// Both long strings are cut, to the same length, when one is not enough.
	ev = buildFor(t, d, body)
	n, ok = d.Fit(&ev, len(ev.AppendJSON(nil)), 20_000)
	require.True(t, ok)
	require.Equal(t, 2, n)
	require.LessOrEqual(t, len(ev.AppendJSON(nil)), 20_000)
}

// Escapes count: a string of control characters, each encoded as \u00XX, is measured and
// cut by its encoding, and a multi-byte character is never split.
func TestFitMeasuresTheEncoding(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	ctl := strings.Repeat("\u0001", 20_000) // 120 KB encoded
	runes := strings.Repeat("é€😀", 8_000)   // 72 KB
	ev := buildFor(t, d, `{"type":"event","name":"n","payload":{"c":`+jsonString(t, ctl)+`},"context":{"r":"`+runes+`"}}`)
	size := len(ev.AppendJSON(nil))
	_, ok := d.Fit(&ev, size, DefaultMaxEventBytes)
	require.True(t, ok)
	require.LessOrEqual(t, len(ev.AppendJSON(nil)), DefaultMaxEventBytes)
	v, _, perr := NewDecoder(DefaultLimits()).Parse(ev.Context)
	require.Nil(t, perr)
	r := string(v.GetStringBytes("r"))
	require.True(t, strings.HasPrefix(runes, r[:strings.Index(r, TruncatedMarker)]), "cut at a character boundary")
}

// An event whose size is not in a few long strings (many short ones, numbers, keys)
// cannot be made to fit: Fit refuses and leaves it as it was, and the ingestor answers 413.
func TestFitRefusesWhatCannotFit(t *testing.T) {
	t.Parallel()
	d := NewDecoder(DefaultLimits())
	short := `"` + strings.Repeat("s", 60) + `",`
	for name, payload := range map[string]string{
		"many short strings": `{"a":[` + strings.Repeat(short, 1200) + `"x"]}`,
		"numbers":            `{"a":[` + strings.Repeat("123456789,", 8000) + `1]}`,
	} {
		ev := buildFor(t, d, `{"type":"event","name":"n","payload":`+payload+`}`)
		before := string(ev.Payload)
		size := len(ev.AppendJSON(nil))
		require.Greater(t, size, DefaultMaxEventBytes, name)
		_, ok := d.Fit(&ev, size, DefaultMaxEventBytes)
		require.False(t, ok, name)
		require.Equal(t, before, string(ev.Payload), name)
	}
	// Under the limit there is nothing to do.
	ev := buildFor(t, d, `{"type":"event","name":"n","payload":{"a":"b"}}`)
	n, ok := d.Fit(&ev, len(ev.AppendJSON(nil)), DefaultMaxEventBytes)
	require.True(t, ok)
	require.Zero(t, n)
}
