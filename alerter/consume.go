package alerter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/retry"
)

// projectErrors is what a batch holds for one project: the receive times of its errors.
type projectErrors struct {
	first, last time.Time
	n           int
}

// consumeLoop is the threshold loop: FetchMessage → wait until the consumer group has
// stored the batch → evaluate every project with errors in it → CommitMessages. Offsets
// are committed only after the evaluations (and the alerts they recorded) are durable.
func (s *Service) consumeLoop(ctx context.Context) error {
	// A GroupReader, as in the consumer: each offset is committed through the group
	// generation its message was fetched in, so a rebalance cannot move it backwards (K12).
	reader, err := kafkax.NewGroupReader(s.brokers, s.cfg.Kafka.Topic, kafkax.ReaderOptions{
		GroupID:  s.cfg.GroupID,
		MinBytes: 1,
		MaxBytes: s.cfg.FetchMaxBytes,
		MaxWait:  s.cfg.FetchMaxWait,

		SessionTimeout: s.cfg.SessionTimeout,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := reader.Close(); err != nil {
			s.logger.Warn("closing the Kafka reader", "error", err)
		}
	}()
	// A private transport, closed on return, for reading the consumer group's offsets.
	transport := &kafka.Transport{DialTimeout: 3 * time.Second, MetadataTTL: 5 * time.Second}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(s.brokers...), Transport: transport, Timeout: 10 * time.Second}
	dec := event.NewDecoder(event.DefaultLimits())

	return kafkax.FetchLoop{
		Name: "alerter",
		// Batches close when full or BatchWait after their first message: the alerter
		// needs no group commit of its own (it waits for the consumer anyway).
		Fetch: func(ctx context.Context) ([]kafka.Message, error) {
			return kafkax.FetchBatch(ctx, reader, kafkax.BatchPolicy{Size: s.cfg.BatchSize, Wait: s.cfg.BatchWait})
		},
		Handle: func(batch []kafka.Message) error {
			return s.handleBatch(ctx, reader, client, dec, batch)
		},
		BackoffMin: s.cfg.BackoffMin,
		BackoffMax: s.cfg.BackoffMax,
		Logger:     s.logger,
		OnError:    func(error) { s.m.fetchErrors.Inc() },
	}.Run(ctx)
}

// handleBatch evaluates the batch and commits its offsets. It retries PostgreSQL and
// Kafka failures with backoff until ctx ends; it returns an error only then.
func (s *Service) handleBatch(ctx context.Context, r *kafkax.GroupReader, client *kafka.Client, dec *event.Decoder, batch []kafka.Message) error {
	projects := map[uuid.UUID]*projectErrors{}
	maxOffset := map[int]int64{}
	for _, m := range batch {
		maxOffset[m.Partition] = max(maxOffset[m.Partition], m.Offset)
		// Only three fields count here: peek at them, and decode only the messages a
		// peek cannot read (decoding every message was most of the alerter's CPU).
		ev, ok := event.PeekMessage(m.Value)
		if !ok {
			full, err := dec.DecodeMessage(m.Value)
			if err != nil {
				continue // the consumer's to dead-letter
			}
			ev = event.Summary{ProjectID: full.ProjectID, Type: full.Type, ReceivedAt: full.ReceivedAt}
		}
		if ev.Type != event.TypeError {
			continue // other types never count
		}
		p := projects[ev.ProjectID]
		if p == nil {
			p = &projectErrors{first: ev.ReceivedAt, last: ev.ReceivedAt}
			projects[ev.ProjectID] = p
		}
		p.first = minTime(p.first, ev.ReceivedAt)
		p.last = maxTime(p.last, ev.ReceivedAt)
		p.n++
	}
	if len(projects) > 0 {
		if err := s.waitStored(ctx, client, maxOffset); err != nil {
			return err
		}
		for id, p := range projects {
			for attempt := 0; ; attempt++ {
				err := s.evaluate(ctx, id, p.first, p.last)
				if err == nil {
					s.setFailing(nil)
					s.m.evalLag.Observe(max(0, s.now().Sub(p.last).Seconds()))
					break
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s.m.evalErrors.Inc()
				s.setFailing(err)
				s.logger.Warn("evaluating an alert window failed; retrying", "project", id, "error", err)
				if !retry.Sleep(ctx, retry.Backoff(s.cfg.BackoffMin, s.cfg.BackoffMax, attempt)) {
					return ctx.Err()
				}
			}
		}
	}
	for attempt := 0; ; attempt++ {
		err := r.CommitMessages(ctx, batch...)
		if err == nil {
			s.m.messagesTaken.Add(float64(len(batch)))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.m.commitErrors.Inc()
		s.logger.Warn("committing offsets failed; retrying", "error", err)
		if attempt >= 5 {
			// The evaluations are durable; redelivery re-evaluates idempotently.
			return nil
		}
		if !retry.Sleep(ctx, retry.Backoff(s.cfg.BackoffMin, s.cfg.BackoffMax, attempt)) {
			return ctx.Err()
		}
	}
}

// waitStored waits until the consumer group (Config.StoredGroup) has committed past
// every message of the batch: its offsets are committed only after the events are in
// PostgreSQL (or dead-lettered), so the windows counted there are then complete.
func (s *Service) waitStored(ctx context.Context, client *kafka.Client, maxOffset map[int]int64) error {
	start := time.Now()
	partitions := make([]int, 0, len(maxOffset))
	for p := range maxOffset {
		partitions = append(partitions, p)
	}
	var failures int
	for {
		committed, err := s.storedOffsets(ctx, client, partitions)
		if err == nil {
			done := true
			for p, off := range maxOffset {
				if committed[p] <= off {
					done = false
					break
				}
			}
			if done {
				s.m.storedWait.Observe(time.Since(start).Seconds())
				return nil
			}
			failures = 0
			if !retry.Sleep(ctx, s.cfg.StoredPoll) {
				return ctx.Err()
			}
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.m.fetchErrors.Inc()
		s.logger.Warn("reading the consumer group's offsets failed; retrying", "group", s.cfg.StoredGroup, "error", err)
		if !retry.Sleep(ctx, retry.Backoff(s.cfg.BackoffMin, s.cfg.BackoffMax, failures)) {
			return ctx.Err()
		}
		failures++
	}
}

// storedOffsets returns the consumer group's committed offsets (-1 or absent: none).
func (s *Service) storedOffsets(ctx context.Context, client *kafka.Client, partitions []int) (map[int]int64, error) {
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{
		GroupID: s.cfg.StoredGroup,
		Topics:  map[string][]int{s.cfg.Kafka.Topic: partitions},
	})
	if err != nil {
		return nil, fmt.Errorf("fetching offsets of group %s: %w", s.cfg.StoredGroup, err)
	}
	out := make(map[int]int64, len(partitions))
	// A group that never committed is "not found" on some brokers: nothing stored yet.
	if resp.Error != nil {
		if errors.Is(resp.Error, kafka.GroupIdNotFound) {
			return out, nil
		}
		return nil, fmt.Errorf("fetching offsets of group %s: %w", s.cfg.StoredGroup, resp.Error)
	}
	for _, p := range resp.Topics[s.cfg.Kafka.Topic] {
		if p.Error != nil {
			if errors.Is(p.Error, kafka.GroupIdNotFound) {
				continue
			}
			return nil, fmt.Errorf("fetching offset of group %s on partition %d: %w", s.cfg.StoredGroup, p.Partition, p.Error)
		}
		out[p.Partition] = p.CommittedOffset
	}
	return out, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
