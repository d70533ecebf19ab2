package kafkax

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// GroupReader is a consumer group member with the methods of kafka-go's Reader that
// PulseBoard uses (FetchMessage, CommitMessages, Close), built on kafka-go's
// ConsumerGroup API so that a rebalance can never move a committed offset backwards
// (docs/reliability.md K12, promise 9).
//
// kafka-go's Reader keeps handing out messages it fetched before a rebalance until the
// next generation has started, and commits them through whatever generation is current
// when the commit is made. A member that was slow when its partition moved therefore
// commits the partition's old offsets after the new owner committed newer ones, and the
// committed offset goes back (the fault tests saw it stay there for seconds: lag that
// does not drain, redelivery after the next crash).
//
// GroupReader ties every message to the generation it was fetched in (in
// Message.WriterData, which kafka-go leaves unused for read messages) and commits it
// through that generation. Once the group has moved on, the coordinator refuses such a
// commit (ILLEGAL_GENERATION), so only the partition's owner of the current generation
// can move its offset, and it reads from the committed offset on. Messages of an ended
// generation still queued are dropped by FetchMessage; the new owner reads them again
// and the consumer's dedup gate absorbs what was stored twice. Each assigned partition
// is read by its own partition reader for the generation's lifetime.
type GroupReader struct {
	brokers []string
	topic   string
	opts    ReaderOptions
	cg      *kafka.ConsumerGroup

	msgs    chan kafka.Message
	errs    chan error
	current atomic.Pointer[kafka.Generation] // nil between generations

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// joinErrorGrace is how long retriable errors joining the group are absorbed before
// FetchMessage reports them.
const joinErrorGrace = 30 * time.Second

// errStaleCommit is returned for messages that were not fetched by a GroupReader.
var errStaleCommit = errors.New("kafkax: committing a message that was not fetched by this GroupReader")

// NewGroupReader joins the consumer group o.GroupID on topic with the settings of
// NewReader: FirstOffset for partitions without a committed offset (K13), partition
// watching (K14), o.SessionTimeout (with heartbeats at a third of it, 3 s at most) and a
// 30 s rebalance timeout.
func NewGroupReader(brokers []string, topic string, o ReaderOptions) (*GroupReader, error) {
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                     o.GroupID,
		Brokers:                brokers,
		Topics:                 []string{topic},
		HeartbeatInterval:      heartbeat(o.session()),
		SessionTimeout:         o.session(),
		RebalanceTimeout:       30 * time.Second,
		JoinGroupBackoff:       time.Second,
		WatchPartitionChanges:  true,
		PartitionWatchInterval: 5 * time.Second,
		StartOffset:            kafka.FirstOffset,
	})
	if err != nil {
		return nil, fmt.Errorf("kafkax: consumer group %s: %w", o.GroupID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &GroupReader{
		brokers: brokers, topic: topic, opts: o, cg: cg,
		msgs:   make(chan kafka.Message, 1000),
		errs:   make(chan error, 1),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go r.run(ctx)
	return r, nil
}

// run follows the group's generations: each one starts a reader per assigned
// partition, all of which stop when the generation ends.
func (r *GroupReader) run(ctx context.Context) {
	defer close(r.done)
	var failingSince time.Time
	for {
		gen, err := r.cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				return
			}
			// A real cluster answers COORDINATOR_NOT_AVAILABLE until it has created
			// __consumer_offsets, and NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS while
			// the coordinator moves: kafka-go backs off and joins again. Only a join that
			// keeps failing is worth an error.
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			var kerr kafka.Error
			if errors.As(err, &kerr) && kerr.Temporary() && time.Since(failingSince) < joinErrorGrace {
				continue
			}
			r.report(fmt.Errorf("joining consumer group %s: %w", r.opts.GroupID, err))
			continue
		}
		failingSince = time.Time{}
		r.current.Store(gen)
		gen.Start(func(gctx context.Context) {
			<-gctx.Done()
			r.current.CompareAndSwap(gen, nil)
		})
		for _, a := range gen.Assignments[r.topic] {
			gen.Start(func(gctx context.Context) { r.readPartition(gctx, gen, a) })
		}
	}
}

// readPartition feeds one assigned partition's messages, tagged with their generation,
// until the generation ends. It never returns early: kafka-go ends a generation as
// soon as one of its functions returns.
func (r *GroupReader) readPartition(ctx context.Context, gen *kafka.Generation, a kafka.PartitionAssignment) {
	pr := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        r.brokers,
		Topic:          r.topic,
		Partition:      a.ID,
		MinBytes:       r.opts.MinBytes,
		MaxBytes:       r.opts.MaxBytes,
		MaxWait:        r.opts.MaxWait,
		ReadBackoffMin: 100 * time.Millisecond,
		ReadBackoffMax: time.Second,
		QueueCapacity:  100,
	})
	defer pr.Close()
	if err := pr.SetOffset(a.Offset); err != nil {
		r.report(fmt.Errorf("partition %d: starting at offset %d: %w", a.ID, a.Offset, err))
		<-ctx.Done()
		return
	}
	for {
		m, err := pr.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.report(fmt.Errorf("partition %d: %w", a.ID, err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		m.WriterData = gen
		select {
		case r.msgs <- m:
		case <-ctx.Done():
			return
		}
	}
}

// report hands an error to the next FetchMessage, unless one is already waiting.
func (r *GroupReader) report(err error) {
	select {
	case r.errs <- err:
	default:
	}
}

// FetchMessage returns the next message of a partition assigned to this member in the
// current generation; messages fetched in a generation that has ended are dropped. It
// returns an error that a partition reader or the group hit (the reader keeps going),
// ctx's error, or io.EOF once the reader is closed.
func (r *GroupReader) FetchMessage(ctx context.Context) (kafka.Message, error) {
	for {
		select {
		case <-ctx.Done():
			return kafka.Message{}, ctx.Err()
		case <-r.done:
			return kafka.Message{}, io.EOF
		case err := <-r.errs:
			return kafka.Message{}, err
		case m := <-r.msgs:
			if gen, _ := m.WriterData.(*kafka.Generation); gen == nil || gen != r.current.Load() {
				continue
			}
			return m, nil
		}
	}
}

// Buffered is the number of fetched messages waiting for FetchMessage.
func (r *GroupReader) Buffered() int { return len(r.msgs) }

// CommitMessages commits, per partition, the offset after the highest message given,
// through the generation each message was fetched in. A generation that has ended is
// refused by the coordinator (or finds its connection closed): the error says so, and
// nothing moves.
func (r *GroupReader) CommitMessages(ctx context.Context, msgs ...kafka.Message) error {
	byGen := map[*kafka.Generation]map[int]int64{}
	for _, m := range msgs {
		gen, _ := m.WriterData.(*kafka.Generation)
		if gen == nil {
			return errStaleCommit
		}
		offs := byGen[gen]
		if offs == nil {
			offs = map[int]int64{}
			byGen[gen] = offs
		}
		if next := m.Offset + 1; next > offs[m.Partition] {
			offs[m.Partition] = next
		}
	}
	var errs []error
	for gen, offs := range byGen {
		errc := make(chan error, 1)
		go func() { errc <- gen.CommitOffsets(map[string]map[int]int64{r.topic: offs}) }()
		select {
		case err := <-errc:
			if err != nil {
				errs = append(errs, fmt.Errorf("committing offsets in generation %d: %w", gen.ID, err))
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// Close leaves the group and stops every partition reader. It is idempotent.
func (r *GroupReader) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = r.cg.Close()
		r.cancel()
		<-r.done
	})
	return r.closeErr
}
