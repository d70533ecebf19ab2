package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fastjson"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/; these f.Add seeds are the short ones.

func FuzzSanitize(f *testing.F) {
	for _, s := range []string{
		``,
		`{"a":"b"}`,
		`{"a":"x\u0000y","\u0000":["\ud800","\udc00","\ud83d\ude00"]}`,
		`{"a":"\\u0000","b":"\\\u0000"}`,
		"{\"a\":\"\xC3\x28\xFF\xED\xA0\x80\"}",
		`"\ud800\ud800\udc00"`,
		`"\`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		t.Parallel()
		orig := bytes.Clone(in)
		out, changed := Sanitize(nil, in)
		require.Equal(t, string(orig), string(in), "Sanitize modified its input")
		if !changed {
			require.Equal(t, string(in), string(out), "unchanged input must be copied verbatim")
		}

		prefixed, _ := Sanitize([]byte("pre"), in)
		require.Equal(t, "pre"+string(out), string(prefixed))

		checkStorableStrings(t, out)

		again, changedAgain := Sanitize(nil, out)
		require.False(t, changedAgain, "second pass changed %q", out)
		require.Equal(t, string(out), string(again))

		if !json.Valid(in) {
			return
		}
		require.True(t, json.Valid(out), "sanitising valid JSON %q gave invalid %q", in, out)

		// Differential check against encoding/json, which maps invalid UTF-8 and unpaired
		// surrogates to U+FFFD the same way and decodes \u0000 to NUL: the sanitised
		// document must mean the same with NUL read as U+FFFD.
		want, err := decodeAll(in)
		require.NoError(t, err)
		want, ok := nulToReplacement(want)
		if !ok {
			return // two keys collapsed into one; which one wins is not comparable
		}
		got, err := decodeAll(out)
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
}

func FuzzDecodeBuild(f *testing.F) {
	// Each input is checked twice: body as a whole request, and name and payload
	// spliced into an otherwise valid event (which keeps most mutations acceptable).
	for _, s := range []struct{ body, name, payload string }{
		{`{"type":"event","name":"signup","payload":{}}`, `signup`, `{}`},
		{`{"type":"error","name":"\r\n<script>","payload":{"a":[1,-2.5e3,"x",null,true]},"context":{"ua":"x"},"timestamp":"2024-01-15T10:20:30.5+02:00","eventId":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b"}`, `\r\n<script>`, `{"a":[1,-2.5e3,"x",null,true]}`},
		{`{"type":"metric","name":"\u0000\ud800","payload":{"\udc00":"\u0000"}}`, `\u0000\ud800`, `{"\udc00":"\u0000","\\u0000":"\ud83d\ude00"}`},
		{"{\"type\":\"event\",\"name\":\"\xFF\",\"payload\":{\"k\xC3\x28\":1e1000}}", "\xC3\x28", `{"n":1e1000,"m":-0.5E-1000}`},
		{`[{"type":"event","name":"a","payload":{}},{"type":"event","name":"b","payload":{"n":1e1001}}]`, `b`, `{"n":1e1001}`},
		{`{"type":"event","name":"n","payload":{},"release":"\u0000r","context":{"user":{"userId":"\ud800"},"session":{"sessionId":"\"q"}}}`, `n`, `{}`},
		{`{"type":"event","name":"n","payload":{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}`, `n`, `{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`},
	} {
		f.Add([]byte(s.body), []byte(s.name), []byte(s.payload))
	}
	f.Fuzz(func(t *testing.T, body, name, payload []byte) {
		t.Parallel()
		spliced := make([]byte, 0, len(name)+len(payload)+64)
		spliced = append(spliced, `{"type":"event","name":"`...)
		spliced = append(spliced, name...)
		spliced = append(spliced, `","payload":`...)
		spliced = append(spliced, payload...)
		spliced = append(spliced, '}')
		for _, in := range [][]byte{body, spliced} {
			d := NewDecoder(DefaultLimits())
			v, _, perr := d.Parse(in)
			if perr != nil {
				require.Contains(t, []string{CodeInvalidJSON, CodeValidationFailed}, perr.Code)
				continue
			}
			clean, _ := Sanitize(nil, in)
			if arr, err := v.Array(); err == nil {
				var members []json.RawMessage
				require.NoError(t, json.Unmarshal(clean, &members))
				require.Len(t, members, len(arr))
				for i, ev := range arr {
					checkBuild(t, d, ev, members[i])
				}
				continue
			}
			checkBuild(t, d, v, clean)
		}
	})
}

func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{"a":1},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":{"c":"x"}}`,
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"\u0000","payload":{},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z"}`,
		`{"id":null,"projectId":1,"type":[],"name":{},"payload":"","timestamp":0,"receivedAt":false}`,
		`[]`,
		`{"id":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		t.Parallel()
		d := NewDecoder(DefaultLimits())
		ev, err := d.DecodeMessage(msg)
		if err != nil {
			var e *Error
			require.True(t, errors.As(err, &e), "error %v is not an *Error", err)
			return
		}
		checkEvent(t, ev)
		enc := ev.AppendJSON(nil)
		checkEncoding(t, enc)

		// Decoding the canonical form again gives the same event and the same bytes. (It can
		// be longer than msg: \b is re-encoded as \u0008.)
		again, err := NewDecoder(DefaultLimits()).DecodeMessage(enc)
		if len(enc) > DefaultMaxEventBytes {
			var e *Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, CodePayloadTooLarge, e.Code)
			return
		}
		require.NoError(t, err)
		require.Equal(t, ev, again)
		require.Equal(t, string(enc), string(again.AppendJSON(nil)))

		// The event owns its memory.
		before := string(enc)
		_, _ = d.DecodeMessage([]byte(`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz":1},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz":1}}`))
		require.Equal(t, before, string(ev.AppendJSON(nil)))
	})
}

// checkBuild builds one event object and checks everything promise 4 needs: the encoding
// is valid, storable JSON that DecodeMessage accepts and decodes to the same event, and it
// means what the (sanitised) client input meant according to encoding/json.
func checkBuild(t *testing.T, d *Decoder, v *fastjson.Value, cleanMember []byte) {
	t.Helper()
	ev, err := d.Build(v, "body", testProject, testNow)
	if err != nil {
		require.Contains(t, []string{CodeValidationFailed, CodeInvalidTimestamp}, err.Code)
		return
	}
	checkEvent(t, ev)
	require.Equal(t, testProject, ev.ProjectID)
	require.True(t, testNow.Truncate(Precision).Equal(ev.ReceivedAt))
	growth := checkClientNumbers(t, ev.Payload)
	if ev.Context != nil {
		growth += checkClientNumbers(t, ev.Context)
	}
	require.Equal(t, growth, d.NumberGrowth(), "NumberGrowth")
	enc := ev.AppendJSON(nil)
	checkEncoding(t, enc)

	// The event means what the client sent (Parse refused duplicate keys, whose meaning
	// differs between decoders).
	require.False(t, referenceDuplicate(cleanMember), "a duplicate key was accepted: %s", cleanMember)
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(cleanMember, &fields))
	var name string
	require.NoError(t, json.Unmarshal(fields["name"], &name))
	require.Equal(t, name, ev.Name)
	sameJSON(t, fields["payload"], ev.Payload)
	if ev.Context != nil {
		sameJSON(t, fields["context"], ev.Context)
	} else {
		require.True(t, fields["context"] == nil || string(fields["context"]) == "null")
	}
	if raw := fields["eventId"]; raw != nil && string(raw) != "null" {
		var s string
		require.NoError(t, json.Unmarshal(raw, &s))
		require.Equal(t, uuid.MustParse(s), ev.ID)
	} else {
		require.Equal(t, uuid.Version(7), ev.ID.Version())
	}
	if raw := fields["timestamp"]; raw != nil && string(raw) != "null" {
		var s string
		require.NoError(t, json.Unmarshal(raw, &s))
		ts, ok := ParseTime(s)
		require.True(t, ok)
		require.Equal(t, ts, ev.Timestamp)
	} else {
		require.Equal(t, ev.ReceivedAt, ev.Timestamp)
	}

	// The consumer accepts the message unless it is over the per-event limit (which the
	// ingestor must check on this encoding) and decodes the same event.
	got, derr := NewDecoder(DefaultLimits()).DecodeMessage(enc)
	if len(enc) > DefaultMaxEventBytes {
		var e *Error
		require.ErrorAs(t, derr, &e)
		require.Equal(t, CodePayloadTooLarge, e.Code)
		return
	}
	require.NoError(t, derr, "built event %q", enc)
	ev.Payload = bytes.Clone(ev.Payload)
	if ev.Context != nil {
		ev.Context = bytes.Clone(ev.Context)
	}
	require.Equal(t, ev, got)
	require.Equal(t, string(enc), string(got.AppendJSON(nil)))
}

// sameJSON checks that two JSON documents decode to the same value.
func sameJSON(t *testing.T, want, got []byte) {
	t.Helper()
	w, err := decodeAll(want)
	require.NoError(t, err)
	g, err := decodeAll(got)
	require.NoError(t, err)
	require.Equal(t, w, g)
}

// checkEvent checks the invariants of every accepted event.
func checkEvent(t *testing.T, ev Event) {
	t.Helper()
	require.Contains(t, []string{TypeError, TypeEvent, TypeMetric}, ev.Type)
	require.True(t, utf8.ValidString(ev.Name))
	n := utf8.RuneCountInString(ev.Name)
	require.True(t, n >= 1 && n <= DefaultMaxNameChars, "name of %d chars", n)
	require.NotContains(t, ev.Name, "\x00")
	require.NotEqual(t, uuid.Nil, ev.ID)
	require.NotEqual(t, uuid.Nil, ev.ProjectID)
	for _, tm := range []struct {
		name string
		year int
	}{{"timestamp", ev.Timestamp.Year()}, {"receivedAt", ev.ReceivedAt.Year()}} {
		require.True(t, tm.year >= 1 && tm.year <= 9999, "%s year %d", tm.name, tm.year)
	}
	require.Zero(t, ev.Timestamp.Nanosecond()%int(Precision))
	require.Zero(t, ev.ReceivedAt.Nanosecond()%int(Precision))
	checkStorableObject(t, ev.Payload)
	if ev.Context != nil {
		checkStorableObject(t, ev.Context)
	}
}

// checkStorableObject checks a canonical payload or context: a JSON object, at most
// DefaultMaxDepth deep, with every number one PostgreSQL's numeric accepts.
func checkStorableObject(t *testing.T, b []byte) {
	t.Helper()
	require.True(t, json.Valid(b), "%q", b)
	require.Equal(t, byte('{'), b[0])
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	depth, maxDepth := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		switch tok := tok.(type) {
		case json.Delim:
			if tok == '{' || tok == '[' {
				depth++
				maxDepth = max(maxDepth, depth)
			} else {
				depth--
			}
		case json.Number:
			s := string(tok)
			require.LessOrEqual(t, len(s), 128, "number %s", s)
			if i := strings.IndexAny(s, "eE"); i >= 0 {
				exp, err := strconv.Atoi(strings.TrimLeft(s[i+1:], "+-0") + "0")
				require.NoError(t, err)
				require.LessOrEqual(t, exp/10, 1000, "number %s", s)
			}
		}
	}
	require.LessOrEqual(t, maxDepth, DefaultMaxDepth)
}

// checkClientNumbers checks that every number of a client's payload or context is a
// finite double, zero only when written as zero, and returns how much longer PostgreSQL
// writes them out (positional).
func checkClientNumbers(t *testing.T, b []byte) (growth int) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return growth
		}
		require.NoError(t, err)
		n, ok := tok.(json.Number)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(string(n), 64)
		require.NoError(t, err, "number %s", n)
		require.False(t, math.IsInf(f, 0), "number %s", n)
		mant, _, _ := strings.Cut(strings.ToLower(string(n)), "e")
		require.True(t, f != 0 || strings.Trim(mant, "-0.") == "", "number %s reads as 0", n)
		growth += max(0, len(positional(string(n)))-len(n))
	}
}

// checkEncoding checks a canonical event encoding: valid JSON, valid UTF-8, no NUL escape
// and no unpaired surrogate escape.
func checkEncoding(t *testing.T, enc []byte) {
	t.Helper()
	require.True(t, json.Valid(enc), "%q", enc)
	require.True(t, utf8.Valid(enc), "%q", enc)
	require.False(t, hasNULEscape(enc), "%q", enc)
	checkStorableStrings(t, enc)
}

// hasNULEscape reports whether a \u0000 escape (not the text \\u0000) occurs in b.
func hasNULEscape(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			continue
		}
		if b[i+1] == 'u' && bytes.HasPrefix(b[i+2:], []byte("0000")) {
			return true
		}
		i++ // skip the escaped character
	}
	return false
}

// checkStorableStrings checks that the bytes of every JSON string in b (as delimited by
// unescaped quotes) are valid UTF-8 and that no \u escape is a NUL or an unpaired
// surrogate. It is written independently of Sanitize.
func checkStorableStrings(t *testing.T, b []byte) {
	t.Helper()
	u4 := func(i int) (uint64, bool) {
		if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
			return 0, false
		}
		r, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 32)
		return r, err == nil
	}
	i := 0
	for i < len(b) {
		if b[i] != '"' {
			i++
			continue
		}
		start := i + 1
		i++
		for i < len(b) && b[i] != '"' {
			if b[i] != '\\' {
				i++
				continue
			}
			r, ok := u4(i)
			switch {
			case !ok:
				i += 2
			case r == 0:
				require.Failf(t, "NUL escape", "at %d in %q", i, b)
			case r >= 0xD800 && r <= 0xDBFF:
				r2, ok := u4(i + 6)
				require.True(t, ok && r2 >= 0xDC00 && r2 <= 0xDFFF, "unpaired high surrogate at %d in %q", i, b)
				i += 12
			case r >= 0xDC00 && r <= 0xDFFF:
				require.Failf(t, "unpaired low surrogate", "at %d in %q", i, b)
			default:
				i += 6
			}
		}
		end := min(i, len(b))
		require.True(t, utf8.Valid(b[start:end]), "invalid UTF-8 in string %q of %q", b[start:end], b)
		i++
	}
}

// decodeAll decodes one JSON document with numbers kept as text.
func decodeAll(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// nulToReplacement replaces NUL with U+FFFD in every string and key of a decoded value.
// It reports false when that makes two keys of one object equal.
func nulToReplacement(v any) (any, bool) {
	switch v := v.(type) {
	case string:
		return strings.ReplaceAll(v, "\x00", "\uFFFD"), true
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			var ok bool
			if out[i], ok = nulToReplacement(e); !ok {
				return nil, false
			}
		}
		return out, true
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			k = strings.ReplaceAll(k, "\x00", "\uFFFD")
			if _, dup := out[k]; dup {
				return nil, false
			}
			var ok bool
			if out[k], ok = nulToReplacement(e); !ok {
				return nil, false
			}
		}
		return out, true
	}
	return v, true
}
