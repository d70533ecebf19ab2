package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
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
//
// It is on the client's per-event path (every RawPayload), so a scan that allocates
// nothing screens the document first: keys compared as raw bytes, after a 64-bit filter
// of their hashes per object. Only a document where that scan sees a duplicate, or a
// key it cannot compare raw (an escape, invalid UTF-8), is decoded with encoding/json,
// which compares keys exactly as the server does and writes the message.
func duplicateKey(b []byte, root string) string {
	sc := keyScanners.Get().(*keyScanner)
	clean := sc.clean(b)
	if cap(sc.frames) <= 64 && cap(sc.keys) <= 1024 {
		keyScanners.Put(sc)
	}
	if clean {
		return ""
	}
	return duplicateKeyStd(b, root)
}

// keyScanner is duplicateKey's screening scan; its slices are reused.
type keyScanner struct {
	frames []keyFrame
	keys   []keySpan // of the open objects, innermost last
}

type keyFrame struct {
	object bool
	keys   int    // where the object's keys start in keys
	seen   uint64 // a bit per key hash
}

type keySpan struct{ start, end int }

var keyScanners = sync.Pool{New: func() any { return new(keyScanner) }}

// clean reports whether the valid JSON document b certainly has no object with a
// duplicate key.
func (sc *keyScanner) clean(b []byte) bool {
	sc.frames, sc.keys = sc.frames[:0], sc.keys[:0]
	expectKey := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '{':
			sc.frames = append(sc.frames, keyFrame{object: true, keys: len(sc.keys)})
			expectKey = true
		case '[':
			sc.frames = append(sc.frames, keyFrame{})
			expectKey = false
		case '}', ']':
			f := sc.frames[len(sc.frames)-1]
			sc.frames = sc.frames[:len(sc.frames)-1]
			if f.object {
				sc.keys = sc.keys[:f.keys]
			}
			expectKey = false
		case ',':
			expectKey = len(sc.frames) > 0 && sc.frames[len(sc.frames)-1].object
		case '"':
			start := i + 1
			plain := true
			for i++; b[i] != '"'; i++ {
				if b[i] == '\\' {
					plain = false
					i++
				} else if b[i] >= 0x80 {
					plain = false
				}
			}
			if !expectKey {
				continue
			}
			expectKey = false
			k := b[start:i]
			if !plain && (bytes.IndexByte(k, '\\') >= 0 || !utf8.Valid(k)) {
				return false // compared decoded, by the exact path
			}
			f := &sc.frames[len(sc.frames)-1]
			bit := uint64(1) << (fnv(k) & 63)
			if f.seen&bit != 0 {
				for _, o := range sc.keys[f.keys:] {
					if bytes.Equal(b[o.start:o.end], k) {
						return false
					}
				}
			}
			f.seen |= bit
			sc.keys = append(sc.keys, keySpan{start, i})
		}
	}
	return true
}

// fnv is FNV-1a of k.
func fnv(k []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range k {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
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
