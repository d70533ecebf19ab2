package event

import (
	"encoding/binary"
	"time"
	"unicode/utf8"
)

// maxNesting is encoding/json's nesting limit (maxNestingDepth in its scanner): json.Valid
// rejects a document with more than this many open objects and arrays.
const maxNesting = 10000

// byteClass classifies bytes inside a JSON string: 0 is plain content, anything else
// needs a closer look (the closing quote, an escape, a control character or the first
// byte of a multi-byte UTF-8 sequence).
var byteClass = func() (t [256]byte) {
	for c := 0; c < 0x20; c++ {
		t[c] = 1
	}
	t['"'], t['\\'] = 1, 1
	for c := utf8.RuneSelf; c < 256; c++ {
		t[c] = 1
	}
	return t
}()

// scanner checks JSON syntax in a single pass without copying. It accepts exactly what
// encoding/json's json.Valid accepts (RFC 8259, at most maxNesting levels, any bytes of
// 0x20 and above inside strings) and, for a valid document, also reports whether
// Sanitize would replace anything in it: invalid UTF-8, a \u0000 escape or an unpaired
// surrogate escape inside a string. Sanitize's replacements never change whether a
// document is valid JSON, so checking the raw bytes decides the same as checking the
// sanitised ones, and clean input (the common case) needs no copy at all.
type scanner struct {
	stack []byte // '{' or '[' for each open container
	// Filled by scanMarked: where each value one level down from the root ends (the
	// elements of a root array), and the deepest nesting seen.
	marks   []int
	deepest int
	// Filled by a scan with unique set (keys.go): whether a valid document has an object
	// with a duplicate key, and where.
	hasDup bool
	dup    duplicate
	uniq   uniqueKeys
	// keyDirty: a key needs sanitising, which may make it equal to another one (so
	// the sanitised document must be looked at again).
	keyDirty bool
	pause    time.Duration // the Yielder.Pause of a marking scan (SplitBatch)
}

// scan reports whether b is valid JSON and, if it is, whether it needs sanitising. With
// unique, it also looks for an object with a duplicate key (s.dup); valid still means
// only that b is JSON.
func (s *scanner) scan(b []byte, unique bool) (valid, dirty bool) {
	sc := scan{stack: s.stack[:0]}
	s.start(&sc, b, unique)
	valid, dirty = sc.json(b)
	s.stack = sc.stack
	s.finish(&sc, valid)
	return valid, dirty
}

// scanMarked is scan that also fills marks and deepest (SplitBatch).
func (s *scanner) scanMarked(b []byte, unique bool) (valid, dirty bool) {
	sc := scan{stack: s.stack[:0], marks: s.marks[:0], mark: true, yield: Yielder{Pause: s.pause}}
	s.start(&sc, b, unique)
	valid, dirty = sc.json(b)
	s.stack, s.marks, s.deepest = sc.stack, sc.marks, sc.deepest
	s.finish(&sc, valid)
	return valid, dirty
}

func (s *scanner) start(sc *scan, b []byte, unique bool) {
	s.hasDup, s.dup, s.keyDirty = false, duplicate{}, false
	if unique {
		s.uniq.reset(b)
		sc.uniq = &s.uniq
	}
}

func (s *scanner) finish(sc *scan, valid bool) {
	if sc.uniq == nil {
		return
	}
	sc.uniq.src = nil // keep nothing of the input
	// A syntax error decides before a duplicate key.
	if valid {
		s.hasDup, s.dup, s.keyDirty = sc.uniq.found, sc.uniq.dup, sc.keyDirty
	}
}

// scan is the state of one scan; its slices are the scanner's, returned for reuse.
type scan struct {
	stack    []byte
	marks    []int
	deepest  int
	mark     bool
	uniq     *uniqueKeys // nil: duplicate keys are not looked for
	keyDirty bool
	// A marking scan (a batch body, up to megabytes) yields between elements.
	yield  Yielder
	marked int // where the last element ended
}

// json checks b (see scanner).
func (sc *scan) json(b []byte) (valid, dirty bool) {
	stack := sc.stack
	defer func() { sc.stack = stack }()
	i := skipSpace(b, 0)
	var ok bool
value:
	if i >= len(b) {
		return false, false
	}
	switch c := b[i]; {
	case c == '{' || c == '[':
		if stack = append(stack, c); len(stack) > maxNesting {
			return false, false
		}
		if sc.mark && len(stack) > sc.deepest {
			sc.deepest = len(stack)
		}
		if sc.uniq != nil {
			sc.uniq.open()
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == c+2 { // '}' is '{'+2 and ']' is '['+2
			stack = stack[:len(stack)-1]
			if sc.uniq != nil {
				sc.uniq.close(false, stack)
			}
			i++
			goto end
		}
		if c == '{' {
			goto key
		}
		goto value
	case c == '"':
		if i, ok = scanString(b, i+1, &dirty, nil); !ok {
			return false, false
		}
	case c == '-' || (c >= '0' && c <= '9'):
		if i, ok = scanNumber(b, i); !ok {
			return false, false
		}
	case c == 't':
		if i, ok = scanLiteral(b, i, "true"); !ok {
			return false, false
		}
	case c == 'f':
		if i, ok = scanLiteral(b, i, "false"); !ok {
			return false, false
		}
	case c == 'n':
		if i, ok = scanLiteral(b, i, "null"); !ok {
			return false, false
		}
	default:
		return false, false
	}
end:
	if sc.mark && len(stack) == 1 {
		sc.marks = append(sc.marks, i)
		sc.yield.Add(i - sc.marked)
		sc.marked = i
	}
	i = skipSpace(b, i)
	if len(stack) == 0 {
		return i == len(b), dirty
	}
	if i >= len(b) {
		return false, false
	}
	switch top := stack[len(stack)-1]; b[i] {
	case ',':
		i = skipSpace(b, i+1)
		if top == '{' {
			goto key
		}
		if sc.uniq != nil {
			sc.uniq.next()
		}
		goto value
	case top + 2: // the matching closer
	default:
		return false, false
	}
	stack = stack[:len(stack)-1]
	if sc.uniq != nil {
		sc.uniq.close(b[i] == '}', stack)
	}
	i++
	goto end
key:
	// An object member: a string, a colon, then a value.
	if i >= len(b) || b[i] != '"' {
		return false, false
	}
	if sc.uniq == nil {
		if i, ok = scanString(b, i+1, &dirty, nil); !ok {
			return false, false
		}
	} else {
		start, escaped, keyDirty := i+1, false, false
		if i, ok = scanString(b, start, &keyDirty, &escaped); !ok {
			return false, false
		}
		if keyDirty {
			dirty, sc.keyDirty = true, true
		}
		sc.uniq.key(b[start:i-1], start, escaped, stack[:len(stack)-1])
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return false, false
	}
	i = skipSpace(b, i+1)
	goto value
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString checks a string whose opening quote precedes b[i] and returns the index
// after its closing quote. It sets *dirty when Sanitize would replace something in it,
// and *escaped (unless nil) when it has an escape.
func scanString(b []byte, i int, dirty, escaped *bool) (int, bool) {
	for {
		for i+8 <= len(b) && !needsAttention(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		for i < len(b) && byteClass[b[i]] == 0 {
			i++
		}
		if i >= len(b) {
			return i, false
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c == '\\':
			n, ok := scanEscape(b[i:], dirty)
			if !ok {
				return i, false
			}
			if escaped != nil {
				*escaped = true
			}
			i += n
		case c < 0x20:
			return i, false
		default: // non-ASCII: the run up to the next ASCII byte must be valid UTF-8
			j := i + 1
			for j < len(b) && b[j] >= utf8.RuneSelf {
				j++
			}
			if !utf8.Valid(b[i:j]) {
				*dirty = true
			}
			i = j
		}
	}
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// hasZeroByte reports whether any byte of w is zero.
func hasZeroByte(w uint64) bool { return (w-ones)&^w&highs != 0 }

// needsAttention reports whether any of the 8 bytes in w is special inside a JSON string
// (see byteClass): a quote, a backslash, a control character or a non-ASCII byte.
func needsAttention(w uint64) bool {
	return (w|(w-0x20*ones))&highs != 0 || // c >= 0x80, or c < 0x20
		hasZeroByte(w^('"'*ones)) || hasZeroByte(w^('\\'*ones))
}

// needsEscape reports whether any of the 8 bytes in w must be escaped in a JSON string:
// a quote, a backslash or a control character (non-ASCII bytes are copied as they are).
func needsEscape(w uint64) bool {
	return (w-0x20*ones)&^w&highs != 0 || hasZeroByte(w^('"'*ones)) || hasZeroByte(w^('\\'*ones))
}

// scanEscape checks the escape sequence at s[0] == '\\' and returns its length. It sets
// *dirty for the escapes Sanitize replaces (see escapeAt, which this mirrors).
func scanEscape(s []byte, dirty *bool) (int, bool) {
	if len(s) < 2 {
		return 0, false
	}
	switch s[1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2, true
	case 'u':
	default:
		return 0, false
	}
	r, ok := hex4(s[2:])
	if !ok {
		return 0, false
	}
	switch {
	case r == 0:
		*dirty = true
	case r >= 0xD800 && r <= 0xDBFF:
		if len(s) >= 12 && s[6] == '\\' && s[7] == 'u' {
			if r2, ok := hex4(s[8:]); ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
				return 12, true // a valid pair
			}
		}
		*dirty = true
	case r >= 0xDC00 && r <= 0xDFFF:
		*dirty = true
	}
	return 6, true
}

// scanNumber checks a number starting at b[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
// What follows it is checked by the caller (a delimiter, whitespace or the end).
func scanNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return i, false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func scanLiteral(b []byte, i int, lit string) (int, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}
