package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/consumer/internal/deadletter"
	"github.com/pulseboard/pulseboard/consumer/internal/eventstore"
	"github.com/pulseboard/pulseboard/consumer/internal/livefeed"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/failpoint"
	"github.com/pulseboard/pulseboard/pkg/redisx"
	"github.com/pulseboard/pulseboard/pkg/retry"
)

type kafkaMessage = kafka.Message

// messageReader is the part of *kafkax.GroupReader the loop uses.
type messageReader interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// letter is a dead letter with its position in the batch (they are written in batch,
// hence offset, order).
type letter struct {
	pos int
	deadletter.Letter
}

// process takes one batch through the pipeline. Every step runs on ctx, the work
// context that survives a shutdown request by the shutdown bound. The order is the
// guarantee (docs/reliability.md promises 8, 10, 11, 13):
//
//  1. decode (done by the fetcher, decode); undecodable messages become dead letters;
//  2. store the rest in Postgres, retrying transient failures with backoff on the same
//     in-memory batch (the fetcher holds at most the next batch meanwhile); rows
//     Postgres refuses and events of unknown projects become dead letters;
//  3. write the dead letters (acks=all), retrying until Kafka takes them;
//  4. commit the offsets: now every message of the batch is stored or dead-lettered;
//  5. hand the newly stored events to the live feed (best-effort, never blocks).
//
// A crash anywhere before 4 means redelivery, which the store deduplicates; a crash
// after 4 can only lose live-feed messages. The failpoints (package failpoint, compiled
// only into fault-test builds) consumer/after-fetch, consumer/after-db-commit and
// consumer/after-offset-commit mark those places for the process-level fault tests, next
// to the in-process Hooks; consumer/mid-copy and consumer/before-db-commit are inside
// the store's transaction (internal/eventstore).
func (s *Service) process(ctx context.Context, r messageReader, dlq *deadletter.Writer, feed *livefeed.Publisher, b fetched) error {
	batch, evs, pos, letters := b.msgs, b.evs, b.pos, b.letters
	s.m.batchSize.Observe(float64(len(batch)))
	s.trackBatch(batch)
	defer s.inHand.processing.Store(0)
	s.unsafeCommitBeforeStore(ctx, r, batch)
	failpoint.Hit("consumer/after-fetch")
	if err := runHook(ctx, "AfterFetch", s.deps.Hooks.AfterFetch); err != nil {
		return err
	}

	// 2. Store.
	outcomes, rejections, err := s.storeAll(ctx, evs)
	if err != nil {
		return err
	}
	stored, dups := 0, 0
	now := time.Now()
	for i, o := range outcomes {
		switch o {
		case eventstore.Stored:
			stored++
			s.m.receiveToStored.Observe(now.Sub(evs[i].ReceivedAt).Seconds())
		case eventstore.Duplicate:
			dups++
		case eventstore.UnknownProject:
			letters = append(letters, letter{pos[i], deadletter.Letter{Msg: batch[pos[i]], Code: deadletter.CodeUnknownProject,
				Reason: "project " + evs[i].ProjectID.String() + " does not exist"}})
		case eventstore.Rejected:
			rj := rejections[i]
			letters = append(letters, letter{pos[i], deadletter.Letter{Msg: batch[pos[i]], Code: deadletter.CodeDBRejected,
				Reason: "SQLSTATE " + rj.Code + ": " + rj.Message}})
		}
	}
	s.m.rowsStored.Add(float64(stored))
	s.m.duplicates.Add(float64(dups))
	failpoint.Hit("consumer/after-db-commit")
	if err := runHook(ctx, "AfterDBCommit", s.deps.Hooks.AfterDBCommit); err != nil {
		return err
	}

	// 3. Dead letters.
	if len(letters) > 0 {
		slices.SortFunc(letters, func(a, b letter) int { return a.pos - b.pos })
		if err := s.deadLetter(ctx, dlq, letters); err != nil {
			return err
		}
	}

	// 4. Commit.
	s.commit(ctx, r, batch)
	failpoint.Hit("consumer/after-offset-commit")
	if err := runHook(ctx, "AfterOffsetCommit", s.deps.Hooks.AfterOffsetCommit); err != nil {
		return err
	}

	// 5. Publish, in batch (offset) order.
	if stored > 0 {
		items := make([]livefeed.Item, 0, stored)
		for i, o := range outcomes {
			if o != eventstore.Stored {
				continue
			}
			ev := &evs[i]
			items = append(items, livefeed.Item{
				Channel:    redisx.EventsChannel(ev.ProjectID),
				Payload:    ev.AppendJSON(make([]byte, 0, 256+len(ev.Payload)+len(ev.Context))),
				ReceivedAt: ev.ReceivedAt,
			})
		}
		feed.Publish(items)
	}
	if len(letters) > 0 || dups > 0 {
		s.logger.Debug("batch done", "messages", len(batch), "stored", stored, "duplicates", dups, "dead_letters", len(letters))
	}
	return nil
}

// decode is step 1 of process, run by the fetcher: undecodable messages, and events
// received further in the future than MaxClockSkew, become dead letters.
func (s *Service) decode(batch []kafka.Message) fetched {
	b := fetched{msgs: batch, evs: make([]event.Event, 0, len(batch)), pos: make([]int, 0, len(batch))}
	horizon := time.Now().Add(s.cfg.MaxClockSkew)
	for i := range batch {
		ev, err := s.dec.DecodeMessage(batch[i].Value)
		if err != nil {
			code, reason := "OTHER", err.Error()
			var de *event.Error
			if errors.As(err, &de) {
				code, reason = de.Code, de.Message
			}
			b.letters = append(b.letters, letter{i, deadletter.Letter{Msg: batch[i], Code: code, Reason: reason}})
			continue
		}
		if ev.ReceivedAt.After(horizon) {
			b.letters = append(b.letters, letter{i, deadletter.Letter{Msg: batch[i], Code: event.CodeInvalidTimestamp,
				Reason: "message/receivedAt " + ev.ReceivedAt.Format(event.TimeLayout) + " is in the future"}})
			continue
		}
		b.evs = append(b.evs, ev)
		b.pos = append(b.pos, i)
	}
	return b
}

// storeAll stores evs, retrying what is still pending after a transient failure until
// it is stored or ctx ends. It returns one outcome per event and the reasons of
// rejected ones.
func (s *Service) storeAll(ctx context.Context, evs []event.Event) ([]eventstore.Outcome, map[int]eventstore.Rejection, error) {
	outcomes := make([]eventstore.Outcome, len(evs))
	var rejections map[int]eventstore.Rejection
	if len(evs) == 0 {
		return outcomes, nil, nil
	}
	pending := make([]int, len(evs))
	for i := range pending {
		pending[i] = i
	}
	sub := evs
	for attempt := 0; ; attempt++ {
		var err error
		if time.Since(s.lastAhead) >= s.cfg.PartitionCheckInterval {
			if err = s.store.EnsureAhead(ctx); err == nil {
				s.lastAhead = time.Now()
			}
		}
		if err == nil {
			var res eventstore.Result
			res, err = s.store.Store(ctx, sub)
			for j, o := range res.Outcomes {
				outcomes[pending[j]] = o
			}
			for j, rj := range res.Rejections {
				if rejections == nil {
					rejections = map[int]eventstore.Rejection{}
				}
				rejections[pending[j]] = rj
			}
			if res.DataErrors > 0 {
				s.m.storeErrors.WithLabelValues(eventstore.KindData.String()).Add(float64(res.DataErrors))
			}
		}
		if err == nil {
			if s.storeFailing.Swap(nil) != nil {
				s.logger.Info("storing events works again", "attempts", attempt+1)
			}
			return outcomes, rejections, nil
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("storing %d events: %w", len(pending), err)
		}
		kind := eventstore.Classify(err)
		s.m.storeErrors.WithLabelValues(storeErrorLabel(kind)).Inc()
		setFailing(&s.storeFailing, err)
		// Keep only the rows still undecided; committed halves of a bisection stay done.
		next := pending[:0:0]
		for _, i := range pending {
			if outcomes[i] == eventstore.Pending {
				next = append(next, i)
			}
		}
		pending = next
		sub = make([]event.Event, len(pending))
		for j, i := range pending {
			sub[j] = evs[i]
		}
		delay := retry.Backoff(s.cfg.BackoffMin, s.cfg.BackoffMax, attempt)
		level := s.logger.Warn
		if kind == eventstore.KindUnexpected {
			level = s.logger.Error
		}
		level("storing events failed; retrying the same batch without committing",
			"kind", kind.String(), "pending", len(pending), "attempt", attempt+1, "retry_in", delay.String(), "error", err)
		if !retry.Sleep(ctx, delay) {
			return nil, nil, fmt.Errorf("storing %d events: %w", len(pending), err)
		}
	}
}

// deadLetter writes letters, retrying the failed ones with backoff until Kafka takes
// them or ctx ends: offsets past a dead letter must not be committed before it is
// durable.
func (s *Service) deadLetter(ctx context.Context, dlq *deadletter.Writer, letters []letter) error {
	todo := make([]deadletter.Letter, len(letters))
	for i := range letters {
		todo[i] = letters[i].Letter
	}
	for attempt := 0; ; attempt++ {
		failed, err := dlq.Write(ctx, todo)
		written := make([]bool, len(todo))
		for i := range written {
			written[i] = true
		}
		for _, i := range failed {
			written[i] = false
		}
		for i, ok := range written {
			if ok {
				s.m.dlqMessages.WithLabelValues(dlqCodeLabel(todo[i].Code)).Inc()
				// The reason is in the message's headers; it is not logged because it
				// may quote event content.
				s.logger.Warn("message dead-lettered", "code", todo[i].Code,
					"partition", todo[i].Msg.Partition, "offset", todo[i].Msg.Offset)
			}
		}
		if err == nil {
			if s.dlqFailing.Swap(nil) != nil {
				s.logger.Info("dead-letter writes work again")
			}
			return nil
		}
		s.m.dlqWriteErrors.Inc()
		setFailing(&s.dlqFailing, err)
		next := make([]deadletter.Letter, 0, len(failed))
		for _, i := range failed {
			next = append(next, todo[i])
		}
		todo = next
		delay := retry.Backoff(s.cfg.BackoffMin, s.cfg.BackoffMax, attempt)
		s.logger.Warn("writing dead letters failed; retrying before committing offsets",
			"pending", len(todo), "attempt", attempt+1, "retry_in", delay.String(), "error", err)
		if ctx.Err() != nil || !retry.Sleep(ctx, delay) {
			return fmt.Errorf("writing %d dead letters: %w", len(todo), err)
		}
	}
}

// commit commits, per partition, the highest offset of the batch: every message of the
// batch is stored or dead-lettered by now, and kafka-go delivers each partition in
// order, so nothing below it is unfinished (K11). A failed commit is logged, not
// retried: the rows are stored, the next batch's commit covers these offsets, and
// redelivery after a crash is deduplicated.
func (s *Service) commit(ctx context.Context, r messageReader, batch []kafka.Message) {
	last := map[int]kafka.Message{}
	for _, m := range batch {
		if l, ok := last[m.Partition]; !ok || m.Offset > l.Offset {
			last[m.Partition] = m
		}
	}
	msgs := make([]kafka.Message, 0, len(last))
	for _, m := range last {
		msgs = append(msgs, m)
	}
	if err := r.CommitMessages(ctx, msgs...); err != nil {
		s.m.commitErrors.Inc()
		s.logger.Warn("committing offsets failed; the stored messages will be redelivered and deduplicated", "error", err)
		return
	}
	s.m.offsetsCommitted.Add(float64(len(batch)))
}

// trackBatch updates the per-partition lag gauges and the oldest-message age.
func (s *Service) trackBatch(batch []kafka.Message) {
	last := map[int]kafka.Message{}
	oldest := time.Now()
	for _, m := range batch {
		last[m.Partition] = m
		if !m.Time.IsZero() && m.Time.Before(oldest) {
			oldest = m.Time
		}
	}
	for p, m := range last {
		s.m.lag.WithLabelValues(partitionLabel(p)).Set(float64(max(0, m.HighWaterMark-m.Offset-1)))
	}
	s.inHand.processing.Store(oldest.UnixNano())
}

// published records a live-feed pipeline's outcome.
func (s *Service) published(items []livefeed.Item, failed int, _ error) {
	if failed > 0 {
		s.m.publishErrors.WithLabelValues("error").Add(float64(failed))
	}
	if failed == len(items) {
		return
	}
	now := time.Now()
	for _, it := range items {
		s.m.receiveToPublish.Observe(now.Sub(it.ReceivedAt).Seconds())
	}
}

func runHook(ctx context.Context, name string, h func(context.Context) error) error {
	if h == nil {
		return nil
	}
	if err := h(ctx); err != nil {
		return fmt.Errorf("consumer: hook %s: %w", name, err)
	}
	return nil
}
