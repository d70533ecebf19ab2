package event

import (
	"unicode/utf8"
)

const replacementEscape = `\ufffd`

// Sanitize appends src to dst with every JSON string made storable by PostgreSQL's jsonb
// and text types: invalid UTF-8 sequences, \u0000 escapes and unpaired UTF-16 surrogate
// escapes become U+FFFD. Bytes outside strings are copied unchanged, and src is not
// otherwise validated (Decoder.Parse checks the syntax as json.Valid would).
//
// This must happen on the raw bytes, before decoding: encoding/json and fastjson both
// map invalid UTF-8 silently, and once a NUL has been re-marshalled it is the escape
// text \u0000 again (docs/reliability.md X3/X4). The second result reports whether anything
// was replaced, which the consumer uses to reject messages that bypassed the ingestor.
func Sanitize(dst, src []byte) ([]byte, bool) {
	changed := false
	inString := false
	i := 0
	for i < len(src) {
		// Copy the longest run that needs no attention in one append.
		j := i
		if inString {
			for j < len(src) && src[j] != '"' && src[j] != '\\' && src[j] < utf8.RuneSelf {
				j++
			}
		} else {
			for j < len(src) && src[j] != '"' {
				j++
			}
		}
		dst = append(dst, src[i:j]...)
		i = j
		if i >= len(src) {
			break
		}
		c := src[i]
		switch {
		case c == '"':
			inString = !inString
			dst = append(dst, c)
			i++
		case c == '\\':
			n, repl := escapeAt(src[i:])
			if repl {
				dst = append(dst, replacementEscape...)
				changed = true
			} else {
				dst = append(dst, src[i:i+n]...)
			}
			i += n
		default: // non-ASCII byte inside a string
			r, size := utf8.DecodeRune(src[i:])
			if r == utf8.RuneError && size <= 1 {
				dst = append(dst, "\uFFFD"...)
				changed = true
				i++
				continue
			}
			dst = append(dst, src[i:i+size]...)
			i += size
		}
	}
	return dst, changed
}

// escapeAt looks at the escape sequence starting at s[0] == '\\' and returns its length
// and whether it must be replaced by \ufffd (a NUL or an unpaired surrogate).
func escapeAt(s []byte) (n int, replace bool) {
	if len(s) < 2 {
		return len(s), false
	}
	if s[1] >= utf8.RuneSelf {
		// An invalid escape of a non-ASCII character: copy only the backslash so that the
		// bytes after it are UTF-8-checked like any others (the syntax check rejects it).
		return 1, false
	}
	if s[1] != 'u' {
		return 2, false
	}
	r, ok := hex4(s[2:])
	if !ok {
		return 2, false // malformed; the syntax check rejects it
	}
	switch {
	case r == 0:
		return 6, true
	case r >= 0xD800 && r <= 0xDBFF:
		if len(s) >= 12 && s[6] == '\\' && s[7] == 'u' {
			if r2, ok := hex4(s[8:]); ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
				return 12, false // a valid pair
			}
		}
		return 6, true
	case r >= 0xDC00 && r <= 0xDFFF:
		return 6, true
	}
	return 6, false
}

func hex4(s []byte) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s[:4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}
