package client

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// appendEvent appends the wire form of ev: the same JSON encoding/json gives the struct
// {type, name, payload, timestamp, context (omitted when empty), eventId}, written by hand
// because it is the client's per-event cost. A non-empty apiKey comes first (Compat).
func appendEvent(b []byte, ev *Event, apiKey string) ([]byte, error) {
	var payload, context []byte
	switch {
	case len(ev.RawPayload) > 0:
		payload = bytes.TrimSpace(ev.RawPayload)
		// fastjson validates several times faster than encoding/json; the per-event cost
		// of the client is what a load generator on the same machine takes from the server.
		if len(payload) == 0 || payload[0] != '{' || fastjson.ValidateBytes(payload) != nil {
			return nil, fmt.Errorf("%w: RawPayload must be a JSON object", ErrInvalidEvent)
		}
		// The server refuses a whole batch holding a duplicate key (400 INVALID_JSON):
		// refuse the one event here instead.
		if msg := duplicateKey(payload, "RawPayload"); msg != "" {
			return nil, fmt.Errorf("%w: %s", ErrInvalidEvent, msg)
		}
	case ev.Payload == nil:
		payload = []byte("{}")
	default:
		p, err := json.Marshal(ev.Payload)
		if err != nil {
			return nil, fmt.Errorf("pulseboard client: encoding event: %w", err)
		}
		payload = p
	}
	if len(ev.Context) > 0 {
		p, err := json.Marshal(ev.Context)
		if err != nil {
			return nil, fmt.Errorf("pulseboard client: encoding event: %w", err)
		}
		context = p
	}
	if b == nil {
		// The fixed parts take 115 bytes; escaping may need more, append grows then.
		b = make([]byte, 0, 128+len(apiKey)+len(ev.Type)+len(ev.Name)+len(payload)+len(context))
	}
	b = append(b, '{')
	if apiKey != "" {
		b = append(b, `"apiKey":`...)
		b = appendString(b, apiKey)
		b = append(b, ',')
	}
	b = append(b, `"type":`...)
	b = appendString(b, ev.Type)
	b = append(b, `,"name":`...)
	b = appendString(b, ev.Name)
	b = append(b, `,"payload":`...)
	b = append(b, payload...)
	b = append(b, `,"timestamp":"`...)
	b = appendTimestamp(b, ev.Timestamp)
	b = append(b, '"')
	if context != nil {
		b = append(b, `,"context":`...)
		b = append(b, context...)
	}
	b = append(b, `,"eventId":"`...)
	b = appendUUID(b, ev.EventID)
	return append(b, `"}`...), nil
}

// appendTimestamp appends t in UTC as 2006-01-02T15:04:05.000Z (timeLayout), digit by
// digit for the years 0 to 9999: several times faster than Time.AppendFormat.
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, timeLayout)
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	b = append(b, byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+int(month)/10), byte('0'+int(month)%10), '-', byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':', byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10), '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
	return b
}

// appendString appends s as a JSON string; anything but plain printable ASCII goes
// through encoding/json, so the escaping is exactly its own.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendUUID appends the canonical 36-character form of id.
func appendUUID(b []byte, id [16]byte) []byte {
	var s [36]byte
	hex.Encode(s[0:8], id[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], id[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], id[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], id[8:10])
	s[23] = '-'
	hex.Encode(s[24:], id[10:])
	return append(b, s[:]...)
}
