package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// The server refuses a whole batch whose JSON holds an object with a duplicate key
// (400 INVALID_JSON, docs/api.md). The client checks each RawPayload with the same rule,
// so one bad event is refused on its own instead of taking its batch down.
//
// The SDK is its own module and depends on no server package, so the check is written
// here a second time; cmd/pulseboard's TestClientDuplicateKeysAgreeWithServer holds it to
// the server's (pkg/event.CheckUniqueKeys) on the same documents.
//
// Keys compare as the server stores them: decoded, with invalid UTF-8, NUL and unpaired
// UTF-16 surrogates read as U+FFFD.

// maxKeyText bounds a key quoted in a message, in bytes.
const maxKeyText = 64

// duplicateKey returns the message for the first duplicate key of the JSON document b
// (already validated), "" when there is none. root names the document ("RawPayload").
func duplicateKey(b []byte, root string) string {
	// fastjson leaves an unpaired surrogate escape as its six characters of text, which
	// would then be mistaken for a key holding those characters; encoding/json decodes it
	// as the server does. Surrogate escapes are rare (ASCII-only encoders write non-BMP
	// characters that way), so the fast parser takes everything else.
	if bytes.Contains(b, []byte(`\ud`)) || bytes.Contains(b, []byte(`\uD`)) {
		return duplicateKeyStd(b, root)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(b)
	if err != nil {
		return ""
	}
	var path []byte
	return walkFast(v, root, &path)
}

func walkFast(v *fastjson.Value, root string, path *[]byte) string {
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		var msg string
		var seen map[string]struct{}
		if o.Len() > 1 {
			seen = make(map[string]struct{}, o.Len())
		}
		o.Visit(func(k []byte, child *fastjson.Value) {
			if msg != "" {
				return
			}
			key := storedKey(k)
			if seen != nil {
				if _, dup := seen[key]; dup {
					msg = duplicateMessage(root, *path, key)
					return
				}
				seen[key] = struct{}{}
			}
			n := len(*path)
			*path = appendSegment(append(*path, '/'), key)
			msg = walkFast(child, root, path)
			*path = (*path)[:n]
		})
		return msg
	case fastjson.TypeArray:
		a, _ := v.Array()
		for i, child := range a {
			n := len(*path)
			*path = strconv.AppendInt(append(*path, '/'), int64(i), 10)
			msg := walkFast(child, root, path)
			*path = (*path)[:n]
			if msg != "" {
				return msg
			}
		}
	}
	return ""
}

// duplicateKeyStd is duplicateKey with encoding/json's tokenizer.
func duplicateKeyStd(b []byte, root string) string {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var path []byte
	msg, err := walkStd(d, root, &path)
	if err != nil {
		return ""
	}
	return msg
}

func walkStd(d *json.Decoder, root string, path *[]byte) (string, error) {
	tok, err := d.Token()
	if err != nil {
		return "", err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return "", nil
	}
	var seen map[string]struct{}
	for i := 0; d.More(); i++ {
		n := len(*path)
		if delim == '{' {
			kt, err := d.Token()
			if err != nil {
				return "", err
			}
			key := storedKey([]byte(kt.(string)))
			if seen == nil {
				seen = make(map[string]struct{})
			}
			if _, dup := seen[key]; dup {
				return duplicateMessage(root, *path, key), nil
			}
			seen[key] = struct{}{}
			*path = appendSegment(append(*path, '/'), key)
		} else {
			*path = strconv.AppendInt(append(*path, '/'), int64(i), 10)
		}
		msg, err := walkStd(d, root, path)
		*path = (*path)[:n]
		if msg != "" || err != nil {
			return msg, err
		}
	}
	if _, err := d.Token(); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return "", nil
}

// storedKey is a decoded key as the server stores it.
func storedKey(k []byte) string {
	s := strings.ToValidUTF8(string(k), "\uFFFD")
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	return s
}

func duplicateMessage(root string, path []byte, key string) string {
	return root + string(path) + ` must NOT have duplicate keys ("` + shortKey(key) + `" appears more than once)`
}

// appendSegment appends key as a JSON Pointer segment (RFC 6901: ~ is ~0, / is ~1),
// shortened as in messages.
func appendSegment(dst []byte, key string) []byte {
	s := shortKey(key)
	if strings.ContainsAny(s, "~/") {
		s = strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
	}
	return append(dst, s...)
}

func shortKey(s string) string {
	if len(s) <= maxKeyText {
		return s
	}
	cut := maxKeyText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
