package event

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fastjson"
)

// referenceParse is Parse as it was before the single-pass scanner: sanitise into a copy,
// json.Valid on the copy, then fastjson. The scanner must decide exactly as this does.
//
// Duplicate keys are refused since; referenceDuplicate finds them independently, and
// errDuplicateRef stands for Parse's message, which names where.
func referenceParse(p *fastjson.Parser, limits Limits, body []byte) (*fastjson.Value, bool, *Error) {
	clean, changed := Sanitize(nil, body)
	if !json.Valid(clean) {
		return nil, changed, &Error{Code: CodeInvalidJSON, Message: "body is not valid JSON"}
	}
	if referenceDuplicate(clean) {
		return nil, changed, errDuplicateRef
	}
	v, err := p.ParseBytes(clean)
	if err != nil {
		return nil, changed, invalid("body must NOT be nested deeper than " + itoa(limits.MaxDepth) + " levels")
	}
	return v, changed, nil
}

// checkParseAgainstReference compares Parse with referenceParse on one input.
func checkParseAgainstReference(t *testing.T, in []byte) {
	t.Helper()
	orig := bytes.Clone(in)
	var ref fastjson.Parser
	wantV, wantChanged, wantErr := referenceParse(&ref, DefaultLimits(), in)
	d := NewDecoder(DefaultLimits())
	gotV, gotChanged, gotErr := d.Parse(in)
	require.Equal(t, string(orig), string(in), "Parse modified its input")
	if wantErr == errDuplicateRef {
		require.NotNil(t, gotErr, "input %q has a duplicate key", in)
		require.Equal(t, CodeInvalidJSON, gotErr.Code, "input %q", in)
		require.Contains(t, gotErr.Message, " must NOT have duplicate keys (", "input %q", in)
		require.Equal(t, gotErr, CheckUniqueKeys(in, "body"), "CheckUniqueKeys decides as Parse")
		wantErr = gotErr
	} else if json.Valid(in) {
		require.Nil(t, CheckUniqueKeys(in, "body"), "input %q", in)
	}
	require.Equal(t, wantErr, gotErr, "input %q", in)
	require.Equal(t, wantChanged, gotChanged, "changed, input %q", in)
	if wantErr != nil {
		return
	}
	require.Equal(t, string(wantV.MarshalTo(nil)), string(gotV.MarshalTo(nil)), "input %q", in)

	// The scanner's own verdicts: valid exactly when json.Valid says so, and clean only
	// when Sanitize would copy the input verbatim.
	var s scanner
	valid, dirty := s.scan(in, false)
	require.Equal(t, json.Valid(in), valid, "input %q", in)
	if valid && !dirty {
		out, changed := Sanitize(nil, in)
		require.False(t, changed, "input %q", in)
		require.Equal(t, string(in), string(out))
	}
}

var errDuplicateRef = &Error{Code: CodeInvalidJSON, Message: "a duplicate key"}

// referenceDuplicate reports whether an object of the valid JSON document b has a key
// twice, keys decoded by encoding/json.
func referenceDuplicate(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	type level struct {
		keys    map[string]bool // nil for an array
		wantKey bool
	}
	var stack []*level
	for {
		tok, err := dec.Token()
		if err != nil {
			return false // io.EOF: b is valid
		}
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil && top.wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				continue
			}
			k := tok.(string)
			if top.keys[k] {
				return true
			}
			top.keys[k] = true
			top.wantKey = false
			continue
		}
		if top != nil && top.keys != nil {
			top.wantKey = true // this token is a member's value
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				stack = append(stack, &level{keys: map[string]bool{}, wantKey: true})
			case '[':
				stack = append(stack, &level{})
			default:
				stack = stack[:len(stack)-1]
			}
		}
	}
}

// FuzzParseReference is a differential fuzz test of Parse against the implementation it
// replaced (Sanitize, then json.Valid, then fastjson): the same error, the same changed
// flag and the same parsed value for every input.
func FuzzParseReference(f *testing.F) {
	for _, s := range scanCases() {
		f.Add([]byte(s))
	}
	f.Add(benchBody)
	f.Add(benchDirty)
	f.Fuzz(func(t *testing.T, in []byte) {
		t.Parallel()
		checkParseAgainstReference(t, in)
	})
}

// scanCases are inputs at the edges of the JSON grammar and of what Sanitize replaces.
func scanCases() []string {
	return []string{
		``, ` `, `{}`, `[]`, ` {} `, "\t[\n]\r", `{`, `}`, `[`, `]`, `{]`, `[}`, `[1,]`, `{"a":1,}`,
		`{"a"}`, `{"a":}`, `{:1}`, `{1:1}`, `{"a" : 1 , "b" : [ 1 , 2 ] }`, `[1 2]`, `{} {}`, `1 1`,
		`0`, `-0`, `-`, `01`, `-01`, `1.`, `1.0`, `.5`, `1e`, `1e+`, `1e-5`, `1E+05`, `1.5e1000`, `+1`,
		`0x10`, `NaN`, `Infinity`, `-Infinity`, `1_000`, `123abc`, `12 `,
		`true`, `false`, `null`, `tru`, `truex`, `nul`, `True`, `[true,false,null]`, `nullnull`,
		`""`, `"`, `"abc`, `"a\"b"`, `"\\"`, `"\`, `"\/\b\f\n\r\t"`, `"\x"`, `"\'"`, `"\u"`, `"\u12"`,
		`"\u123g"`, `"\uABCD"`, `"\uabcd"`, `"\u0000"`, `"\\u0000"`, `"\ud800"`, `"\udc00"`,
		`"\ud83d\ude00"`, `"\ud83d\u0041"`, `"\ud83d\ud83d\ude00"`, `"\ude00\ud83d"`, `"\ud83d\`,
		`"\ud83d\u"`, `"\ud83d\ude0"`, "\"\x01\"", "\"\x1f\"", "\"\x7f\"", "\"\t\"", "\"a\nb\"",
		"\"\xC3\xA9\"", "\"\xC3\x28\"", "\"\xFF\"", "\"\xED\xA0\x80\"", "\"\xEF\xBF\xBD\"", "\"\xF0\x9F\x98\x80\"",
		"\"\xF0\x9F\x98\"", "\"\xE2\x82\xACa\xE2\x82\"", "\xEF\xBB\xBF{}", "{\"\xFF\":1}", "[\"\\\xC3\xA9\"]",
		"\xC3\xA9", "[\x80]", "{\"a\":\"b\"\x00}", "\x00", "[1]\x00",
		`{"a":[{"b":{"c":[1,2,{"d":null}]}}],"e":"f"}`,
		strings.Repeat("[", 300) + strings.Repeat("]", 300),
		strings.Repeat("[", 301) + strings.Repeat("]", 301),
		strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat(`}`, 40),
		// Duplicate keys, also once decoded or sanitised.
		`{"a":1,"a":2}`, `{"a":1,"b":2,"a":3}`, `{"a":1,"\u0061":2}`, `{"\u00e9":1,"é":2}`, `{"a":1,"a":2`,
		`{"\ud800":1,"\udc00":2}`, `{"\u0000":1,"\ufffd":2}`, "{\"\xff\":1,\"\xfe\":2}", `{"a\/":1,"a/":2}`,
		`{"a":{"b":1},"b":{"b":1}}`, `[{"a":1},{"a":1}]`, `{"a":[{"x":1,"y":{"x":1}},{"x":1,"x":1}]}`,
		`{"k1":1,"k2":1,"k3":1,"k4":1,"k5":1,"k6":1,"k7":1,"k8":1,"k9":1,"k10":1,"k11":1,"k12":1,"k13":1,"k14":1,"k15":1,"k16":1,"k17":1,"k1":1}`,
		`{"k1":1,"k2":1,"k3":1,"k4":1,"k5":1,"k6":1,"k7":1,"k8":1,"k9":1,"k10":1,"k11":1,"k12":1,"k13":1,"k14":1,"k15":1,"k16":1,"k17":1,"k18":1}`,
	}
}

func TestParseMatchesReference(t *testing.T) {
	t.Parallel()
	for _, s := range scanCases() {
		checkParseAgainstReference(t, []byte(s))
	}
	for _, s := range []string{string(benchBody), string(benchDirty)} {
		checkParseAgainstReference(t, []byte(s))
	}
}

// TestScanNesting: json.Valid accepts 10000 levels and refuses 10001; so does the scanner,
// without recursion (deep input must not overflow a stack).
func TestScanNesting(t *testing.T) {
	t.Parallel()
	for _, n := range []int{maxNesting - 1, maxNesting, maxNesting + 1, 100_000} {
		for _, open := range []string{"[", `{"k":`} {
			closer := "]"
			if open != "[" {
				closer = "}"
			}
			in := []byte(strings.Repeat(open, n) + "1" + strings.Repeat(closer, n))
			if open == "[" {
				in = []byte(strings.Repeat(open, n) + strings.Repeat(closer, n))
			}
			var s scanner
			valid, _ := s.scan(in, false)
			require.Equal(t, json.Valid(in), valid, "%d levels of %s", n, open)
			require.Equal(t, n <= maxNesting, valid, "%d levels of %s", n, open)
			checkParseAgainstReference(t, in)
		}
	}
}

// TestScanShortInputs compares the scanner with json.Valid on every input of up to three
// bytes over an alphabet that covers the grammar's decisions.
func TestScanShortInputs(t *testing.T) {
	t.Parallel()
	alphabet := []byte("{}[]\":,-0123.eE+ \ttfnul\\/ubx\x00\x01\x80\xC3\xA9\xFF")
	var s scanner
	var in []byte
	var walk func(depth int)
	walk = func(depth int) {
		valid, _ := s.scan(in, false)
		require.Equal(t, json.Valid(in), valid, "input %q", in)
		if depth == 3 {
			return
		}
		for _, c := range alphabet {
			in = append(in, c)
			walk(depth + 1)
			in = in[:len(in)-1]
		}
	}
	walk(0)
}

// TestWordChecks compares the 8-bytes-at-a-time checks with the byte-wise definitions, for
// every byte value at every position and for random words (borrows between bytes).
func TestWordChecks(t *testing.T) {
	t.Parallel()
	bytewise := func(w [8]byte) (attention, escape bool) {
		for _, c := range w {
			attention = attention || byteClass[c] != 0
			escape = escape || c < 0x20 || c == '"' || c == '\\'
		}
		return attention, escape
	}
	check := func(w [8]byte) {
		t.Helper()
		word := load64(w[:], 0)
		wantA, wantE := bytewise(w)
		require.Equal(t, wantA, needsAttention(word), "%q", w)
		require.Equal(t, wantE, needsEscape(word), "%q", w)
		require.Equal(t, word, load64(string(w[:]), 0))
	}
	for pos := range 8 {
		for c := range 256 {
			for _, fill := range []byte{'a', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff} {
				var w [8]byte
				for i := range w {
					w[i] = fill
				}
				w[pos] = byte(c)
				check(w)
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 200_000 {
		var w [8]byte
		for i := range w {
			w[i] = byte(r.IntN(256))
			if r.IntN(2) == 0 {
				w[i] = byte(0x20 + r.IntN(0x60)) // mostly plain ASCII
			}
		}
		check(w)
	}
}
