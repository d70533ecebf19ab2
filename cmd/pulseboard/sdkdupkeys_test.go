package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/client"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// The Go SDK is a module of its own and cannot import the server's duplicate-key check, so
// it has its own (pkg/client/dupkeys.go). The two must agree, or an SDK sends batches the
// server refuses whole (400 INVALID_JSON) or refuses events the server would take: the same
// documents go through both, and the verdicts and messages must match.
func TestClientDuplicateKeysAgreeWithServer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest) // nothing is meant to be delivered
	}))
	defer srv.Close()
	c, err := client.New(client.Options{Endpoint: srv.URL, APIKey: "pk_test", MaxBatchEvents: 1000,
		QueueSize: 1 << 16, FlushInterval: time.Hour, MaxRetries: -1})
	require.NoError(t, err)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	}()

	docs := []string{
		`{"a":1,"a":2}`, `{"a":{"b":1,"\u0062":2}}`, `{"a":[{"x":1},{"y":1,"y":2}]}`,
		`{"\u0000":1,"\ufffd":2}`, `{"\ud800":1,"\udbff":2}`, `{"\ud800":1,"\\ud800":2}`,
		`{"\ud83d\ude00":1,"😀":2}`, "{\"\xff\":1,\"\xfe\":2}", `{"a/b~c":{"k":1,"k":2}}`,
		`{"` + strings.Repeat("é", 80) + `":{"` + strings.Repeat("k", 90) + `":1,"` + strings.Repeat("k", 90) + `":2}}`,
		`{"a":1,"b":{"a":1},"c":[{"a":1},{"a":1}]}`, `{}`, `{"x":[[[{"d":1,"d":1}]]]}`,
	}
	rng := rand.New(rand.NewPCG(7, 19))
	for range 3000 {
		docs = append(docs, randomObject(rng, 0))
	}
	agreed, dups := 0, 0
	for _, doc := range docs {
		require.True(t, json.Valid([]byte(strings.ToValidUTF8(doc, "?"))), "generator made invalid JSON: %s", doc)
		var want string
		if e := event.CheckUniqueKeys([]byte(doc), "RawPayload"); e != nil {
			want = e.Message
			dups++
		}
		var got string
		err := c.Enqueue(client.Event{Type: client.TypeEvent, Name: "dup", RawPayload: json.RawMessage(doc)})
		if err != nil {
			require.True(t, errors.Is(err, client.ErrInvalidEvent), "%s: %v", doc, err)
			got = strings.TrimPrefix(err.Error(), "pulseboard client: invalid event: ")
		}
		require.Equal(t, want, got, "document %s", doc)
		agreed++
	}
	require.Equal(t, len(docs), agreed)
	require.Greater(t, dups, len(docs)/10, "the generator must make duplicates often enough to test them")
	require.Less(t, dups, len(docs)*9/10, "and documents without them")
}

// keyPool holds keys that collide after decoding in ways the two checks must both see:
// escapes, NUL and unpaired surrogates (stored as U+FFFD), invalid UTF-8.
var keyPool = []string{`a`, `\u0061`, `b`, `\u0000`, `\ufffd`, `\ud800`, `\udc01`, `\\ud800`, `\ud83d\ude00`, "😀", "\xff", `é`, `\u00e9`, `a/b`, `~`}

func randomObject(rng *rand.Rand, depth int) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := range rng.IntN(4) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"` + keyPool[rng.IntN(len(keyPool))] + `":`)
		b.WriteString(randomValue(rng, depth+1))
	}
	b.WriteByte('}')
	return b.String()
}

func randomValue(rng *rand.Rand, depth int) string {
	if depth >= 4 {
		return "1"
	}
	switch rng.IntN(4) {
	case 0:
		return randomObject(rng, depth)
	case 1:
		parts := make([]string, rng.IntN(3))
		for i := range parts {
			parts[i] = randomValue(rng, depth+1)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case 2:
		return `"s"`
	}
	return "1"
}
