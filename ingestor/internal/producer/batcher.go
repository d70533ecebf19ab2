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
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// Group commit. kafka-go's Writer holds every partition's batch open for BatchTimeout and
// writes one batch per partition at a time, so a synchronous request waits the timeout
// plus a round trip however idle the broker is, and under load tiny batches queue behind
// each other. The profile of single-event ingest showed the ingestor mostly idle, its
// throughput set by connections ÷ that wait. Here each partition has one flusher that
// writes as soon as it has messages: with one produce request in flight per partition
// (as kafka-go, so a partition's messages keep their order), the messages of every
// request arriving meanwhile form the next request, and batches grow with the load
// instead of with a timer. The produce requests, their retries and their acks are
// kafka-go's (Client.Produce over the Writer's Transport); only the batching is ours.

// batch is one produce request's messages. done is closed once its final outcome (err)
// is known, after retries.
type batch struct {
	msgs  []kafka.Message
	bytes int64
	done  chan struct{}
	err   error
}

// partitionQueue holds one partition's batches waiting for its flusher: the oldest first,
// the last one still open to new messages.
type partitionQueue struct {
	p         *Producer
	partition int
	mu        sync.Mutex
	cond      sync.Cond
	batches   []*batch
	closed    bool
}

// errClosed answers writes after Close, like kafka-go's Writer.
var errClosed = fmt.Errorf("producer closed: %w", io.ErrClosedPipe)

// enqueue appends msgs (all for this partition) to the open batch, opening new ones past
// the size limits, and adds the batches they went to to waits.
func (q *partitionQueue) enqueue(msgs []kafka.Message, waits []*batch) ([]*batch, error) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return waits, errClosed
	}
	for i := range msgs {
		size := messageSize(&msgs[i])
		var b *batch
		if n := len(q.batches); n > 0 {
			b = q.batches[n-1]
		}
		if b == nil || len(b.msgs) >= q.p.batchSize || (len(b.msgs) > 0 && b.bytes+size > q.p.batchBytes) {
			b = &batch{msgs: q.p.getMessages(), done: make(chan struct{})}
			q.batches = append(q.batches, b)
		}
		b.msgs = append(b.msgs, msgs[i])
		b.bytes += size
		if len(waits) == 0 || waits[len(waits)-1] != b {
			waits = append(waits, b)
		}
	}
	q.mu.Unlock()
	q.cond.Signal()
	return waits, nil
}

// run is the partition's flusher: it writes the oldest batch whenever there is one, so
// messages enqueued while a write is in flight make up the next write.
func (q *partitionQueue) run() {
	defer q.p.flushers.Done()
	for {
		q.mu.Lock()
		for len(q.batches) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.batches) == 0 { // closed and drained
			q.mu.Unlock()
			return
		}
		b := q.batches[0]
		q.batches[0] = nil
		q.batches = q.batches[1:]
		q.mu.Unlock()
		q.p.write(q.partition, b)
	}
}

// write produces one batch with acks from all in-sync replicas, retrying temporary errors
// as kafka-go's Writer does (MaxAttempts, quadratic backoff), then reports the outcome.
func (p *Producer) write(partition int, b *batch) {
	var err error
	for attempt := range p.maxAttempts {
		if attempt > 0 {
			time.Sleep(min(time.Duration(attempt*attempt)*p.backoffMin, p.backoffMax))
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.writeTimeout)
		var res *kafka.ProduceResponse
		res, err = p.client.Produce(ctx, &kafka.ProduceRequest{
			Topic: p.topic, Partition: partition, RequiredAcks: p.w.RequiredAcks,
			Compression: p.w.Compression, Records: &recordReader{msgs: b.msgs},
		})
		cancel()
		if res != nil {
			err = res.Error
		}
		if err == nil || !retriable(err) {
			break
		}
	}
	b.err = err
	p.complete(b.msgs, err)
	msgs := b.msgs
	b.msgs = nil // waiters only read err
	close(b.done)
	p.putMessages(msgs)
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
// completed or ctx ends. enqueued reports whether any message reached a batch (only those
// get a completion).
func (p *Producer) send(ctx context.Context, msgs []kafka.Message) (enqueued bool, err error) {
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
		waits, err = p.queue(first).enqueue(msgs, waits)
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
			if waits, err = p.queue(part).enqueue(byPartition[part], waits); err != nil {
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

type partitionCount struct {
	n       int
	expires time.Time
}

// partitionCount is the topic's number of partitions from the Transport's metadata
// cache (as the Writer asks it, but once per request rather than once per message, and
// remembered for a second).
func (p *Producer) partitionCount(ctx context.Context) (int, error) {
	now := time.Now()
	if c := p.count.Load(); c != nil && now.Before(c.expires) {
		return c.n, nil
	}
	r, err := p.w.Transport.RoundTrip(ctx, p.w.Addr, &metadataAPI.Request{TopicNames: []string{p.topic}})
	if err != nil {
		return 0, err
	}
	for _, t := range r.(*metadataAPI.Response).Topics {
		if t.Name != p.topic {
			continue
		}
		if t.ErrorCode != 0 {
			return 0, kafka.Error(t.ErrorCode)
		}
		if len(t.Partitions) == 0 {
			break
		}
		p.count.Store(&partitionCount{n: len(t.Partitions), expires: now.Add(time.Second)})
		return len(t.Partitions), nil
	}
	return 0, kafka.UnknownTopicOrPartition
}

// queue returns the partition's queue, starting its flusher the first time.
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
	q := &partitionQueue{p: p, partition: partition, closed: p.closed}
	q.cond.L = &q.mu
	grown[partition] = q
	p.queues.Store(&grown)
	if !q.closed {
		p.flushers.Add(1)
		go q.run()
	}
	return q
}

// closeQueues stops accepting messages and waits until every flusher wrote what it had.
func (p *Producer) closeQueues() {
	p.mu.Lock()
	p.closed = true
	var qs []*partitionQueue
	if cur := p.queues.Load(); cur != nil {
		qs = *cur
	}
	p.mu.Unlock()
	for _, q := range qs {
		if q == nil {
			continue
		}
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		q.cond.Broadcast()
	}
	p.flushers.Wait()
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
