package event

import (
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDuplicateKeysAreRefused: an object with a key twice, anywhere in a client's body,
// is INVALID_JSON naming the object and the key; the raw path leaves such bodies to
// Parse, and CheckUniqueKeys (the api's check) says the same.
func TestDuplicateKeysAreRefused(t *testing.T) {
	t.Parallel()
	many := func(n int, dup string) string { // an object of n keys, then dup
		var b strings.Builder
		b.WriteString(`{"type":"event","name":"n","payload":{`)
		for i := range n {
			b.WriteString(`"k` + strconv.Itoa(i) + `":1,`)
		}
		b.WriteString(`"` + dup + `":2}}`)
		return b.String()
	}
	for _, c := range []struct{ name, body, msg string }{
		{"top-level field", `{"type":"error","type":"event","name":"a","payload":{}}`,
			`body must NOT have duplicate keys ("type" appears more than once)`},
		{"apiKey", `{"apiKey":"pb_live_a","type":"event","name":"a","payload":{},"apiKey":"pb_live_b"}`,
			`body must NOT have duplicate keys ("apiKey" appears more than once)`},
		{"ignored field", `{"type":"event","name":"a","payload":{},"x":1,"x":1}`,
			`body must NOT have duplicate keys ("x" appears more than once)`},
		{"payload", `{"type":"event","name":"a","payload":{"a":1,"a":2}}`,
			`body/payload must NOT have duplicate keys ("a" appears more than once)`},
		{"deep in the payload", `{"type":"event","name":"a","payload":{"a":[1,{"x":{},"y":1,"x":[]}]}}`,
			`body/payload/a/1 must NOT have duplicate keys ("x" appears more than once)`},
		{"context", `{"type":"event","name":"a","payload":{},"context":{"ua":"x","ua":"y"}}`,
			`body/context must NOT have duplicate keys ("ua" appears more than once)`},
		{"inside an ignored field", `{"type":"event","name":"a","payload":{},"extra":[{"z":1,"z":1}]}`,
			`body/extra/0 must NOT have duplicate keys ("z" appears more than once)`},
		{"equal once decoded", `{"type":"event","name":"a","payload":{"é":1,"\u00e9":2}}`,
			`body/payload must NOT have duplicate keys ("é" appears more than once)`},
		{"equal once sanitised", "{\"type\":\"event\",\"name\":\"a\",\"payload\":{\"\xff\":1,\"\\ud800\":2}}",
			`body/payload must NOT have duplicate keys ("` + "\uFFFD" + `" appears more than once)`},
		{"path segments escaped", `{"type":"event","name":"a","payload":{"a/b~c":{"k":1,"k":2}}}`,
			`body/payload/a~1b~0c must NOT have duplicate keys ("k" appears more than once)`},
		{"in a large object", many(1000, "k999"),
			`body/payload must NOT have duplicate keys ("k999" appears more than once)`},
		{"in a large object, early", many(1000, "k3"),
			`body/payload must NOT have duplicate keys ("k3" appears more than once)`},
		{"long key shortened", `{"type":"event","name":"a","payload":{"` + strings.Repeat("é", 40) + `":1,"` + strings.Repeat("é", 40) + `":2}}`,
			`body/payload must NOT have duplicate keys ("` + strings.Repeat("é", 32) + `…" appears more than once)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := NewDecoder(DefaultLimits())
			_, ok := d.SplitObject([]byte(c.body))
			require.False(t, ok, "SplitObject takes no body with a duplicate key")
			_, ok = d.SplitBatch([]byte("[" + c.body + "]"))
			require.False(t, ok, "SplitBatch takes no body with a duplicate key")
			_, _, err := d.Parse([]byte(c.body))
			require.NotNil(t, err)
			require.Equal(t, CodeInvalidJSON, err.Code)
			require.Equal(t, c.msg, err.Message)
			require.Equal(t, err, CheckUniqueKeys([]byte(c.body), "body"))

			_, _, err = d.ParseAs([]byte(c.body), "events/3")
			require.NotNil(t, err)
			require.Equal(t, "events/3"+strings.TrimPrefix(c.msg, "body"), err.Message)

			_, _, err = d.Parse([]byte(`{"events":[{},` + c.body + `]}`))
			require.NotNil(t, err)
			require.Equal(t, "body/events/1"+strings.TrimPrefix(c.msg, "body"), err.Message)
		})
	}
}

func TestUniqueKeysAreAccepted(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		`{"type":"event","name":"a","payload":{"a":{"a":1},"b":[{"a":1},{"a":2}]},"context":{"a":1}}`,
		`{"type":"event","name":"a","payload":{"a":1,"A":2,"a ":3,"\u0061b":4,"a\\":5}}`,
		`[{"type":"event","name":"a","payload":{}},{"type":"event","name":"a","payload":{}}]`,
		`{"events":[{"type":"event","name":"a","payload":{"x":1}},{"type":"event","name":"a","payload":{"x":1}}]}`,
	} {
		d := NewDecoder(DefaultLimits())
		_, _, err := d.Parse([]byte(body))
		require.Nil(t, err, "%s", body)
		require.Nil(t, CheckUniqueKeys([]byte(body), "body"), "%s", body)
	}
	// Not JSON: CheckUniqueKeys leaves that to the caller's parser.
	require.Nil(t, CheckUniqueKeys([]byte(`{"a":1,"a":`), "body"))
	// A syntax error decides before a duplicate.
	_, _, err := NewDecoder(DefaultLimits()).Parse([]byte(`{"a":1,"a":2`))
	require.Equal(t, "body is not valid JSON", err.Message)
}

// Kafka messages keep their duplicate keys' meaning (the last wins, as in jsonb): the
// consumer stores what any ingestor, an older one included, produced.
func TestDecodeMessageAcceptsDuplicateKeys(t *testing.T) {
	t.Parallel()
	msg := `{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"error","type":"event","name":"n","payload":{"a":1,"a":2},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z"}`
	ev, err := NewDecoder(DefaultLimits()).DecodeMessage([]byte(msg))
	require.NoError(t, err)
	require.Equal(t, TypeEvent, ev.Type)
	require.Equal(t, `{"a":1,"a":2}`, string(ev.Payload))
	require.True(t, checkDecodeMessageRaw(t, []byte(msg)), "the raw path takes it")
}

// A decoder that scanned a body of 200,000 keys keeps none of it, and counts its index.
func TestUniqueKeysRetained(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString(`{"type":"event","name":"n","payload":{`)
	for i := range 200_000 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k` + strconv.Itoa(i) + `":1`)
	}
	b.WriteString(`}}`)
	d := NewDecoder(DefaultLimits())
	_, _, err := d.Parse([]byte(b.String()))
	require.Nil(t, err)
	require.Greater(t, d.Retained(), 1<<20, "the key index counts in Retained")
	require.Nil(t, d.scanner.uniq.src, "nothing of the body is kept")
}
