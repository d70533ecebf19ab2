package event

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The event schema, declared once (issue 19 item 1). Fields lists every stored event
// field: its member in the event object (the canonical encoding: the ingest answer, the
// Kafka message, the Redis message, every API and live answer), its column in events,
// its kind and where it comes from. What is generic derives from the table:
//
//   - the consumer's COPY column list and row values (Columns, Field.Ptr);
//   - the api store's SELECT list and row scans, the SSE replay's included
//     (SelectList, Field.Ptr);
//   - the labels (KindLabel): decoded on both client paths (raw and tree), promoted
//     from the context, checked, encoded canonically, decoded from Kafka messages on
//     both paths, filtered by in the events API and the live streams, and indexed, all by
//     loops over the table.
//
// The decoders' hand-written switches for the core fields (the ingest hot path) name
// their members with the Wire constants below; TestFieldsRoundTrip checks that every
// field of the table survives client decode → encode → message decode, and
// TestEventColumnsMatchFieldTable (consumer/internal/eventstore/fields_test.go) that the
// columns of events are exactly the table's, with their types. docs/contributing.md "A new stored
// event field" lists what a new field touches.

// Member names of the core fields in the event object.
const (
	WireID         = "id"
	WireProjectID  = "projectId"
	WireType       = "type"
	WireName       = "name"
	WirePayload    = "payload"
	WireTimestamp  = "timestamp"
	WireReceivedAt = "receivedAt"
	WireContext    = "context"
	// WireEventID is the member a client sends its own event id in.
	WireEventID = "eventId"
)

// Kind is how a field is typed, checked, stored and encoded.
type Kind uint8

// Kinds.
const (
	KindUUID   Kind = iota + 1 // uuid column; uuid.UUID
	KindType                   // text column; one of TypeError, TypeEvent, TypeMetric
	KindName                   // text column; 1 to Limits.MaxNameChars characters
	KindObject                 // jsonb column; a canonical JSON object ([]byte)
	KindTime                   // timestamptz column; time.Time at Precision
	KindLabel                  // nullable text column; an optional short string, see Label
)

// Label indexes Event.Labels: the optional short strings users filter events by.
type Label uint8

// Labels, in the order of their fields in Fields. NumLabels is their count.
const (
	LabelRelease Label = iota
	LabelEnvironment
	LabelSessionID
	LabelUserID
	NumLabels
)

// Labels holds an event's labels; "" is unset (a label is never empty).
type Labels [NumLabels]string

// MaxLabelChars bounds a label, in characters (as names are bounded).
const MaxLabelChars = DefaultMaxNameChars

// Field is one stored event field.
type Field struct {
	// Wire is the member in the event object; Column the column of events.
	Wire, Column string
	Kind         Kind
	// Nullable: the column may be NULL, and the member is omitted from the event object
	// when it is unset.
	Nullable bool
	// Client is the member a client sends the field in ("" when only the server sets
	// it: the project, the receive time).
	Client string
	// Label is the field's index in Event.Labels (KindLabel only).
	Label Label
	// Context lists where in the event's context a label is looked for when the client
	// did not send it at the top level, in order; the first string of 1 to
	// MaxLabelChars characters found is taken, anything else is ignored (KindLabel only).
	Context [][]string
	// Intern: the label takes few values (a release, an environment), so decoders keep
	// one copy of each string rather than allocating it per event.
	Intern bool

	ptr func(e *Event) any
	// contextKey[n] indexes contextKeys with Context[n][0].
	contextKey []int
	// encodePrefix is `,"<Wire>":` (labels).
	encodePrefix string
}

// Fields is the event schema: every stored event field, core fields first in the order
// of the canonical encoding, then the labels in Label order.
var Fields = [...]Field{
	{Wire: WireID, Column: "id", Kind: KindUUID, Client: WireEventID, ptr: func(e *Event) any { return &e.ID }},
	{Wire: WireProjectID, Column: "project_id", Kind: KindUUID, ptr: func(e *Event) any { return &e.ProjectID }},
	{Wire: WireType, Column: "type", Kind: KindType, Client: WireType, ptr: func(e *Event) any { return &e.Type }},
	{Wire: WireName, Column: "name", Kind: KindName, Client: WireName, ptr: func(e *Event) any { return &e.Name }},
	{Wire: WirePayload, Column: "payload", Kind: KindObject, Client: WirePayload, ptr: func(e *Event) any { return &e.Payload }},
	{Wire: WireTimestamp, Column: "timestamp", Kind: KindTime, Client: WireTimestamp, ptr: func(e *Event) any { return &e.Timestamp }},
	{Wire: WireReceivedAt, Column: "received_at", Kind: KindTime, ptr: func(e *Event) any { return &e.ReceivedAt }},
	{Wire: WireContext, Column: "context", Kind: KindObject, Nullable: true, Client: WireContext, ptr: func(e *Event) any { return &e.Context }},

	// Labels. The context paths are where the React Native SDK of mrarslanark/pulseboard
	// puts them (context.app, .device, .session, .user), after the flat key a generic
	// client would use.
	{Wire: "release", Column: "release", Kind: KindLabel, Nullable: true, Client: "release", Label: LabelRelease, Intern: true,
		Context: [][]string{{"release"}, {"app", "appVersion"}, {"device", "appVersion"}}},
	{Wire: "environment", Column: "environment", Kind: KindLabel, Nullable: true, Client: "environment", Label: LabelEnvironment, Intern: true,
		Context: [][]string{{"environment"}, {"app", "environment"}}},
	{Wire: "sessionId", Column: "session_id", Kind: KindLabel, Nullable: true, Client: "sessionId", Label: LabelSessionID,
		Context: [][]string{{"sessionId"}, {"session", "sessionId"}}},
	{Wire: "userId", Column: "user_id", Kind: KindLabel, Nullable: true, Client: "userId", Label: LabelUserID,
		Context: [][]string{{"userId"}, {"user", "userId"}}},
}

// maxContextKeys bounds contextKeys (the raw path keeps their values in an array).
const maxContextKeys = 16

// labelFields[l] is the field of label l; contextKeys are the distinct first elements
// of the labels' context paths (the context members the decoders look at).
var (
	labelFields [NumLabels]*Field
	contextKeys []string
)

func init() {
	seen := map[string]bool{}
	for i := range Fields {
		f := &Fields[i]
		if f.Kind != KindLabel {
			if f.ptr == nil {
				panic("event: field " + f.Wire + " has no accessor")
			}
			continue
		}
		if f.Label >= NumLabels || labelFields[f.Label] != nil || !f.Nullable || f.Client == "" {
			panic("event: label field " + f.Wire + " is misdeclared")
		}
		l := f.Label
		f.ptr = func(e *Event) any { return &e.Labels[l] }
		f.encodePrefix = `,"` + f.Wire + `":`
		labelFields[l] = f
		for _, p := range f.Context {
			if !seen[p[0]] {
				seen[p[0]] = true
				contextKeys = append(contextKeys, p[0])
			}
			f.contextKey = append(f.contextKey, slices.Index(contextKeys, p[0]))
		}
	}
	if len(contextKeys) > maxContextKeys {
		panic("event: raise maxContextKeys")
	}
	for l, f := range labelFields {
		if f == nil {
			panic("event: label " + strconv.Itoa(l) + " has no field")
		}
	}
}

// Ptr returns a pointer to the field in e: *uuid.UUID (KindUUID), *string (KindType,
// KindName, KindLabel; "" is NULL for a label), *[]byte (KindObject; nil is NULL) or
// *time.Time (KindTime). Storage code maps it to its driver's values.
func (f *Field) Ptr(e *Event) any { return f.ptr(e) }

// LabelField returns the field of label l.
func LabelField(l Label) *Field { return labelFields[l] }

// Columns returns the events columns of every field, in the order of Fields.
func Columns() []string {
	cols := make([]string, len(Fields))
	for i := range Fields {
		cols[i] = Fields[i].Column
	}
	return cols
}

// SelectList returns the columns of every field, quoted and comma-separated, in the
// order of Fields: what a row scan through Field.Ptr reads.
func SelectList() string {
	var sb strings.Builder
	for i := range Fields {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(`"` + Fields[i].Column + `"`)
	}
	return sb.String()
}

// CheckLabel reports why s cannot be a label value (nil when it can): a label is 1 to
// MaxLabelChars characters of valid UTF-8 without NUL, which is what sanitising leaves of
// any string. Filters use it, so that a value no event can carry is a 400, not a silent
// empty answer or a database error. what names the parameter ("querystring/release").
func CheckLabel(what, s string) *Error {
	switch n := charCount([]byte(s)); {
	case n < 1:
		return invalid(what + " must NOT have fewer than 1 characters")
	case n > MaxLabelChars:
		return invalid(what + " must NOT have more than " + itoa(MaxLabelChars) + " characters")
	}
	if !validText(s) {
		return invalid(what + " must be valid UTF-8 without NUL characters")
	}
	return nil
}

// LabelsFromQuery reads label filters from query parameters named as the labels'
// members (get is url.Values.Get): an empty or absent one is no filter. A value no event
// can carry is an error naming its parameter ("querystring/<member>"). The events API
// and the live streams filter with it.
func LabelsFromQuery(get func(string) string) (Labels, *Error) {
	var ls Labels
	for l := range ls {
		name := labelFields[l].Wire
		v := get(name)
		if v == "" {
			continue
		}
		if err := CheckLabel("querystring/"+name, v); err != nil {
			return Labels{}, err
		}
		ls[l] = v
	}
	return ls, nil
}

// validText: valid UTF-8 and no NUL.
func validText(s string) bool {
	if strings.IndexByte(s, 0) >= 0 {
		return false
	}
	return utf8.ValidString(s)
}

// labelOK reports whether b (a decoded string) may be a label: 1 to MaxLabelChars
// characters.
func labelOK(b []byte) bool {
	n := charCount(b)
	return n >= 1 && n <= MaxLabelChars
}

// labelError is the message for a top-level label member v that is not a valid label;
// path is "body" or "message".
func labelError(path string, f *Field, isString bool, b []byte) *Error {
	if !isString {
		return invalid(path + "/" + f.Client + " must be string")
	}
	if charCount(b) < 1 {
		return invalid(path + "/" + f.Client + " must NOT have fewer than 1 characters")
	}
	return invalid(path + "/" + f.Client + " must NOT have more than " + itoa(MaxLabelChars) + " characters")
}

// labelIndex returns the label whose client member is k, or NumLabels.
func labelIndex(k []byte) Label {
	for l, f := range labelFields {
		if f.Client == string(k) {
			return Label(l)
		}
	}
	return NumLabels
}

// labelString returns b as a label string: interned for an Intern label.
func (d *Decoder) labelString(l Label, b []byte) string {
	if labelFields[l].Intern {
		return d.name(b)
	}
	return string(b)
}

// appendLabels appends the set labels of e in table order.
func appendLabels(dst []byte, e *Event) []byte {
	for l := range e.Labels {
		if s := e.Labels[l]; s != "" {
			dst = append(dst, labelFields[l].encodePrefix...)
			dst = AppendString(dst, s)
		}
	}
	return dst
}

// PeekLabels reads the top-level labels of an event object (a message as published to
// Redis: the canonical encoding) without decoding the rest; the live streams filter on
// them once per published event. ok is false when value is not an object it can walk or
// a label is not a string.
func PeekLabels(value []byte) (ls Labels, ok bool) {
	i := skipSpace(value, 0)
	if i >= len(value) || value[i] != '{' {
		return ls, false
	}
	i = skipSpace(value, i+1)
	if i < len(value) && value[i] == '}' {
		return ls, true
	}
	for {
		key, j, plain := readString(value, i)
		if !plain {
			return ls, false
		}
		i = skipSpace(value, j)
		if i >= len(value) || value[i] != ':' {
			return ls, false
		}
		i = skipSpace(value, i+1)
		start := i
		if i, plain = skipValue(value, i); !plain {
			return ls, false
		}
		if l := labelIndex(key); l < NumLabels && value[start] != 'n' { // null: unset
			var s string
			if b, _, plain := readString(value, start); plain {
				s = string(b)
			} else if err := json.Unmarshal(value[start:i], &s); err != nil {
				return ls, false // an escaped string is unescaped; anything else is wrong
			}
			ls[l] = s
		}
		i = skipSpace(value, i)
		if i >= len(value) {
			return ls, false
		}
		if value[i] == '}' {
			return ls, true
		}
		if value[i] != ',' {
			return ls, false
		}
		i = skipSpace(value, i+1)
	}
}
