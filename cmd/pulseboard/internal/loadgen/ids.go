package loadgen

import (
	"crypto/rand"
	"encoding/binary"
	"time"

	"github.com/google/uuid"
)

// idGen makes the event ids of one run: valid UUIDv7s (millisecond time, version and
// variant bits) whose last 48 bits are a random per-run base plus the event's sequence
// number, and whose 26 other random bits are fixed per run. An id of this run therefore
// gives its sequence number back without a lookup table, which is how results, live
// deliveries and stored rows find when their event was scheduled; ids of other runs (or of
// other clients) are recognised as foreign. Two runs collide only with the same 26 bits,
// overlapping ranges of 48-bit counters and the same millisecond.
type idGen struct {
	tag  [4]byte // bytes 6–9 with version and variant set
	base uint64  // 48-bit random counter start
}

const seqMask = 1<<48 - 1

func newIDGen() idGen {
	var r [10]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails
	g := idGen{tag: [4]byte{0x70 | r[0]&0x0f, r[1], 0x80 | r[2]&0x3f, r[3]}}
	g.base = binary.BigEndian.Uint64(r[2:10]) & seqMask
	return g
}

// id returns the id of event seq, created at t.
func (g idGen) id(seq uint64, t time.Time) uuid.UUID {
	var u uuid.UUID
	ms := uint64(t.UnixMilli())
	u[0], u[1], u[2], u[3], u[4], u[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	copy(u[6:10], g.tag[:])
	c := (g.base + seq) & seqMask
	u[10], u[11], u[12], u[13], u[14], u[15] = byte(c>>40), byte(c>>32), byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	return u
}

// seq returns the sequence number of an id of this run; ok is false for any other id.
// Callers also check seq against the number of events sent.
func (g idGen) seq(u uuid.UUID) (uint64, bool) {
	if [4]byte(u[6:10]) != g.tag {
		return 0, false
	}
	c := uint64(u[10])<<40 | uint64(u[11])<<32 | uint64(u[12])<<24 | uint64(u[13])<<16 | uint64(u[14])<<8 | uint64(u[15])
	return (c - g.base) & seqMask, true
}
