package event

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// Duplicate keys are refused everywhere a client sends JSON (the ingestor and the api):
// a body in which one object has the same key twice is answered 400 INVALID_JSON. RFC
// 8259 leaves the meaning of such an object to each parser, and parsers disagree: the
// ingestor's apiKey lookup took the first occurrence and its event fields the last,
// jsonb and JSON.parse keep the last, and the canonical payload carried both. Refusing
// them leaves one meaning for every reader. Keys are compared as decoded strings, so
// "a" and "\u0061" are the same key. Kafka messages are not checked (DecodeMessage):
// the consumer stores whatever an ingestor, an older one included, produced.

// linearKeys: an object's first keys are compared one by one as they are scanned; an
// object with more is sorted when it closes, so 200,000 keys cost n log n, not n².
const linearKeys = 16

// uniqueKeys is the scanner's state for finding a duplicate key. Keys are kept as
// offsets, not slices: no pointers to write (and for the garbage collector to scan) per
// key, and nothing that keeps the input alive after the scan.
type uniqueKeys struct {
	src    []byte    // the input, during a scan
	keys   []keySpan // the keys of every open object, outermost first
	cur    frame     // the innermost open container
	frames []frame   // the containers around it, outermost last; frames[0] is none
	unesc  []byte    // keys with escapes, decoded
	found  bool
	dup    duplicate
}

// keySpan is a key: src[off:off+n], or unesc[^off:^off+n] when off is negative.
type keySpan struct{ off, n int }

type frame struct {
	keys  int    // where the container's keys start in keys (objects)
	index int    // the element being scanned (arrays)
	seen  uint64 // a bit per keyHash of the keys so far (objects)
}

// duplicate is where the first duplicate key was found.
type duplicate struct {
	path string // of the object, from the root: "/payload/items/3"
	key  string // for the message: valid UTF-8, shortened
}

// message is the INVALID_JSON message for a duplicate key in the document named root.
func (d duplicate) message(root string) string {
	return root + d.path + ` must NOT have duplicate keys ("` + d.key + `" appears more than once)`
}

func (u *uniqueKeys) reset(src []byte) {
	u.src, u.keys, u.frames, u.unesc, u.cur = src, u.keys[:0], u.frames[:0], u.unesc[:0], frame{}
	u.found, u.dup = false, duplicate{}
}

// retained is the memory the state keeps between scans, in bytes.
func (u *uniqueKeys) retained() int { return 16*cap(u.keys) + 24*cap(u.frames) + cap(u.unesc) }

func (u *uniqueKeys) text(k keySpan) []byte {
	if k.off < 0 {
		return u.unesc[^k.off : ^k.off+k.n]
	}
	return u.src[k.off : k.off+k.n]
}

// open is called for '{' and '['.
func (u *uniqueKeys) open() {
	u.frames = append(u.frames, u.cur)
	u.cur = frame{keys: len(u.keys)}
}

// next is called for a ',' between array elements.
func (u *uniqueKeys) next() { u.cur.index++ }

// keyHash picks one of 64 bits for a key: keys whose bits differ are different, so most
// keys are compared with none of their object's others.
func keyHash(k []byte) uint64 {
	if len(k) == 0 {
		return 1
	}
	return 1 << ((uint(len(k))*7 + uint(k[0])*3 + uint(k[len(k)-1])) & 63)
}

// key records the key k = src[start:start+len(k)] (the bytes between its quotes; escaped
// tells whether there is a backslash among them) of the innermost open object; enclosing
// are the containers around that object ('{' or '['). After a duplicate was found it
// goes on recording (report keeps the first), which costs less than checking.
func (u *uniqueKeys) key(k []byte, start int, escaped bool, enclosing []byte) {
	ks := keySpan{off: start, n: len(k)}
	if escaped {
		off := len(u.unesc)
		u.unesc = appendUnescaped(u.unesc, k)
		k = u.unesc[off:]
		ks = keySpan{off: ^off, n: len(k)}
	}
	h := keyHash(k)
	if u.cur.seen&h != 0 {
		if level := u.keys[u.cur.keys:]; len(level) < linearKeys {
			for _, o := range level {
				if o.n == ks.n && string(u.text(o)) == string(k) {
					u.report(k, enclosing)
					return
				}
			}
		}
	}
	u.cur.seen |= h
	u.keys = append(u.keys, ks)
}

// close is called after a container closed: object tells whether it was a non-empty
// object, enclosing are the containers around it.
func (u *uniqueKeys) close(object bool, enclosing []byte) {
	if level := u.keys[u.cur.keys:]; object && !u.found && len(level) > linearKeys {
		slices.SortFunc(level, func(a, b keySpan) int { return bytes.Compare(u.text(a), u.text(b)) })
		for i := 1; i < len(level); i++ {
			if k := u.text(level[i]); bytes.Equal(u.text(level[i-1]), k) {
				u.report(k, enclosing)
				break
			}
		}
	}
	u.keys = u.keys[:u.cur.keys]
	u.cur = u.frames[len(u.frames)-1]
	u.frames = u.frames[:len(u.frames)-1]
}

// report records the duplicate k of the object inside enclosing, unless one was found
// before (cold: once per scan).
func (u *uniqueKeys) report(k, enclosing []byte) {
	if u.found {
		return
	}
	// The frame of enclosing[j]; the object itself (u.cur) is one level further in.
	frameOf := func(j int) frame {
		if j == len(enclosing) {
			return u.cur
		}
		return u.frames[j+1]
	}
	var p []byte
	for j, c := range enclosing {
		p = append(p, '/')
		if c == '{' {
			// The member of that object being scanned: its last key so far.
			p = appendPointerSegment(p, u.text(u.keys[frameOf(j+1).keys-1]))
		} else {
			p = strconv.AppendInt(p, int64(frameOf(j).index), 10)
		}
	}
	u.found = true
	u.dup = duplicate{path: string(p), key: shortText(k)}
}

// maxSegment bounds a key quoted in a message, in bytes.
const maxSegment = 64

// shortText is k as valid UTF-8, cut to about maxSegment bytes.
func shortText(k []byte) string {
	s := strings.ToValidUTF8(string(k), "\uFFFD")
	if len(s) <= maxSegment {
		return s
	}
	cut := maxSegment
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// appendPointerSegment appends k as a JSON Pointer segment (RFC 6901: ~ is ~0, / is ~1),
// shortened as shortText does.
func appendPointerSegment(dst, k []byte) []byte {
	s := shortText(k)
	if strings.ContainsAny(s, "~/") {
		s = strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
	}
	return append(dst, s...)
}

// appendUnescaped appends the decoded content of a valid JSON string (without its
// quotes). Unpaired surrogates become U+FFFD, as encoding/json decodes them.
func appendUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch e := s[i+1]; e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(s[i+2:])
			i += 6
			if utf16.IsSurrogate(r) {
				r2, ok := rune(0), false
				if r < 0xDC00 && i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					r2, ok = hex4(s[i+2:])
				}
				if ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
					r = utf16.DecodeRune(r, r2)
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, e)
		}
		i += 2
	}
	return dst
}

// CheckUniqueKeys returns the INVALID_JSON error for a JSON document with a duplicate key
// in one of its objects, and nil otherwise (or when b is not JSON at all: the caller's
// parser decides that). root names the document in the message ("body"). Keys are
// compared as Parse would see them: decoded and sanitised. It is the api's check; the
// ingestor's Parse, SplitBatch and SplitObject make it while they scan.
func CheckUniqueKeys(b []byte, root string) *Error {
	s := scanners.Get().(*scanner)
	defer func() {
		if s.uniq.retained() <= 1<<20 {
			scanners.Put(s)
		}
	}()
	valid, dirty := s.scan(b, true)
	if !valid {
		return nil
	}
	if dirty && s.keyDirty {
		clean, _ := Sanitize(nil, b)
		s.scan(clean, true)
	}
	if s.hasDup {
		return &Error{Code: CodeInvalidJSON, Message: s.dup.message(root)}
	}
	return nil
}

// scanners are CheckUniqueKeys' scanners: a client SDK checks every raw payload.
var scanners = sync.Pool{New: func() any { return new(scanner) }}
