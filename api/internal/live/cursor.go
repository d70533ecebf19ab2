package live

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"
)

// cursor is an event's position in the (received_at, id) order that the events table is
// indexed and replayed in. On the wire (the SSE id: field, Last-Event-ID) it is opaque:
// base64url of the receive time in Unix microseconds (8 bytes, big endian) followed by
// the 16 bytes of the id.
type cursor struct {
	receivedAt time.Time
	id         uuid.UUID
}

const cursorBytes = 8 + 16

var errBadCursor = errors.New("malformed cursor")

func (c cursor) String() string {
	var raw [cursorBytes]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(c.receivedAt.UnixMicro()))
	copy(raw[8:], c.id[:])
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

func parseCursor(s string) (cursor, error) {
	if base64.RawURLEncoding.DecodedLen(len(s)) != cursorBytes {
		return cursor{}, errBadCursor
	}
	var raw [cursorBytes]byte
	n, err := base64.RawURLEncoding.Decode(raw[:], []byte(s))
	if err != nil || n != cursorBytes {
		return cursor{}, errBadCursor
	}
	c := cursor{receivedAt: time.UnixMicro(int64(binary.BigEndian.Uint64(raw[:8]))).UTC()}
	// Only times Postgres stores (those of events) can come from this server; replaying
	// from another would fail the query or wrap around in the driver.
	if y := c.receivedAt.Year(); y < 1 || y > 9999 {
		return cursor{}, errBadCursor
	}
	copy(c.id[:], raw[8:])
	return c, nil
}

// compare orders cursors like ORDER BY received_at, id (Postgres compares uuids bytewise).
func (c cursor) compare(o cursor) int {
	if c.receivedAt.Before(o.receivedAt) {
		return -1
	}
	if c.receivedAt.After(o.receivedAt) {
		return 1
	}
	return bytes.Compare(c.id[:], o.id[:])
}

// eventCursor reads the cursor of an event object (id and receivedAt) as published to
// Redis. It runs once per published message, not once per client.
func eventCursor(payload []byte) (cursor, bool) {
	var e struct {
		ID         uuid.UUID `json:"id"`
		ReceivedAt time.Time `json:"receivedAt"`
	}
	if err := json.Unmarshal(payload, &e); err != nil || e.ID == uuid.Nil || e.ReceivedAt.IsZero() {
		return cursor{}, false
	}
	return cursor{receivedAt: e.ReceivedAt.UTC(), id: e.ID}, true
}
