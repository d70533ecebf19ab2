package producer

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Pacing of bulk calls (issue 16 item 4). A project at its byte limit sends a 10 MiB body
// about once a second. Written as fast as the broker takes it, that body is a burst of
// work in every stage at once (the produce requests, the broker's appends, the
// consumer's fetches and COPY, the live fan-out, the alerter's fetches), and for the
// tens of milliseconds it lasts both cores of a small machine are busy with one tenant:
// another project's single event, which needs a moment of each stage, waited 15-40 ms
// for it (bench step 8: B's p99 ×9 its quiet value).
//
// So a bulk call of a rate-limited project is released to the broker at a pace (the
// caller's; the ingestor gives three times the project's byte limit): its batches
// (paceBatchBytes each, smaller than ordinary batches so that each step of the pipeline
// is short) get release times spread over size/pace, and a key's next call starts where
// its last one ends. The average rate is unchanged (the byte limit caps it at a third of
// the pace); the big body is acknowledged later (9.5 MiB at 24 MiB/s in about 0.4 s) and
// everyone else's work interleaves with its batches. The dispatcher sends, of a
// partition, the first batch that is due and that no earlier batch shares a key with, so
// other keys on the partition never wait for a paced key's schedule.
//
// A key's backlog is bounded in time: a call that would finish pacing more than
// maxPaceWait from now is refused at once (ErrOverloaded: the answer is 503 with
// Retry-After, before any of it is queued) instead of waiting past the produce timeout.
// The project's byte limit keeps its backlog well under that (a full bucket is two
// seconds of its rate, drained at twice the rate net of what keeps coming), so this
// only answers a pace set too low for the timeout.

// paceBatchBytes is the size of a paced call's batches.
const paceBatchBytes = 256 << 10

// pacer holds each paced key's next release time. Keys whose time has passed are
// forgotten (sweep), so the map holds only keys with a paced call still being released:
// bounded by the in-flight byte budget over the bulk threshold.
type pacer struct {
	mu   sync.Mutex
	next map[string]time.Time
}

// sweepAt is the map size from which passed keys are swept on insertion.
const sweepAt = 256

// schedule reserves size bytes at pace for key: it returns when the call's first byte is
// released (now, or where the key's previous call ends) and records where this one ends.
// A call that would end more than maxWait from now is not reserved (ok false; wait is how
// long until it would fit).
func (pc *pacer) schedule(key []byte, size int64, pace float64, now time.Time, maxWait time.Duration) (start time.Time, wait time.Duration, ok bool) {
	span := time.Duration(float64(size) / pace * float64(time.Second))
	pc.mu.Lock()
	defer pc.mu.Unlock()
	start = now
	if t, found := pc.next[string(key)]; found && t.After(now) {
		start = t
	}
	end := start.Add(span)
	if over := end.Sub(now) - maxWait; over > 0 {
		return time.Time{}, over, false
	}
	if pc.next == nil {
		pc.next = make(map[string]time.Time)
	}
	if len(pc.next) >= sweepAt {
		for k, t := range pc.next {
			if !t.After(now) {
				delete(pc.next, k)
			}
		}
	}
	pc.next[string(key)] = end
	return start, 0, true
}

// releaseAt is when a paced batch whose first message comes after done of the call's
// bytes may be sent.
func releaseAt(start time.Time, done int64, pace float64) time.Time {
	return start.Add(time.Duration(float64(done) / pace * float64(time.Second)))
}

// paceBacklog is the error of a call refused for its key's backlog.
func paceBacklog(wait time.Duration) error {
	return fmt.Errorf("%w: this key's paced bulk writes are %v ahead", ErrOverloaded, wait.Round(time.Millisecond))
}

// next is the index of the batch of q to send now, or -1 and how long until one is due
// (0: none waits for a time). A batch is sent when it is due and no batch before it
// holds one of its keys; batches before it that are skipped are paced ones not yet due,
// each of a single key. Call with q.mu held.
func (q *partitionQueue) next(now time.Time, draining bool) (int, time.Duration) {
	var held [][]byte // the keys of skipped batches
	var wait time.Duration
	for i, b := range q.batches {
		if len(held) > 0 && b.holdsKeyOf(held) {
			if !b.paced() {
				return -1, wait // an unpaced batch held back: nothing behind it may pass it
			}
			held = append(held, b.bulkKeys...)
			continue
		}
		if !b.paced() || draining || !b.notBefore.After(now) {
			return i, 0
		}
		if d := b.notBefore.Sub(now); wait == 0 || d < wait {
			wait = d
		}
		held = append(held, b.bulkKeys...)
	}
	return -1, wait
}

// paced reports whether b has a release time.
func (b *batch) paced() bool { return !b.notBefore.IsZero() }

// holdsKeyOf reports whether b holds a message with one of keys (a bulk batch: one of
// its bulkKeys).
func (b *batch) holdsKeyOf(keys [][]byte) bool {
	if b.bulk {
		return slices.ContainsFunc(b.bulkKeys, func(k []byte) bool {
			return slices.ContainsFunc(keys, func(h []byte) bool { return bytes.Equal(k, h) })
		})
	}
	return holdsKey(b.msgs, keys)
}

// holdsKey reports whether one of msgs has one of keys.
func holdsKey(msgs []kafka.Message, keys [][]byte) bool {
	for i := range msgs {
		for _, k := range keys {
			if bytes.Equal(msgs[i].Key, k) {
				return true
			}
		}
	}
	return false
}

// take removes the batch at i from q. Call with q.mu held.
func (q *partitionQueue) take(i int) *batch {
	b := q.batches[i]
	copy(q.batches[i:], q.batches[i+1:])
	q.batches[len(q.batches)-1] = nil
	q.batches = q.batches[:len(q.batches)-1]
	return b
}

// wakeIn lists q again in d, when its first paced batch is due; an earlier wake-up
// already armed stands. Call with q.mu held.
func (q *partitionQueue) wakeIn(d time.Duration, now time.Time) {
	at := now.Add(d)
	if !q.timerAt.IsZero() && !q.timerAt.After(at) {
		return
	}
	q.timerAt = at
	if q.timer == nil {
		q.timer = time.AfterFunc(d, q.due)
		return
	}
	q.timer.Reset(d)
}

// due lists q when a paced batch's time has come.
func (q *partitionQueue) due() {
	q.mu.Lock()
	q.timerAt = time.Time{}
	q.mu.Unlock()
	q.relist()
}
