// Package event is PulseBoard's event model: the limits every accepted event satisfies,
// decoding and validation of client input (the ingest hot path) and of Kafka messages
// (the consumer), and the one canonical JSON encoding that is produced to Kafka, returned
// by the ingestor, published to Redis and sent to live-stream clients.
//
// The rule that shapes this package: everything the ingestor accepts must be storable by
// the consumer (RELIABILITY.md promise 4). Strings are sanitised on the raw bytes before
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

// Default limits (API.md).
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

// DefaultLimits returns the limits of API.md.
func DefaultLimits() Limits {
	return Limits{MaxNameChars: DefaultMaxNameChars, MaxEventBytes: DefaultMaxEventBytes, MaxDepth: DefaultMaxDepth}
}

// Event is one stored event. Payload and Context hold canonical JSON objects (Context is
// nil when the client sent none).
type Event struct {
	ID         uuid.UUID
	ProjectID  uuid.UUID
	Type       string
	Name       string
	Payload    []byte
	Context    []byte
	Timestamp  time.Time
	ReceivedAt time.Time
}

// TimeLayout is the wire format of every time: ISO-8601 UTC with milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// Precision is the resolution of stored times. Times are truncated to it when an event is
// created so that what the client sees, what is stored and keyset cursors all agree.
const Precision = time.Millisecond

// AppendJSON appends the event object of API.md:
// {"id","projectId","type","name","payload","timestamp","receivedAt"} plus "context" when set.
func (e *Event) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":"`...)
	dst = appendUUID(dst, e.ID)
	dst = append(dst, `","projectId":"`...)
	dst = appendUUID(dst, e.ProjectID)
	dst = append(dst, `","type":"`...)
	dst = append(dst, e.Type...) // one of three constants, never needs escaping
	dst = append(dst, `","name":`...)
	dst = AppendString(dst, e.Name)
	dst = append(dst, `,"payload":`...)
	dst = append(dst, e.Payload...)
	dst = append(dst, `,"timestamp":"`...)
	dst = e.Timestamp.UTC().AppendFormat(dst, TimeLayout)
	dst = append(dst, `","receivedAt":"`...)
	dst = e.ReceivedAt.UTC().AppendFormat(dst, TimeLayout)
	dst = append(dst, '"')
	if e.Context != nil {
		dst = append(dst, `,"context":`...)
		dst = append(dst, e.Context...)
	}
	return append(dst, '}')
}

// MarshalJSON implements json.Marshaler with the canonical encoding.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 256+len(e.Payload)+len(e.Context))), nil
}

func appendUUID(dst []byte, id uuid.UUID) []byte {
	var buf [36]byte
	const hexdigits = "0123456789abcdef"
	j := 0
	for i, b := range id {
		switch i {
		case 4, 6, 8, 10:
			buf[j] = '-'
			j++
		}
		buf[j] = hexdigits[b>>4]
		buf[j+1] = hexdigits[b&0x0f]
		j += 2
	}
	return append(dst, buf[:]...)
}

// AppendString appends s as a JSON string. s must be valid UTF-8 (everything that reaches
// here has been sanitised); control characters, quotes and backslashes are escaped and
// nothing else is, so stored text stays verbatim (RELIABILITY.md B31).
func AppendString(dst []byte, s string) []byte { return appendString(dst, s) }

func appendString[S string | []byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
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
