// Package event is PulseBoard's event model: the limits every accepted event satisfies,
// decoding and validation of client input (the ingest hot path) and of Kafka messages
// (the consumer), and the one canonical JSON encoding that is produced to Kafka, returned
// by the ingestor, published to Redis and sent to live-stream clients.
//
// The rule that shapes this package: everything the ingestor accepts must be storable by
// the consumer (docs/reliability.md promise 4). Strings are sanitised on the raw bytes before
// decoding, JSON syntax is checked strictly, nesting depth, sizes and numbers are bounded,
// and the payload is re-encoded canonically, so a jsonb COPY of an accepted event cannot
// fail.
package event

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Event types.
const (
	TypeError  = "error"
	TypeEvent  = "event"
	TypeMetric = "metric"
)

// Default limits (docs/api.md).
const (
	DefaultMaxNameChars  = 200
	DefaultMaxEventBytes = 64 << 10
	DefaultMaxDepth      = 32
)

// Limits bound a single event. The zero value is not useful; start from DefaultLimits.
type Limits struct {
	// MaxNameChars is the longest accepted name, in characters.
	MaxNameChars int
	// MaxEventBytes bounds the canonical encoding of one event (the Kafka message value).
	// It must stay below the producer's BatchBytes and the broker's message.max.bytes.
	MaxEventBytes int
	// MaxDepth bounds the nesting of payload and context; the object itself is depth 1.
	MaxDepth int
}

// DefaultLimits returns the limits of docs/api.md.
func DefaultLimits() Limits {
	return Limits{MaxNameChars: DefaultMaxNameChars, MaxEventBytes: DefaultMaxEventBytes, MaxDepth: DefaultMaxDepth}
}

// Event is one stored event. Payload and Context hold canonical JSON objects (Context is
// nil when the client sent none). Its fields are declared in Fields (fields.go).
type Event struct {
	ID         uuid.UUID
	ProjectID  uuid.UUID
	Type       string
	Name       string
	Payload    []byte
	Context    []byte
	Timestamp  time.Time
	ReceivedAt time.Time
	// Labels are the optional labels (release, environment, session and user id); ""
	// is unset.
	Labels Labels
}

// TimeLayout is the wire format of every time: ISO-8601 UTC with milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// Precision is the resolution of stored times. Times are truncated to it when an event is
// created so that what the client sees, what is stored and keyset cursors all agree.
const Precision = time.Millisecond

// AppendJSON appends the event object of docs/api.md:
// {"id","projectId","type","name","payload","timestamp","receivedAt"} plus "context" and
// each label (Fields) when set, in the order of Fields.
func (e *Event) AppendJSON(dst []byte) []byte { return e.appendJSON(dst, nil, nil) }

// Encoder is AppendJSON for the events of one request. The events of a request usually
// share their project and their receive time; an Encoder formats each of them once and
// copies the text for the next events. Its output is exactly AppendJSON's. The zero
// Encoder is ready to use; it is not safe for concurrent use.
type Encoder struct {
	project      uuid.UUID
	projectText  [36]byte
	hasProject   bool
	received     time.Time
	receivedText []byte // nil until the first event
}

// AppendJSON appends e's encoding, as e.AppendJSON(dst) does.
func (c *Encoder) AppendJSON(dst []byte, e *Event) []byte {
	if !c.hasProject || c.project != e.ProjectID {
		appendUUID(c.projectText[:0], e.ProjectID)
		c.project, c.hasProject = e.ProjectID, true
	}
	if c.receivedText == nil || !c.received.Equal(e.ReceivedAt) {
		c.receivedText = AppendTime(c.receivedText[:0], e.ReceivedAt)
		c.received = e.ReceivedAt
	}
	return e.appendJSON(dst, c.projectText[:], c.receivedText)
}

// appendJSON is AppendJSON with the text of the project id and of the receive time when
// the caller has them (nil: format them).
func (e *Event) appendJSON(dst, projectText, receivedText []byte) []byte {
	dst = append(dst, `{"id":"`...)
	dst = appendUUID(dst, e.ID)
	dst = append(dst, `","projectId":"`...)
	if projectText != nil {
		dst = append(dst, projectText...)
	} else {
		dst = appendUUID(dst, e.ProjectID)
	}
	dst = append(dst, `","type":"`...)
	dst = append(dst, e.Type...) // one of three constants, never needs escaping
	dst = append(dst, `","name":`...)
	dst = AppendString(dst, e.Name)
	dst = append(dst, `,"payload":`...)
	dst = append(dst, e.Payload...)
	dst = append(dst, `,"timestamp":"`...)
	ts := len(dst)
	dst = AppendTime(dst, e.Timestamp)
	tsText := dst[ts:]
	dst = append(dst, `","receivedAt":"`...)
	switch {
	case e.ReceivedAt.Equal(e.Timestamp): // an event sent without a timestamp
		dst = append(dst, tsText...)
	case receivedText != nil:
		dst = append(dst, receivedText...)
	default:
		dst = AppendTime(dst, e.ReceivedAt)
	}
	dst = append(dst, '"')
	if e.Context != nil {
		dst = append(dst, `,"context":`...)
		dst = append(dst, e.Context...)
	}
	dst = appendLabels(dst, e)
	return append(dst, '}')
}

// MarshalJSON implements json.Marshaler with the canonical encoding.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 256+len(e.Payload)+len(e.Context))), nil
}

// AppendTime appends t in UTC formatted with TimeLayout. It gives exactly what
// t.UTC().AppendFormat(dst, TimeLayout) gives, in a fraction of the time: the generic
// formatter is about a tenth of the ingestor's CPU per event (two times in every event).
func AppendTime(dst []byte, t time.Time) []byte {
	if sec := t.Unix(); sec < minFastUnix || sec > maxFastUnix { // not 4-digit years
		return t.UTC().AppendFormat(dst, TimeLayout)
	}
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, second := t.Clock()
	milli := t.Nanosecond() / int(time.Millisecond)
	var b [24]byte // 2006-01-02T15:04:05.000Z
	b[0] = byte('0' + year/1000)
	b[1] = byte('0' + year/100%10)
	b[2] = byte('0' + year/10%10)
	b[3] = byte('0' + year%10)
	b[4] = '-'
	b[5], b[6] = twoDigits(int(month))
	b[7] = '-'
	b[8], b[9] = twoDigits(day)
	b[10] = 'T'
	b[11], b[12] = twoDigits(hour)
	b[13] = ':'
	b[14], b[15] = twoDigits(minute)
	b[16] = ':'
	b[17], b[18] = twoDigits(second)
	b[19] = '.'
	b[20] = byte('0' + milli/100)
	b[21] = byte('0' + milli/10%10)
	b[22] = byte('0' + milli%10)
	b[23] = 'Z'
	return append(dst, b[:]...)
}

// The times AppendTime formats itself: years 0000 to 9999.
const (
	minFastUnix = -62167219200 // 0000-01-01T00:00:00Z
	maxFastUnix = 253402300799 // 9999-12-31T23:59:59Z
)

func twoDigits(n int) (byte, byte) { return byte('0' + n/10), byte('0' + n%10) }

// AppendUUID appends id in its canonical 36-character form (what id.String() returns),
// without allocating.
func AppendUUID(dst []byte, id uuid.UUID) []byte { return appendUUID(dst, id) }

func appendUUID(dst []byte, id uuid.UUID) []byte {
	var buf [36]byte
	hexInto(buf[0:8], id[0:4])
	buf[8] = '-'
	hexInto(buf[9:13], id[4:6])
	buf[13] = '-'
	hexInto(buf[14:18], id[6:8])
	buf[18] = '-'
	hexInto(buf[19:23], id[8:10])
	buf[23] = '-'
	hexInto(buf[24:36], id[10:16])
	return append(dst, buf[:]...)
}

// hexInto writes src in lower-case hex to dst (len(dst) == 2*len(src)).
func hexInto(dst, src []byte) {
	for i, b := range src {
		dst[2*i], dst[2*i+1] = hexPairs[b][0], hexPairs[b][1]
	}
}

// hexPairs[b] is b in two lower-case hex digits: one lookup per byte instead of two.
var hexPairs = func() (t [256][2]byte) {
	for i := range t {
		t[i] = [2]byte{hexLower[i>>4], hexLower[i&0x0f]}
	}
	return t
}()

// AppendString appends s as a JSON string. s must be valid UTF-8 (everything that reaches
// here has been sanitised); control characters, quotes and backslashes are escaped and
// nothing else is, so stored text stays verbatim (docs/reliability.md B31).
func AppendString(dst []byte, s string) []byte { return appendString(dst, s) }

func appendString[S string | []byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		// Skip 8 bytes at a time while none needs escaping.
		for i+8 <= len(s) && !needsEscape(load64(s, i)) {
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexLower[c>>4], hexLower[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hexLower = "0123456789abcdef"

// load64 reads s[i:i+8] as a little-endian word.
func load64[S string | []byte](s S, i int) uint64 {
	_ = s[i+7]
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// validType reports whether t is one of the three event types.
func validType(t []byte) (string, bool) {
	switch string(t) {
	case TypeError:
		return TypeError, true
	case TypeEvent:
		return TypeEvent, true
	case TypeMetric:
		return TypeMetric, true
	}
	return "", false
}

// charCount counts characters the way the old backend's JSON schema did (code points).
func charCount(s []byte) int { return utf8.RuneCount(s) }

func itoa(n int) string { return strconv.Itoa(n) }
