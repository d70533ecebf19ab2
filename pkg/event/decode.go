package event

import (
	"time"

	"github.com/google/uuid"
	"github.com/valyala/fastjson"

	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// Error codes a decoded event can fail with (docs/api.md): pkg/httperr's codes, which
// import nothing of the domain.
const (
	CodeInvalidJSON      = string(httperr.InvalidJSON)
	CodeValidationFailed = string(httperr.ValidationFailed)
	CodeInvalidTimestamp = string(httperr.InvalidTimestamp)
	CodePayloadTooLarge  = string(httperr.PayloadTooLarge)
)

// Error is why one event (or a whole body) was refused, with its docs/api.md code and a
// message that names the field in the old backend's style ("body/name must be string").
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func invalid(msg string) *Error { return &Error{Code: CodeValidationFailed, Message: msg} }

// Decoder decodes client input and Kafka messages. It keeps parser state and scratch
// buffers between calls, so it is not safe for concurrent use: keep one per goroutine
// or in a sync.Pool.
type Decoder struct {
	Limits Limits
	// YieldPause is the Yielder.Pause of SplitBatch's scan of a body (0: it only yields):
	// the ingestor's bulk lane sets it for big bodies.
	YieldPause time.Duration

	parser  fastjson.Parser
	scanner scanner
	clean   []byte
	payload []byte
	context []byte
	elems   [][]byte // SplitBatch's answer, reused
	names   map[string]string
	growth  int // NumberGrowth of the last event built
}

// NumberGrowth is how many bytes longer the payload and context of the event last
// returned by Build or BuildRaw get once stored: PostgreSQL writes jsonb numbers out in
// positional notation (1e300 is read back as 301 digits; see numbers.go). The ingestor
// bounds the event's encoding plus this by Limits.MaxEventBytes, so that what the api
// reads back is as bounded as what was accepted.
func (d *Decoder) NumberGrowth() int { return d.growth }

// maxNames bounds the names a Decoder keeps (see name).
const maxNames = 512

// name returns b as a string, the same string for the same bytes while fewer than
// maxNames distinct names were seen: event names repeat (a handful per project), and
// converting each anew was one allocation per event.
func (d *Decoder) name(b []byte) string {
	if s, ok := d.names[string(b)]; ok { // no allocation for the lookup
		return s
	}
	s := string(b)
	if len(d.names) < maxNames {
		if d.names == nil {
			d.names = make(map[string]string)
		}
		d.names[s] = s
	}
	return s
}

// NewDecoder returns a Decoder with the given limits.
func NewDecoder(l Limits) *Decoder { return &Decoder{Limits: l} }

// Parse sanitises body (see Sanitize), checks its JSON syntax strictly, refuses an object
// with a duplicate key (keys.go) and parses it. The returned value is valid until the
// next call to Parse or Build. The bool reports whether sanitising replaced anything.
func (d *Decoder) Parse(body []byte) (*fastjson.Value, bool, *Error) {
	return d.parse(body, "body", true)
}

// ParseAs is Parse for a document that messages call root ("events/3": an NDJSON line).
func (d *Decoder) ParseAs(body []byte, root string) (*fastjson.Value, bool, *Error) {
	return d.parse(body, root, true)
}

// parse is Parse; unique is false for Kafka messages (DecodeMessage).
func (d *Decoder) parse(body []byte, root string, unique bool) (*fastjson.Value, bool, *Error) {
	// fastjson is lenient (it accepts NaN, Inf, malformed numbers and escapes), so a
	// strict scanner that accepts exactly what json.Valid accepts decides what is JSON. It
	// bounds nesting iteratively, so deep input cannot overflow a stack, and it tells
	// whether Sanitize would change anything, so clean input is not copied. Sanitising
	// never changes whether a document is valid (see scanner), so checking the raw bytes
	// decides as checking the sanitised ones would.
	valid, dirty := d.scanner.scan(body, unique)
	changed := false
	src := body
	if dirty || !valid { // for invalid input, only so that changed means what it always did
		d.clean, changed = Sanitize(d.clean[:0], body)
		src = d.clean
	}
	if !valid {
		return nil, changed, &Error{Code: CodeInvalidJSON, Message: root + " is not valid JSON"}
	}
	if unique && d.scanner.keyDirty {
		// Sanitising can make two keys equal ("\xff" and "\xfe" both become U+FFFD):
		// look again at what is parsed.
		d.scanner.scan(src, true)
	}
	if d.scanner.hasDup {
		return nil, changed, &Error{Code: CodeInvalidJSON, Message: d.scanner.dup.message(root)}
	}
	// fastjson copies src, so the returned value never aliases body.
	v, err := d.parser.ParseBytes(src)
	if err != nil {
		// Valid JSON that fastjson refuses: nesting beyond its fixed maximum.
		return nil, changed, invalid(root + " must NOT be nested deeper than " + itoa(d.Limits.MaxDepth) + " levels")
	}
	return v, changed, nil
}

// APIKey returns the apiKey field of an event object, if it is a string.
func APIKey(v *fastjson.Value) (string, bool) {
	k := v.Get("apiKey")
	if k == nil || k.Type() != fastjson.TypeString {
		return "", false
	}
	b, _ := k.StringBytes()
	return string(b), true
}

// Build validates one client event object (as parsed by Parse) and returns the event with
// the server's fields set: the client's eventId or a new UUIDv7, the project, and the
// receive time. path prefixes field names in messages ("body", "body/events/3"). The
// returned Event's Payload and Context alias the Decoder's buffers and are valid until
// the next call; encode it with AppendJSON before that.
func (d *Decoder) Build(v *fastjson.Value, path string, projectID uuid.UUID, now time.Time) (Event, *Error) {
	ev := Event{ProjectID: projectID, ReceivedAt: now.UTC().Truncate(Precision)}
	d.growth = 0
	if v.Type() != fastjson.TypeObject {
		return ev, invalid(path + " must be object")
	}
	var typ, name, payload, ts, ctx, id *fastjson.Value
	var labels [NumLabels]*fastjson.Value
	obj, _ := v.Object()
	obj.Visit(func(k []byte, f *fastjson.Value) {
		switch string(k) {
		case WireType:
			typ = f
		case WireName:
			name = f
		case WirePayload:
			payload = f
		case WireTimestamp:
			ts = f
		case WireContext:
			ctx = f
		case WireEventID:
			id = f
		default:
			if l := labelIndex(k); l < NumLabels {
				labels[l] = f
			}
		}
	})
	if err := d.fill(&ev, path, typ, name, payload, ts, ctx, true); err != nil {
		return ev, err
	}
	if err := d.fillLabels(&ev, path, &labels, ctx); err != nil {
		return ev, err
	}
	if id != nil && id.Type() != fastjson.TypeNull {
		u, ok := parseUUID(id)
		if !ok {
			return ev, invalid(path + "/eventId must be a UUID")
		}
		ev.ID = u
	} else {
		u, err := uuid.NewV7()
		if err != nil {
			return ev, &Error{Code: CodeValidationFailed, Message: "generating an event id: " + err.Error()}
		}
		ev.ID = u
	}
	if ts == nil || ts.Type() == fastjson.TypeNull {
		ev.Timestamp = ev.ReceivedAt
	}
	return ev, nil
}

// fill validates the fields shared by client input and Kafka messages. client selects the
// client's rule for numbers (numbers.go).
func (d *Decoder) fill(ev *Event, path string, typ, name, payload, ts, ctx *fastjson.Value, client bool) *Error {
	switch {
	case typ == nil:
		return invalid(path + " must have required property 'type'")
	case name == nil:
		return invalid(path + " must have required property 'name'")
	case payload == nil:
		return invalid(path + " must have required property 'payload'")
	}
	if typ.Type() != fastjson.TypeString {
		return invalid(path + "/type must be string")
	}
	tb, _ := typ.StringBytes()
	t, ok := validType(tb)
	if !ok {
		return invalid(path + "/type must be equal to one of the allowed values (error, event, metric)")
	}
	ev.Type = t

	if name.Type() != fastjson.TypeString {
		return invalid(path + "/name must be string")
	}
	nb, _ := name.StringBytes()
	switch n := charCount(nb); {
	case n < 1:
		return invalid(path + "/name must NOT have fewer than 1 characters")
	case n > d.Limits.MaxNameChars:
		return invalid(path + "/name must NOT have more than " + itoa(d.Limits.MaxNameChars) + " characters")
	}
	ev.Name = d.name(nb)

	if payload.Type() != fastjson.TypeObject {
		return invalid(path + "/payload must be object")
	}
	var err *Error
	if d.payload, err = d.canonical(d.payload[:0], payload, path+"/payload", client); err != nil {
		return err
	}
	ev.Payload = d.payload

	ev.Context = nil
	if ctx != nil && ctx.Type() != fastjson.TypeNull {
		if ctx.Type() != fastjson.TypeObject {
			return invalid(path + "/context must be object")
		}
		if d.context, err = d.canonical(d.context[:0], ctx, path+"/context", client); err != nil {
			return err
		}
		ev.Context = d.context
	}

	if ts != nil && ts.Type() != fastjson.TypeNull {
		// A client may send any form ParseClientTime takes or epoch milliseconds; a Kafka
		// message carries what the ingestor wrote, always ISO-8601 (ParseTime).
		var t time.Time
		ok := false
		switch {
		case ts.Type() == fastjson.TypeString && client:
			sb, _ := ts.StringBytes()
			t, ok = ParseClientTime(string(sb))
		case ts.Type() == fastjson.TypeString:
			sb, _ := ts.StringBytes()
			t, ok = ParseTime(string(sb))
		case ts.Type() == fastjson.TypeNumber && client:
			if n, err := ts.Int64(); err == nil {
				t, ok = EpochMillis(n)
			}
		case client:
			return invalid(path + "/timestamp must be string or number")
		default:
			return invalid(path + "/timestamp must be string")
		}
		switch {
		case !ok && client:
			return &Error{Code: CodeInvalidTimestamp, Message: path + "/timestamp " + TimestampRule}
		case !ok:
			return &Error{Code: CodeInvalidTimestamp, Message: path + "/timestamp must be an ISO-8601 date-time between years 0001 and 9999"}
		}
		ev.Timestamp = t
	}
	return nil
}

// fillLabels sets ev's labels from their top-level members (a wrong type or length is
// an error) or, for a client event (ctx non-nil), from the context (see Field.Context:
// anything but a string of 1 to MaxLabelChars characters there is ignored).
func (d *Decoder) fillLabels(ev *Event, path string, labels *[NumLabels]*fastjson.Value, ctx *fastjson.Value) *Error {
	for l, v := range labels {
		if v == nil || v.Type() == fastjson.TypeNull {
			continue
		}
		b, err := v.StringBytes()
		if err != nil || !labelOK(b) {
			return labelError(path, labelFields[l], err == nil, b)
		}
		ev.Labels[l] = d.labelString(Label(l), b)
	}
	if ctx == nil || ctx.Type() != fastjson.TypeObject {
		return nil
	}
	for l, f := range labelFields {
		if ev.Labels[l] != "" {
			continue
		}
		for _, p := range f.Context {
			v := ctx.Get(p...)
			if v == nil || v.Type() != fastjson.TypeString {
				continue
			}
			if b, _ := v.StringBytes(); labelOK(b) {
				ev.Labels[l] = d.labelString(Label(l), b)
				break
			}
		}
	}
	return nil
}

// errNumber is appendValue's answer for a refused client number; canonical words it.
var errNumber = &Error{Code: CodeValidationFailed}

// canonical is appendValue for a payload or context object named path.
func (d *Decoder) canonical(dst []byte, v *fastjson.Value, path string, client bool) ([]byte, *Error) {
	dst, err := d.appendValue(dst, v, 1, path, client)
	if err == errNumber {
		msg, _ := badNumber(v, path)
		err = invalid(msg)
	}
	return dst, err
}

// appendValue re-encodes v canonically, enforcing the depth limit and the rule for
// numbers: a client's must be doubles (clientNumber, which adds to d.growth), a Kafka
// message's only storable by PostgreSQL's numeric type (storableNumber).
func (d *Decoder) appendValue(dst []byte, v *fastjson.Value, depth int, path string, client bool) ([]byte, *Error) {
	switch v.Type() {
	case fastjson.TypeObject, fastjson.TypeArray:
		if depth > d.Limits.MaxDepth {
			return dst, invalid(path + " must NOT be nested deeper than " + itoa(d.Limits.MaxDepth) + " levels")
		}
	}
	var err *Error
	switch v.Type() {
	case fastjson.TypeObject:
		obj, _ := v.Object()
		dst = append(dst, '{')
		first := true
		obj.Visit(func(k []byte, f *fastjson.Value) {
			if err != nil {
				return
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst, err = d.appendValue(dst, f, depth+1, path, client)
		})
		return append(dst, '}'), err
	case fastjson.TypeArray:
		arr, _ := v.Array()
		dst = append(dst, '[')
		for i, f := range arr {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = d.appendValue(dst, f, depth+1, path, client); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case fastjson.TypeString:
		sb, _ := v.StringBytes()
		return appendString(dst, sb), nil
	case fastjson.TypeNumber:
		start := len(dst)
		dst = v.MarshalTo(dst)
		if client {
			growth, verdict := clientNumber(dst[start:])
			if verdict != numberOK {
				return dst, errNumber
			}
			d.growth += growth
		} else if !storableNumber(dst[start:]) {
			return dst, invalid(path + " contains a number outside the storable range")
		}
		return dst, nil
	default: // true, false, null
		return v.MarshalTo(dst), nil
	}
}

func parseUUID(v *fastjson.Value) (uuid.UUID, bool) {
	if v.Type() != fastjson.TypeString {
		return uuid.Nil, false
	}
	b, _ := v.StringBytes()
	return parseUUIDBytes(b)
}

// parseUUIDBytes accepts the 36-character form of a UUID other than the nil UUID.
func parseUUIDBytes(b []byte) (uuid.UUID, bool) {
	if len(b) != 36 {
		return uuid.Nil, false
	}
	u, err := uuid.ParseBytes(b)
	if err != nil || u == uuid.Nil {
		return uuid.Nil, false
	}
	return u, true
}

var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999", // no zone: UTC, as JavaScript's Date does for ISO input
	"2006-01-02",
}

// ParseTime parses an ISO-8601 date-time as clients send it and truncates it to Precision.
// Years outside 0001–9999 are refused so that every accepted time is storable.
func ParseTime(s string) (time.Time, bool) {
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return storable(t)
		}
	}
	return time.Time{}, false
}

// TimestampRule completes "…/timestamp " in the error for a timestamp no form accepts.
const TimestampRule = "must be an RFC 3339 date-time, an HTTP date (RFC 1123) or a number of epoch milliseconds, between years 0001 and 9999"

// httpDateLayouts are the HTTP-date forms (RFC 9110 §5.6.7: IMF-fixdate, which is RFC
// 1123 in GMT, and the obsolete RFC 850 and asctime forms a recipient must accept), and
// RFC 1123 with a numeric zone (JavaScript's Date.prototype.toUTCString writes the first;
// mail-style clients the last).
var httpDateLayouts = []string{time.RFC1123, time.RFC1123Z, time.RFC850, time.ANSIC}

// ParseClientTime parses an event's timestamp as SDKs send it: any form ParseTime takes,
// or an HTTP date (the reference backend took whatever JavaScript's Date parses, and its
// clients send both). A named zone other than GMT or UTC is refused: Go would read an
// abbreviation it does not know as offset zero, silently moving the event.
func ParseClientTime(s string) (time.Time, bool) {
	if t, ok := ParseTime(s); ok {
		return t, true
	}
	for _, layout := range httpDateLayouts {
		t, err := time.Parse(layout, s)
		if err != nil {
			continue
		}
		if zone, _ := t.Zone(); (layout == time.RFC1123 || layout == time.RFC850) && zone != "GMT" && zone != "UTC" {
			continue
		}
		return storable(t)
	}
	return time.Time{}, false
}

// EpochMillis is the time of a timestamp sent as a number of milliseconds since the Unix
// epoch (JavaScript's Date.now()), within the storable years.
func EpochMillis(ms int64) (time.Time, bool) {
	const minMS, maxMS = -62135596800000, 253402300799999 // 0001-01-01T00:00:00Z, 9999-12-31T23:59:59.999Z
	if ms < minMS || ms > maxMS {
		return time.Time{}, false
	}
	return storable(time.UnixMilli(ms))
}

// storable is t in UTC truncated to Precision, if its year is within 0001–9999.
func storable(t time.Time) (time.Time, bool) {
	t = t.UTC()
	if y := t.Year(); y < 1 || y > 9999 {
		return time.Time{}, false
	}
	return t.Truncate(Precision), true
}

// DecodeMessage decodes and re-validates an event produced to Kafka. It is strict where
// client input is lenient: anything that would have needed sanitising, any missing server
// field and anything over the limits is an error, because a message that fails here did
// not come from a correct ingestor and must go to the dead-letter topic, not to Postgres.
// Numbers and duplicate keys are the exception: they are held only to what PostgreSQL
// stores (numbers within storableNumber; the last of duplicate keys wins, as in jsonb),
// not to the client's stricter rules, so that what any ingestor accepted, an older one
// included, is stored (docs/reliability.md promise 4). The returned Event owns its memory.
func (d *Decoder) DecodeMessage(value []byte) (Event, error) {
	var ev Event
	if len(value) > d.Limits.MaxEventBytes {
		return ev, &Error{Code: CodePayloadTooLarge, Message: "message is larger than " + itoa(d.Limits.MaxEventBytes) + " bytes"}
	}
	// What the ingestor wrote is in canonical form: take it without a parse tree.
	if ev, ok := d.decodeMessageRaw(value); ok {
		return ev, nil
	}
	return d.decodeMessageParsed(value)
}

// decodeMessageParsed is DecodeMessage through Parse, for any message.
func (d *Decoder) decodeMessageParsed(value []byte) (Event, error) {
	var ev Event
	v, changed, perr := d.parse(value, "body", false)
	if perr != nil {
		return ev, perr
	}
	if changed {
		return ev, invalid("message contains invalid UTF-8, NUL characters or unpaired surrogates")
	}
	if v.Type() != fastjson.TypeObject {
		return ev, invalid("message must be object")
	}
	var id, project, typ, name, payload, ts, ctx, recv *fastjson.Value
	var labels [NumLabels]*fastjson.Value
	obj, _ := v.Object()
	obj.Visit(func(k []byte, f *fastjson.Value) {
		switch string(k) {
		case WireID:
			id = f
		case WireProjectID:
			project = f
		case WireType:
			typ = f
		case WireName:
			name = f
		case WirePayload:
			payload = f
		case WireTimestamp:
			ts = f
		case WireContext:
			ctx = f
		case WireReceivedAt:
			recv = f
		default:
			if l := labelIndex(k); l < NumLabels {
				labels[l] = f
			}
		}
	})
	var ok bool
	if id == nil {
		return ev, invalid("message must have required property 'id'")
	}
	if ev.ID, ok = parseUUID(id); !ok {
		return ev, invalid("message/id must be a UUID")
	}
	if project == nil {
		return ev, invalid("message must have required property 'projectId'")
	}
	if ev.ProjectID, ok = parseUUID(project); !ok {
		return ev, invalid("message/projectId must be a UUID")
	}
	if ts == nil || ts.Type() == fastjson.TypeNull {
		return ev, invalid("message must have required property 'timestamp'")
	}
	if recv == nil || recv.Type() != fastjson.TypeString {
		return ev, invalid("message must have required property 'receivedAt'")
	}
	rb, _ := recv.StringBytes()
	if ev.ReceivedAt, ok = ParseTime(string(rb)); !ok {
		return ev, &Error{Code: CodeInvalidTimestamp, Message: "message/receivedAt must be an ISO-8601 date-time"}
	}
	if err := d.fill(&ev, "message", typ, name, payload, ts, ctx, false); err != nil {
		return ev, err
	}
	// A message's labels are the ones the ingestor decided: never promoted again.
	if err := d.fillLabels(&ev, "message", &labels, nil); err != nil {
		return ev, err
	}
	ev.Payload = append([]byte(nil), ev.Payload...)
	if ev.Context != nil {
		ev.Context = append([]byte(nil), ev.Context...)
	}
	return ev, nil
}
