package producer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
)

// Group commit. kafka-go's Writer holds every partition's batch open for BatchTimeout and
// writes one batch per partition at a time, so a synchronous request waits the timeout
// plus a round trip however idle the broker is, and under load tiny batches queue behind
// each other. Here nothing waits for a timer: a partition's messages are sent as soon as
// the partition has no produce request in flight, and the messages of every request that
// arrives meanwhile form its next batch, so batches grow with the load.
//
// Like Kafka's own producer, one produce request carries the ready batches of every
// partition led by the same broker, and a broker has at most requestsPerBroker of our
// requests in flight. With one request per partition (as kafka-go does), single-event
// ingest over a dozen partitions sent a dozen small requests per round trip, and their
// encoding, syscalls and the broker's per-request work were a third of the ingestor's
// CPU. A partition is in at most one request at a time (its retries included), so its
// messages keep their order. The requests, their retries and their acks go through
// kafka-go's Transport (its connection pool, metadata and protocol encoding); only the
// batching is ours.
//
// Fairness between projects (issue 16 item 4): a project's events share a partition, so
// a project that sends a 10 MiB batch fills its own partition's queue, not the others'.
// Three things keep the others from waiting behind it: a batch holds at most
// maxBatchBytes, so the big body goes as several requests, one after the other; a
// request holds at most maxRequestBytes, so a small batch is not tied to a big one; and a
// broker takes up to requestsPerBroker requests at once (kafka-go opens a connection per
// concurrent request), so the other partitions' batches travel while a big one is out.
// Measured in bench step 8: a neighbour's single events waited behind a 4 MiB request
// (14-35 ms) with one request in flight; with these bounds its requests take under 1 ms
// while the big one is out. A neighbour on the flooder's own partition (projects share
// the topic's partitions) would still wait for every batch of the body: enqueue queues
// its calls ahead of another key's bulk batches.

// defaultRequestsPerBroker bounds our produce requests in flight to one broker: enough
// lanes that a partition with a big batch out leaves room for the others, few enough
// that every partition with messages still joins a shared request under load.
const defaultRequestsPerBroker = 3

// maxRequestBytes bounds the messages of one produce request (at least one partition's
// batch always goes): small enough that a batch waiting for the next request is not held
// behind megabytes of others' (fairness, above); Kafka's own producer defaults to 1 MiB
// (max.request.size).
const maxRequestBytes = 1 << 20

// maxBatchBytes caps a partition's batch below the writer's BatchBytes and the topic's
// max.message.bytes, so that a big request body is split into requests the broker
// answers one by one (an event larger than this still goes, in a batch of its own).
const maxBatchBytes = 1 << 20

// batch is one partition's share of a produce request. done is closed once its final
// outcome (err) is known, after retries.
type batch struct {
	msgs  []kafka.Message
	bytes int64
	done  chan struct{}
	err   error
	// bulk: the batch holds part of one call's messages that fill more than a batch (a
	// big request body), whose keys are bulkKeys. Smaller calls for other keys are queued
	// ahead of a partition's trailing bulk batches (enqueue).
	bulk     bool
	bulkKeys [][]byte
	// notBefore: the batch is part of a paced call (pace.go) and is not sent before then.
	notBefore time.Time
}

// maxBulkKeys bounds the keys a bulk batch records; a big call with more distinct keys
// (several projects' events in one body) is queued as ordinary batches.
const maxBulkKeys = 4

// partitionQueue holds one partition's batches: the oldest first, the last one still open
// to new messages.
type partitionQueue struct {
	p         *Producer
	partition int
	mu        sync.Mutex
	batches   []*batch
	closed    bool
	busy      bool // its oldest batch is in a request, or waiting to be retried
	listed    bool // in Producer.ready
	// A timer lists the queue again when its first paced batch is due (wakeIn).
	timer   *time.Timer
	timerAt time.Time // zero once it fired
}

// flight is a batch taken from its queue for a produce request.
type flight struct {
	q       *partitionQueue
	b       *batch
	attempt int // 0 for the first request
}

// errClosed answers writes after Close, like kafka-go's Writer.
var errClosed = fmt.Errorf("producer closed: %w", io.ErrClosedPipe)

// enqueue appends msgs (all for this partition) to the open batch, opening new ones past
// the size limits, and adds the batches they went to to waits.
//
// Fairness within a partition (issue 16 item 4): several projects share a partition, and
// a project's 10 MiB body queues as ten batches that go one after the other. A call that
// fits in a batch, for keys none of those batches hold, is queued ahead of them: it waits
// for the batch in flight, not for the whole body. The messages of a key keep their order,
// since a call never overtakes a batch holding one of its keys, and a big call always
// queues last.
//
// A bulk call of a single key with a pace (pace.go) is scheduled first: its batches hold
// paceBatchBytes and carry their release times.
func (q *partitionQueue) enqueue(msgs []kafka.Message, waits []*batch, pace float64) ([]*batch, error) {
	var size int64
	for i := range msgs {
		size += messageSize(&msgs[i])
	}
	var bulkKeys [][]byte
	if size > q.p.batchBytes || len(msgs) > q.p.batchSize {
		bulkKeys = distinctKeys(msgs, maxBulkKeys)
	}
	limit, paced := q.p.batchBytes, pace > 0 && len(bulkKeys) == 1
	var start time.Time
	if paced {
		var wait time.Duration
		var ok bool
		if start, wait, ok = q.p.pacer.schedule(bulkKeys[0], size, pace, time.Now(), q.p.maxPaceWait); !ok {
			return waits, paceBacklog(wait)
		}
		limit = min(limit, paceBatchBytes)
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return waits, errClosed
	}
	// at: where new batches go; the open batch is the one just before it.
	at := len(q.batches)
	if bulkKeys == nil && size <= q.p.batchBytes && len(msgs) <= q.p.batchSize {
		for at > 0 && q.batches[at-1].bulk && !q.batches[at-1].holdsAny(msgs) {
			at--
		}
	}
	var done int64 // bytes of msgs before msgs[i]
	for i := range msgs {
		size := messageSize(&msgs[i])
		var b *batch
		if at > 0 {
			b = q.batches[at-1]
		}
		if b == nil || len(b.msgs) >= q.p.batchSize || (len(b.msgs) > 0 && b.bytes+size > limit) ||
			b.bulk != (bulkKeys != nil) || (b.bulk && !sameKeys(b.bulkKeys, bulkKeys)) || b.paced() != paced {
			b = &batch{msgs: q.p.getMessages(), done: make(chan struct{}), bulk: bulkKeys != nil, bulkKeys: bulkKeys}
			if paced {
				b.notBefore = releaseAt(start, done, pace)
			}
			q.batches = append(q.batches, nil)
			copy(q.batches[at+1:], q.batches[at:])
			q.batches[at] = b
			at++
			q.p.pending.Add(1)
			q.p.open.Add(1)
		}
		b.msgs = append(b.msgs, msgs[i])
		b.bytes += size
		done += size
		if len(waits) == 0 || waits[len(waits)-1] != b {
			waits = append(waits, b)
		}
	}
	list := !q.busy && !q.listed
	q.listed = q.listed || list
	q.mu.Unlock()
	if list {
		q.p.markReady(q)
	}
	return waits, nil
}

// distinctKeys returns the distinct keys of msgs, nil when there are more than max.
func distinctKeys(msgs []kafka.Message, max int) [][]byte {
	keys := make([][]byte, 0, 1)
	for i := range msgs {
		known := false
		for _, k := range keys {
			if bytes.Equal(k, msgs[i].Key) {
				known = true
				break
			}
		}
		if !known {
			if len(keys) == max {
				return nil
			}
			keys = append(keys, msgs[i].Key)
		}
	}
	return keys
}

// holdsAny reports whether the bulk batch b holds a message with one of msgs' keys.
func (b *batch) holdsAny(msgs []kafka.Message) bool { return holdsKey(msgs, b.bulkKeys) }

func sameKeys(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// markReady tells the dispatcher that q may have a batch to send.
// relist lists q for the dispatcher when it has batches and none in flight (and is not
// listed already).
func (q *partitionQueue) relist() {
	q.mu.Lock()
	list := !q.busy && !q.listed && len(q.batches) > 0
	q.listed = q.listed || list
	q.mu.Unlock()
	if list {
		q.p.markReady(q)
	}
}

func (p *Producer) markReady(q *partitionQueue) {
	p.rmu.Lock()
	p.ready = append(p.ready, q)
	p.rmu.Unlock()
	p.wake()
}

func (p *Producer) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// dispatch forms produce requests: whenever woken, it takes the oldest batch of every
// ready partition that has none in flight, groups them by leader, and sends one request
// per leader that has fewer than requestsPerBroker in flight. It returns once Close
// has seen every batch complete.
func (p *Producer) dispatch() {
	defer close(p.dispatched)
	var ready []*partitionQueue
	var retries []flight
	byLeader := map[int32][]flight{}
	sizes := map[int32]int64{}
	for {
		select {
		case <-p.kick:
		case <-p.stop:
			return
		}
		p.rmu.Lock()
		ready, p.ready = p.ready, ready[:0]
		retries, p.retries = p.retries, retries[:0]
		p.rmu.Unlock()

		leaders := p.leaders()
		now, draining := time.Now(), p.draining.Load()
		clear(sizes)
		var deferred []flight
		add := func(f flight) {
			l := leaders.of(f.q.partition)
			if len(byLeader[l]) > 0 && sizes[l]+f.b.bytes > p.maxRequestBytes {
				deferred = append(deferred, f) // sent next, in this order
				return
			}
			byLeader[l] = append(byLeader[l], f)
			sizes[l] += f.b.bytes
		}
		for _, f := range retries {
			add(f)
		}
		for _, q := range ready {
			q.mu.Lock()
			q.listed = false
			if q.busy || len(q.batches) == 0 {
				q.mu.Unlock()
				continue
			}
			i, wait := q.next(now, draining)
			if i < 0 {
				if wait > 0 {
					q.wakeIn(wait, now)
				}
				q.mu.Unlock()
				continue
			}
			b := q.take(i)
			q.busy = true
			q.mu.Unlock()
			add(flight{q: q, b: b})
		}

		// Send what each leader can take; the rest waits for one of its requests to end.
		p.rmu.Lock()
		p.retries = append(p.retries, deferred...)
		for l, fs := range byLeader {
			if p.requests[l] >= p.requestsPerBroker {
				p.retries = append(p.retries, fs...) // sent first next time, in this order
				delete(byLeader, l)
				continue
			}
			p.requests[l]++
		}
		p.rmu.Unlock()
		for l, fs := range byLeader {
			go p.write(l, fs)
			delete(byLeader, l)
		}
	}
}

// write sends one produce request with acks from all in-sync replicas and settles each
// partition's batch by its own result.
func (p *Producer) write(leader int32, fs []flight) {
	parts := make([]produceAPI.RequestPartition, len(fs))
	for i, f := range fs {
		parts[i] = produceAPI.RequestPartition{
			Partition: int32(f.q.partition),
			RecordSet: protocol.RecordSet{
				Attributes: protocol.Attributes(p.w.Compression) & 0x7,
				Records:    &recordReader{msgs: f.b.msgs},
			},
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.writeTimeout)
	res, err := p.w.Transport.RoundTrip(ctx, p.w.Addr, &produceAPI.Request{
		Acks:    int16(p.w.RequiredAcks),
		Timeout: int32(p.writeTimeout / time.Millisecond),
		Topics:  []produceAPI.RequestTopic{{Topic: p.topic, Partitions: parts}},
	})
	cancel()
	var results []produceAPI.ResponsePartition
	if err == nil {
		r, ok := res.(*produceAPI.Response)
		switch {
		case !ok:
			err = fmt.Errorf("unexpected produce response %T", res)
		case len(r.Topics) == 0:
			err = protocol.ErrNoTopic
		default:
			results = r.Topics[0].Partitions
		}
	}
	var routing *produceAPI.Error
	if errors.As(err, &routing) {
		// The transport found partitions of this request led by different brokers: its
		// metadata moved on since ours. Ask again before the retry.
		p.meta.Store(nil)
	}

	p.rmu.Lock()
	p.requests[leader]--
	p.rmu.Unlock()
	for _, f := range fs {
		ferr := err
		if err == nil {
			ferr = partitionResult(results, f.q.partition)
		}
		p.settle(f, ferr)
	}
	p.wake()
}

// partitionResult is the outcome of one partition in a produce response.
func partitionResult(results []produceAPI.ResponsePartition, partition int) error {
	for i := range results {
		if r := &results[i]; int(r.Partition) == partition {
			if r.ErrorCode == 0 {
				return nil
			}
			if r.ErrorMessage != "" {
				return fmt.Errorf("%w: %s", kafka.Error(r.ErrorCode), r.ErrorMessage)
			}
			return kafka.Error(r.ErrorCode)
		}
	}
	return protocol.ErrNoPartition
}

// settle retries a failed batch as kafka-go's Writer does (MaxAttempts, quadratic
// backoff; the partition stays busy meanwhile, so nothing overtakes it), or reports its
// final outcome and lets the partition's next batch go.
func (p *Producer) settle(f flight, err error) {
	if err != nil && f.attempt+1 < p.maxAttempts && retriable(err) {
		f.attempt++
		time.AfterFunc(min(time.Duration(f.attempt*f.attempt)*p.backoffMin, p.backoffMax), func() {
			p.rmu.Lock()
			p.retries = append(p.retries, f)
			p.rmu.Unlock()
			p.wake()
		})
		return
	}
	b := f.b
	b.err = err
	p.complete(b.msgs, err)
	msgs := b.msgs
	b.msgs = nil // waiters only read err
	close(b.done)
	p.putMessages(msgs)

	q := f.q
	q.mu.Lock()
	q.busy = false
	q.mu.Unlock()
	q.relist()
	p.open.Add(-1)
	p.pending.Done()
}

// getMessages returns an empty slice for a batch's messages: batches come and go with
// every round trip, and their slices grow to the usual batch size once, not every time.
func (p *Producer) getMessages() []kafka.Message {
	if m, ok := p.msgPool.Get().(*[]kafka.Message); ok {
		return *m
	}
	return make([]kafka.Message, 0, 16)
}

func (p *Producer) putMessages(msgs []kafka.Message) {
	if cap(msgs) > 2*p.batchSize { // append may round up past batchSize
		return
	}
	clear(msgs) // drop the references to event bytes
	msgs = msgs[:0]
	p.msgPool.Put(&msgs)
}

// retriable is kafka-go's rule for retrying a batch (isTemporary, isTransientNetworkError).
func retriable(err error) bool {
	var temp interface{ Temporary() bool }
	if errors.As(err, &temp) && temp.Temporary() {
		return true
	}
	var routing *produceAPI.Error // leaders moved between our metadata and the transport's
	if errors.As(err, &routing) {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// messageSize is what a message counts against BatchBytes.
func messageSize(m *kafka.Message) int64 {
	n := len(m.Key) + len(m.Value)
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return int64(n)
}

// send enqueues msgs on their partitions and waits until every batch holding one of them
// completed, the deadline passes or ctx ends. enqueued reports whether any message
// reached a batch (only those get a completion).
func (p *Producer) send(ctx context.Context, deadline <-chan struct{}, msgs []kafka.Message, pace float64) (enqueued bool, err error) {
	if len(msgs) == 0 {
		return false, nil
	}
	n, err := p.partitionCount(ctx)
	if err != nil {
		return false, err
	}
	var buf [4]*batch
	waits := buf[:0]
	// Requests are keyed by project, so nearly always every message shares one key and
	// partition: balance each distinct key once.
	first := p.partitionOf(&msgs[0], n)
	same := true
	for i := 1; i < len(msgs) && same; i++ {
		same = bytes.Equal(msgs[i].Key, msgs[0].Key) || p.partitionOf(&msgs[i], n) == first
	}
	if same {
		waits, err = p.queue(first).enqueue(msgs, waits, pace)
		enqueued = err == nil
	} else {
		byPartition := map[int][]kafka.Message{}
		var order []int
		for i := range msgs {
			part := p.partitionOf(&msgs[i], n)
			if _, ok := byPartition[part]; !ok {
				order = append(order, part)
			}
			byPartition[part] = append(byPartition[part], msgs[i])
		}
		for _, part := range order {
			if waits, err = p.queue(part).enqueue(byPartition[part], waits, 0); err != nil {
				break
			}
			enqueued = true
		}
	}
	if err != nil {
		return enqueued, err
	}
	for _, b := range waits {
		select {
		case <-b.done:
			if b.err != nil {
				return true, b.err
			}
		case <-deadline:
			return true, context.DeadlineExceeded
		case <-ctx.Done():
			return true, ctx.Err()
		}
	}
	return true, nil
}

func (p *Producer) partitionOf(m *kafka.Message, n int) int {
	return p.w.Balancer.Balance(*m, p.partitionList(n)...)
}

// partitionList returns [0, n) without allocating (kafka-go's Balancer wants the list).
func (p *Producer) partitionList(n int) []int {
	if l := p.partitions.Load(); l != nil && len(*l) >= n {
		return (*l)[:n]
	}
	l := make([]int, n)
	for i := range l {
		l[i] = i
	}
	p.partitions.Store(&l)
	return l
}

type topicMeta struct {
	n       int
	leaders leaderMap
	expires time.Time
}

// leaderMap is each partition's leader broker id, by partition (-1 when unknown).
type leaderMap []int32

func (m leaderMap) of(partition int) int32 {
	if partition < len(m) {
		return m[partition]
	}
	return -1
}

// partitionCount is the topic's number of partitions (see metadata).
func (p *Producer) partitionCount(ctx context.Context) (int, error) {
	c, err := p.metadata(ctx)
	if err != nil {
		return 0, err
	}
	return c.n, nil
}

// metadata is the topic's partitions and their leaders from the Transport's metadata
// cache (as the Writer asks it, but once per request rather than once per message, and
// remembered for a second).
func (p *Producer) metadata(ctx context.Context) (*topicMeta, error) {
	now := time.Now()
	if c := p.meta.Load(); c != nil && now.Before(c.expires) {
		return c, nil
	}
	// Once a second at most; bounded like a request (callers' deadlines are channels).
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	r, err := p.w.Transport.RoundTrip(ctx, p.w.Addr, &metadataAPI.Request{TopicNames: []string{p.topic}})
	if err != nil {
		return nil, err
	}
	for _, t := range r.(*metadataAPI.Response).Topics {
		if t.Name != p.topic {
			continue
		}
		if t.ErrorCode != 0 {
			return nil, kafka.Error(t.ErrorCode)
		}
		if len(t.Partitions) == 0 {
			break
		}
		c := &topicMeta{n: len(t.Partitions), leaders: make(leaderMap, len(t.Partitions)), expires: now.Add(time.Second)}
		for i := range c.leaders {
			c.leaders[i] = -1
		}
		for _, tp := range t.Partitions {
			if int(tp.PartitionIndex) < len(c.leaders) {
				c.leaders[tp.PartitionIndex] = tp.LeaderID
			}
		}
		p.meta.Store(c)
		return c, nil
	}
	return nil, kafka.UnknownTopicOrPartition
}

// leaders returns the partitions' leaders as last known. Requests are grouped by them;
// a stale answer costs a retry (the transport refuses a request whose partitions have
// different leaders), never a misrouted message.
func (p *Producer) leaders() leaderMap {
	if c, err := p.metadata(context.Background()); err == nil {
		return c.leaders
	}
	if c := p.meta.Load(); c != nil {
		return c.leaders
	}
	return nil
}

// queue returns the partition's queue.
func (p *Producer) queue(partition int) *partitionQueue {
	if qs := p.queues.Load(); qs != nil && partition < len(*qs) && (*qs)[partition] != nil {
		return (*qs)[partition]
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var qs []*partitionQueue
	if cur := p.queues.Load(); cur != nil {
		qs = *cur
	}
	if partition < len(qs) && qs[partition] != nil {
		return qs[partition]
	}
	grown := make([]*partitionQueue, max(len(qs), partition+1))
	copy(grown, qs)
	grown[partition] = &partitionQueue{p: p, partition: partition, closed: p.closed}
	p.queues.Store(&grown)
	return grown[partition]
}

// closeQueues stops accepting messages, waits until every batch has its final outcome
// (written, or failed after its retries), and stops the dispatcher.
func (p *Producer) closeQueues() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	var qs []*partitionQueue
	if cur := p.queues.Load(); cur != nil {
		qs = *cur
	}
	p.mu.Unlock()
	// What is queued goes now, paced or not: draining must not wait for a schedule.
	p.draining.Store(true)
	for _, q := range qs {
		if q == nil {
			continue
		}
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		q.relist()
	}
	p.pending.Wait()
	close(p.stop)
	<-p.dispatched
}

// recordReader hands a batch's messages to kafka-go's encoder without copying them.
type recordReader struct {
	msgs       []kafka.Message
	i          int
	rec        kafka.Record
	key, value bytesReader
}

type bytesReader struct{ bytes.Reader }

func (*bytesReader) Close() error { return nil }

func (r *recordReader) ReadRecord() (*kafka.Record, error) {
	if r.i >= len(r.msgs) {
		return nil, io.EOF
	}
	m := &r.msgs[r.i]
	r.i++
	r.rec = kafka.Record{Time: m.Time, Headers: m.Headers}
	if m.Key != nil {
		r.key.Reset(m.Key)
		r.rec.Key = &r.key
	}
	if m.Value != nil {
		r.value.Reset(m.Value)
		r.rec.Value = &r.value
	}
	return &r.rec, nil
}
