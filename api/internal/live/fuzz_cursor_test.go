package live

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// FuzzSSECursor feeds arbitrary Last-Event-IDs to the SSE cursor parser. A cursor it
// accepts is one this server could have sent: it re-encodes to the same string (CR and
// LF aside), and its time is one Postgres stores (years 1-9999), so the replay query
// cannot fail on it. Everything else is errBadCursor (the stream then sends a resync
// instead of replaying).
func FuzzSSECursor(f *testing.F) {
	for _, s := range []string{
		cursor{receivedAt: time.Date(2026, 3, 1, 12, 0, 0, 123000000, time.UTC), id: uuid.MustParse("0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b")}.String(),
		cursor{receivedAt: time.UnixMicro(0)}.String(),
		"gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"f_________AAAAAAAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAA\nAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCursor(s)
		if err != nil {
			if err != errBadCursor {
				t.Fatalf("parseCursor(%q) = %v", s, err)
			}
			return
		}
		// The base64 decoder skips CR and LF (a ?lastEventId= can carry them): such a
		// cursor means the same position as without them.
		if got, want := c.String(), strings.NewReplacer("\r", "", "\n", "").Replace(s); got != want {
			t.Fatalf("cursor %q re-encodes as %q", s, got)
		}
		if y := c.receivedAt.Year(); y < 1 || y > 9999 || c.receivedAt.Location() != time.UTC {
			t.Fatalf("cursor %q decodes to %s, which no stored event has", s, c.receivedAt)
		}
		if c.compare(c) != 0 {
			t.Fatalf("cursor %q does not compare equal to itself", s)
		}
	})
}

// Found by FuzzSSECursor: any 24 bytes decoded, so a Last-Event-ID at the edges of time
// reached the replay query, which Postgres refuses ("timestamp out of range") or the
// driver wraps around. Such a cursor is now malformed: the stream resyncs without a
// query.
func TestSSECursorOutsideStorableTimesIsMalformed(t *testing.T) {
	for _, s := range []string{"gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "f_________AAAAAAAAAAAAAAAAAAAAAA"} {
		if _, err := parseCursor(s); err != errBadCursor {
			t.Errorf("parseCursor(%q) = %v, want errBadCursor", s, err)
		}
	}
}
