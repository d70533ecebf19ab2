package event

import (
	"time"

	"github.com/google/uuid"
)

// Summary is what a reader that only counts a message needs of it.
type Summary struct {
	ProjectID  uuid.UUID
	Type       string // TypeError, TypeEvent or TypeMetric
	ReceivedAt time.Time
}

// PeekMessage reads the top-level "projectId", "type" and "receivedAt" of a Kafka message
// value without decoding the rest: a fraction of DecodeMessage's cost, for readers that
// only count events (the alerter reads every message of the topic a second time). It
// does not validate the message. ok is false when it cannot tell what DecodeMessage would
// find: the value is not an object it can walk, a key or one of those values is escaped
// or not a string, or a value is not what DecodeMessage accepts; the caller then decodes
// the message.
//
// For every message DecodeMessage accepts, PeekMessage either says !ok or gives the same
// project, type and receive time (FuzzPeekMessage). A message it accepts and
// DecodeMessage refuses (the consumer dead-letters it) is counted only by a reader that
// trusts it; the alerter's evaluations count stored events, so such a message costs an
// evaluation and changes nothing.
func PeekMessage(value []byte) (s Summary, ok bool) {
	i := skipSpace(value, 0)
	if i >= len(value) || value[i] != '{' {
		return s, false
	}
	var project, typ, recv []byte
	i = skipSpace(value, i+1)
	if i < len(value) && value[i] == '}' {
		return s, false // no fields: DecodeMessage refuses it
	}
	for {
		key, j, plain := readString(value, i)
		if !plain {
			return s, false
		}
		i = skipSpace(value, j)
		if i >= len(value) || value[i] != ':' {
			return s, false
		}
		i = skipSpace(value, i+1)
		var dst *[]byte
		switch string(key) {
		case "projectId":
			dst = &project
		case "type":
			dst = &typ
		case "receivedAt":
			dst = &recv
		}
		if dst != nil {
			// The last of duplicate keys counts, as in DecodeMessage.
			if *dst, i, plain = readString(value, i); !plain {
				return s, false
			}
		} else if i, plain = skipValue(value, i); !plain {
			return s, false
		}
		i = skipSpace(value, i)
		if i >= len(value) {
			return s, false
		}
		if value[i] == '}' {
			break
		}
		if value[i] != ',' {
			return s, false
		}
		i = skipSpace(value, i+1)
	}
	if s.ProjectID, ok = parseUUIDBytes(project); !ok {
		return s, false
	}
	if s.Type, ok = validType(typ); !ok {
		return s, false
	}
	if s.ReceivedAt, ok = ParseTime(string(recv)); !ok {
		return s, false
	}
	return s, true
}

// readString returns the contents of the JSON string at b[i] and the index after it;
// plain is false if there is no string there or it has escapes.
func readString(b []byte, i int) (s []byte, next int, plain bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			return nil, i, false
		case '"':
			return b[i+1 : j], j + 1, true
		}
	}
	return nil, i, false
}

// skipValue returns the index after the JSON value at b[i] (nested objects and arrays
// included), or false if b ends first. It checks structure only as far as it needs to
// find the end.
func skipValue(b []byte, i int) (int, bool) {
	start, depth := i, 0
	for i < len(b) {
		switch b[i] {
		case '"':
			i++
			for i < len(b) && b[i] != '"' {
				if b[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(b) {
				return i, false
			}
			if depth == 0 {
				return i + 1, true
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 { // the end of the enclosing object: a scalar ended here
				return i, i > start
			}
			if depth--; depth == 0 {
				return i + 1, true
			}
		case ',':
			if depth == 0 {
				return i, i > start
			}
		}
		i++
	}
	return i, false
}
