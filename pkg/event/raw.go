package event

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/valyala/fastjson"
)

// The raw path decodes client events without building a parse tree.
//
// Parse + Build turn an event into a fastjson tree and re-encode payload and context
// canonically from it: compact, strings re-escaped by appendString, numbers as written.
// For an event whose bytes are already in that form (no whitespace between tokens, no
// backslash in any string, which is what SDKs and JSON.stringify send), the canonical
// form is the input itself, so the raw path only walks the bytes once more to find the
// fields, check the limits and copy payload and context. Anything else, valid or not,
// goes to Parse + Build, which then decides, error messages included: the raw path
// either produces exactly what Build would or declines (FuzzRawPath checks this).
//
// The consumer's DecodeMessage has the same shortcut (decodeMessageRaw): the ingestor
// writes every Kafka message in canonical form, so a message is decoded by finding its
// fields, and only one that is not canonical is parsed (FuzzDecodeMessageRaw).

// rawMaxBodyDepth keeps the raw path clear of fastjson's own nesting limit (its MaxDepth
// is 300): deeper bodies go to Parse, which refuses them as a whole.
const rawMaxBodyDepth = 256

// SplitBatch returns the elements of body when it is a JSON array that the raw path can
// split: valid, nothing for Sanitize to replace, nested less than rawMaxBodyDepth.
// Elements may still be anything (BuildRaw declines what it cannot take). The slices
// alias body and d; they are valid until the next SplitBatch. ok is false for every
// other body: use Parse.
func (d *Decoder) SplitBatch(body []byte) (elems [][]byte, ok bool) {
	// The scan marks where each element ends, so splitting needs no second walk. A
	// duplicate key is Parse's to report.
	d.scanner.pause = d.YieldPause
	if valid, dirty := d.scanner.scanMarked(body, true); !valid || dirty || d.scanner.hasDup || d.scanner.deepest >= rawMaxBodyDepth {
		return nil, false
	}
	i := skipSpace(body, 0)
	if body[i] != '[' {
		return nil, false
	}
	d.elems = d.elems[:0]
	for _, end := range d.scanner.marks {
		i = skipSpace(body, i+1) // after the '[' or the ','
		d.elems = append(d.elems, body[i:end])
		i = skipSpace(body, end)
	}
	return d.elems, true
}

// SplitObject returns the event object that is body when the raw path can take it (as
// SplitBatch, for a single object).
func (d *Decoder) SplitObject(body []byte) ([]byte, bool) { return d.splitObject(body, true) }

// splitObject is SplitObject; unique is false for Kafka messages (decodeMessageRaw).
func (d *Decoder) splitObject(body []byte, unique bool) ([]byte, bool) {
	if valid, dirty := d.scanner.scanMarked(body, unique); !valid || dirty || d.scanner.hasDup || d.scanner.deepest >= rawMaxBodyDepth {
		return nil, false
	}
	// A valid document is one value between optional whitespace.
	obj := bytes.TrimRight(body[skipSpace(body, 0):], " \t\r\n")
	if obj[0] != '{' {
		return nil, false
	}
	return obj, true
}

// ParseElement parses one element of SplitBatch for Build (the general path).
func (d *Decoder) ParseElement(elem []byte) (*fastjson.Value, *Error) {
	v, err := d.parser.ParseBytes(elem)
	if err != nil { // cannot happen for an element of SplitBatch; kept as Parse words it
		return nil, invalid("body must NOT be nested deeper than " + itoa(d.Limits.MaxDepth) + " levels")
	}
	return v, nil
}

// BuildRaw is Build for an element of SplitBatch or SplitObject: when ok, ev is exactly
// what Build would return for projectID 0 (set ProjectID afterwards) and apiKey is what
// APIKey would return. When !ok, parse the element (ParseElement) and use Build and
// APIKey: the element is invalid, or valid but not in canonical form. ev's Payload and
// Context alias d's buffers, as with Build.
func (d *Decoder) BuildRaw(elem []byte, now time.Time) (ev Event, apiKey []byte, hasKey, ok bool) {
	ev.ReceivedAt = now.UTC().Truncate(Precision)
	d.growth = 0
	if len(elem) < 2 || elem[0] != '{' {
		return ev, nil, false, false
	}
	var typ, name, payload, ts, ctx, id []byte
	var labels [NumLabels][]byte
	keySeen := false
	f := d.members(elem, true)
	for {
		k, v, more, ok := f.next()
		if !ok {
			return ev, nil, false, false
		}
		if !more {
			break
		}
		// The scan refused duplicate keys; were there any, these would pick the same
		// occurrences as Build's Visit (the last) and APIKey's Get (the first).
		switch string(k) {
		case WireType:
			typ = v
		case WireName:
			name = v
		case WirePayload:
			payload = v
		case WireTimestamp:
			ts = v
		case WireContext:
			ctx = v
		case WireEventID:
			id = v
		case "apiKey": // APIKey's Get: the first occurrence wins
			if !keySeen {
				keySeen = true
				if v[0] == '"' { // any other type counts as no key
					if apiKey, ok = plainString(v, 0); !ok {
						return ev, nil, false, false
					}
					hasKey = true
				}
			}
		default:
			if l := labelIndex(k); l < NumLabels {
				labels[l] = v
			}
		}
	}
	if typ == nil || name == nil || payload == nil {
		return ev, nil, false, false
	}
	if ev.Type, ok = rawType(typ); !ok {
		return ev, nil, false, false
	}
	if ev.Name, ok = d.rawName(name); !ok {
		return ev, nil, false, false
	}
	d.payload = append(d.payload[:0], payload...)
	ev.Payload = d.payload
	if ctx != nil && !isNull(ctx) {
		d.context = append(d.context[:0], ctx...)
		ev.Context = d.context
	}
	if !d.rawLabels(&ev, &labels) {
		return ev, nil, false, false
	}
	if ev.Context != nil {
		d.rawContextLabels(&ev, ev.Context)
	}
	if ts != nil && !isNull(ts) {
		if ev.Timestamp, ok = rawClientTime(ts); !ok {
			return ev, nil, false, false
		}
	} else {
		ev.Timestamp = ev.ReceivedAt
	}
	if id != nil && !isNull(id) {
		if ev.ID, ok = rawUUID(id); !ok {
			return ev, nil, false, false
		}
	} else {
		u, err := uuid.NewV7()
		if err != nil {
			return ev, nil, false, false
		}
		ev.ID = u
	}
	return ev, apiKey, hasKey, true
}

func isNull(v []byte) bool { return string(v) == "null" }

// rawUUID, rawTime, rawType and rawName read a member's value, a string without
// escapes, as Build and DecodeMessage read those fields; ok is false otherwise (a nil v
// included).
func rawUUID(v []byte) (uuid.UUID, bool) {
	s, ok := plainString(v, 0)
	if !ok {
		return uuid.Nil, false
	}
	return parseUUIDBytes(s)
}

func rawTime(v []byte) (time.Time, bool) {
	s, ok := plainString(v, 0)
	if !ok {
		return time.Time{}, false
	}
	return ParseTime(string(s))
}

// rawClientTime reads an event's timestamp as Build does: a string in any form
// ParseClientTime takes, or an integer of epoch milliseconds. Anything else (a fraction,
// an exponent, an escape) is left to Build, which words the error.
func rawClientTime(v []byte) (time.Time, bool) {
	if len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9') {
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return time.Time{}, false
		}
		return EpochMillis(n)
	}
	s, ok := plainString(v, 0)
	if !ok {
		return time.Time{}, false
	}
	return ParseClientTime(string(s))
}

func rawType(v []byte) (string, bool) {
	s, ok := plainString(v, 0)
	if !ok {
		return "", false
	}
	return validType(s)
}

func (d *Decoder) rawName(v []byte) (string, bool) {
	s, ok := plainString(v, 0)
	if c := charCount(s); !ok || c < 1 || c > d.Limits.MaxNameChars {
		return "", false
	}
	return d.name(s), true
}

// rawMembers walks the members of an object in canonical form (see canonicalEnd for
// "payload" and "context", which are checked while their end is found; client selects
// the client's rule for their numbers).
type rawMembers struct {
	d      *Decoder
	obj    []byte
	i      int
	done   bool
	client bool
}

func (d *Decoder) members(obj []byte, client bool) rawMembers {
	return rawMembers{d: d, obj: obj, i: 1, client: client}
}

// next returns the next member: more is false after the last one. ok is false when obj
// is not an object in canonical form (whitespace, an escaped key, a payload or context
// that canonicalEnd refuses), or has no member: the general path decides then.
func (m *rawMembers) next() (k, v []byte, more, ok bool) {
	obj, i := m.obj, m.i
	if m.done {
		return nil, nil, false, true
	}
	if len(obj) < 2 || obj[0] != '{' || i >= len(obj) || obj[i] != '"' {
		return nil, nil, false, false // not an object, an empty one, or whitespace
	}
	// A key: in canonical form it has no escapes, so it is compared as it is.
	k, ok = plainString(obj, i)
	if !ok {
		return nil, nil, false, false
	}
	i += len(k) + 2
	if i >= len(obj) || obj[i] != ':' {
		return nil, nil, false, false
	}
	i++
	var end int
	switch string(k) {
	case "payload", "context":
		// Objects are checked while their end is found: one walk.
		if string(k) == "context" && bytes.HasPrefix(obj[i:], []byte("null")) {
			end = i + len("null")
			break
		}
		if end, ok = m.d.canonicalEnd(obj, i, m.client); !ok {
			return nil, nil, false, false
		}
	default:
		end = valueEnd(obj, i)
	}
	if end == i {
		return nil, nil, false, false // whitespace before the value
	}
	v = obj[i:end]
	switch {
	case end < len(obj) && obj[end] == ',':
		m.i = end + 1
	case end == len(obj)-1 && obj[end] == '}':
		m.done = true
	default:
		return nil, nil, false, false // whitespace
	}
	return k, v, true, true
}

// decodeMessageRaw is DecodeMessage for a message in canonical form, which is what the
// ingestor writes (AppendJSON): when ok, ev is exactly what DecodeMessage returns. When
// !ok, DecodeMessage parses the message and decides (FuzzDecodeMessageRaw checks this).
func (d *Decoder) decodeMessageRaw(value []byte) (ev Event, ok bool) {
	obj, ok := d.splitObject(value, false)
	if !ok {
		return ev, false
	}
	var id, project, typ, name, payload, ts, ctx, recv []byte
	var labels [NumLabels][]byte
	m := d.members(obj, false)
	for {
		k, v, more, ok := m.next()
		if !ok {
			return ev, false
		}
		if !more {
			break
		}
		switch string(k) { // DecodeMessage's Visit: the last occurrence wins
		case WireID:
			id = v
		case WireProjectID:
			project = v
		case WireType:
			typ = v
		case WireName:
			name = v
		case WirePayload:
			payload = v
		case WireTimestamp:
			ts = v
		case WireContext:
			ctx = v
		case WireReceivedAt:
			recv = v
		default:
			if l := labelIndex(k); l < NumLabels {
				labels[l] = v
			}
		}
	}
	if payload == nil { // the other fields: their reader refuses nil
		return ev, false
	}
	var okID, okProject, okRecv, okTS, okType, okName bool
	ev.ID, okID = rawUUID(id)
	ev.ProjectID, okProject = rawUUID(project)
	ev.ReceivedAt, okRecv = rawTime(recv)
	ev.Timestamp, okTS = rawTime(ts)
	ev.Type, okType = rawType(typ)
	ev.Name, okName = d.rawName(name)
	if !okID || !okProject || !okRecv || !okTS || !okType || !okName || !d.rawLabels(&ev, &labels) {
		return ev, false
	}
	ev.Payload = append([]byte(nil), payload...)
	if ctx != nil && !isNull(ctx) {
		ev.Context = append([]byte(nil), ctx...)
	}
	return ev, true
}

// rawLabels sets ev's labels from their top-level members as fillLabels does, or
// reports false when one is neither absent, null nor a plain string within the bounds
// (the general path then decides, error included).
func (d *Decoder) rawLabels(ev *Event, labels *[NumLabels][]byte) bool {
	for l, v := range labels {
		if v == nil || isNull(v) {
			continue
		}
		s, ok := plainString(v, 0)
		if !ok || !labelOK(s) {
			return false
		}
		ev.Labels[l] = d.labelString(Label(l), s)
	}
	return true
}

// rawContextLabels is fillLabels' promotion from the context for a context in canonical
// form (canonicalEnd accepted it: no whitespace, no escape, no duplicate key): one walk
// over its top-level members picks those the labels' paths start with, then each unset
// label looks along its paths as ctx.Get does.
func (d *Decoder) rawContextLabels(ev *Event, ctx []byte) {
	need := false
	for _, s := range ev.Labels {
		need = need || s == ""
	}
	if !need {
		return
	}
	var vals [maxContextKeys][]byte
	found := false
	for i := 1; i < len(ctx) && ctx[i] == '"'; {
		k, ok := plainString(ctx, i)
		if !ok {
			return
		}
		i += len(k) + 3 // the key, its quotes and the colon
		end := valueEnd(ctx, i)
		for j, ck := range contextKeys {
			if ck == string(k) {
				vals[j], found = ctx[i:end], true
				break
			}
		}
		if end >= len(ctx) || ctx[end] != ',' {
			break
		}
		i = end + 1
	}
	if !found {
		return
	}
	for l, f := range labelFields {
		if ev.Labels[l] != "" {
			continue
		}
		for n, p := range f.Context {
			v := vals[f.contextKey[n]]
			for _, k := range p[1:] {
				v = rawMember(v, k)
			}
			if len(v) == 0 || v[0] != '"' {
				continue
			}
			if s, ok := plainString(v, 0); ok && labelOK(s) {
				ev.Labels[l] = d.labelString(Label(l), s)
				break
			}
		}
	}
}

// rawMember returns the value of member k of obj, an object in canonical form, or nil
// (obj is not an object, or has no member k).
func rawMember(obj []byte, k string) []byte {
	if len(obj) < 2 || obj[0] != '{' {
		return nil
	}
	for i := 1; i < len(obj) && obj[i] == '"'; {
		key, ok := plainString(obj, i)
		if !ok {
			return nil
		}
		i += len(key) + 3
		end := valueEnd(obj, i)
		if string(key) == k {
			return obj[i:end]
		}
		if end >= len(obj) || obj[end] != ',' {
			return nil
		}
		i = end + 1
	}
	return nil
}

// plainString returns the content of the string whose opening quote is b[i] when it has
// no escape (b is valid JSON, so the next quote closes it).
func plainString(b []byte, i int) ([]byte, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, false
	}
	j := bytes.IndexByte(b[i+1:], '"')
	if j < 0 {
		return nil, false
	}
	s := b[i+1 : i+1+j]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	return s, true
}

// canonicalEnd returns the end of the object that starts at b[i] when it is already in
// the form appendValue gives it, within the limits Build enforces: no whitespace between
// tokens, no escape in any string, nesting within Limits.MaxDepth (the object itself is
// depth 1) and every number within appendValue's rule (client's: a double, whose growth
// is added to d.growth; otherwise storable). ok is false otherwise, or when b[i] is not
// '{'. b is valid JSON.
func (d *Decoder) canonicalEnd(b []byte, i int, client bool) (end int, ok bool) {
	if i >= len(b) || b[i] != '{' {
		return i, false
	}
	depth := 0
	for i < len(b) {
		switch c := b[i]; c {
		case '{', '[':
			if depth++; depth > d.Limits.MaxDepth {
				return i, false
			}
			i++
		case '}', ']':
			i++
			if depth--; depth == 0 {
				return i, true
			}
		case ',', ':':
			i++
		case '"':
			s, ok := plainString(b, i)
			if !ok {
				return i, false
			}
			i += len(s) + 2
		case 't', 'n':
			i += 4
		case 'f':
			i += 5
		case ' ', '\t', '\n', '\r':
			return i, false
		default: // a number
			j := i + 1
			for j < len(b) && numberByte[b[j]] {
				j++
			}
			if client {
				growth, verdict := clientNumber(b[i:j])
				if verdict != numberOK {
					return i, false
				}
				d.growth += growth
			} else if !storableNumber(b[i:j]) {
				return i, false
			}
			i = j
		}
	}
	return i, false
}

// numberByte is true for the bytes a JSON number can continue with.
var numberByte = func() (t [256]bool) {
	for _, c := range []byte("0123456789+-.eE") {
		t[c] = true
	}
	return t
}()

// valueEnd returns the end of the valid JSON value starting at b[i] (i itself when b[i]
// starts none, e.g. whitespace).
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
	case ' ', '\t', '\n', '\r', ',', ']', '}', ':':
		return i
	default: // number or literal
		j := i + 1
		for j < len(b) && (numberByte[b[j]] || (b[j] >= 'a' && b[j] <= 'z')) {
			j++
		}
		return j
	}
	depth := 0
	for j := i; j < len(b); {
		switch b[j] {
		case '"':
			j = stringEnd(b, j)
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				return j + 1
			}
		}
		j++
	}
	return len(b)
}

// stringEnd returns the index after the string whose opening quote is b[i].
func stringEnd(b []byte, i int) int {
	j := i + 1
	for {
		// Skip 8 bytes at a time while none is a quote or a backslash.
		for j+8 <= len(b) {
			w := binary.LittleEndian.Uint64(b[j:])
			if hasZeroByte(w^('"'*ones)) || hasZeroByte(w^('\\'*ones)) {
				break
			}
			j += 8
		}
		for j < len(b) && b[j] != '"' && b[j] != '\\' {
			j++
		}
		switch {
		case j >= len(b):
			return len(b)
		case b[j] == '"':
			return j + 1
		}
		j += 2 // an escape: its second byte is never a closing quote
	}
}
