// Package deadletter writes messages the consumer can neither decode nor store to the
// dead-letter topic: the original key and value, the original headers, and headers that
// say why and where from. A dead letter is written synchronously with acks=all before
// the offset past it is committed (docs/reliability.md promises 8 and 10), so a message is
// always either stored, dead-lettered, or redelivered.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

// Header names.
const (
	HeaderReason    = "pulseboard-dlq-reason"
	HeaderCode      = "pulseboard-dlq-code"
	HeaderTopic     = "pulseboard-dlq-topic"
	HeaderPartition = "pulseboard-dlq-partition"
	HeaderOffset    = "pulseboard-dlq-offset"
	HeaderTime      = "pulseboard-dlq-time"
	// HeaderTruncated is present (with the original value's length) when the value had
	// to be cut to fit the dead-letter topic's size limit.
	HeaderTruncated = "pulseboard-dlq-truncated"
)

// Codes beyond the event.Code* decode errors.
const (
	// CodeUnknownProject: the event's project does not exist.
	CodeUnknownProject = "UNKNOWN_PROJECT"
	// CodeDBRejected: PostgreSQL refused the row; the reason starts with the SQLSTATE.
	CodeDBRejected = "DB_REJECTED"
)

// truncatedValueBytes is how much of an oversized value is kept as evidence.
const truncatedValueBytes = 64 << 10

// Letter is one message to dead-letter and why.
type Letter struct {
	Msg    kafka.Message
	Code   string
	Reason string
}

// Writer writes letters to the dead-letter topic.
type Writer struct {
	w        *kafka.Writer
	maxBytes int
	now      func() time.Time
}

// New returns a Writer for topic. maxMessageBytes bounds one dead-letter message
// (key + value + headers); it must not exceed the topic's max.message.bytes. Larger
// values are truncated (and marked) instead of failing forever.
func New(brokers []string, topic string, maxMessageBytes int) (*Writer, error) {
	o := kafkax.DefaultWriterOptions()
	o.BatchBytes = int64(maxMessageBytes) + 64<<10 // room for the batch framing
	o.WriteTimeout = 10 * time.Second
	w, err := kafkax.NewWriter(brokers, topic, o)
	if err != nil {
		return nil, fmt.Errorf("dead-letter writer: %w", err)
	}
	return &Writer{w: w, maxBytes: maxMessageBytes, now: time.Now}, nil
}

// Write makes one attempt to write letters and returns the indexes of those that were
// not written (nil when all were). kafka-go has already retried internally; the caller
// backs off and calls again with the failed ones.
func (w *Writer) Write(ctx context.Context, letters []Letter) ([]int, error) {
	if len(letters) == 0 {
		return nil, nil
	}
	msgs := make([]kafka.Message, len(letters))
	now := w.now().UTC()
	for i, l := range letters {
		msgs[i] = w.message(l, now, false)
	}
	err := w.w.WriteMessages(ctx, msgs...)
	if err == nil {
		return nil, nil
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == len(msgs) {
		var failed []int
		var first error
		for i, e := range werrs {
			if e == nil {
				continue
			}
			if errors.Is(e, kafka.MessageSizeTooLarge) {
				// The broker's limit is lower than ours: keep a truncated copy rather
				// than stalling the partition forever.
				if e2 := w.w.WriteMessages(ctx, w.message(letters[i], now, true)); e2 == nil {
					continue
				} else {
					e = e2
				}
			}
			failed = append(failed, i)
			if first == nil {
				first = e
			}
		}
		if len(failed) == 0 {
			return nil, nil
		}
		return failed, fmt.Errorf("writing %d of %d dead letters: %w", len(failed), len(msgs), first)
	}
	all := make([]int, len(letters))
	for i := range all {
		all[i] = i
	}
	return all, fmt.Errorf("writing %d dead letters: %w", len(msgs), err)
}

// message builds the dead-letter message for l: the original key, value and headers
// plus the pulseboard-dlq-* headers.
func (w *Writer) message(l Letter, now time.Time, forceTruncate bool) kafka.Message {
	m := l.Msg
	headers := make([]kafka.Header, 0, len(m.Headers)+7)
	headers = append(headers, m.Headers...)
	headers = append(headers,
		kafka.Header{Key: HeaderReason, Value: []byte(l.Reason)},
		kafka.Header{Key: HeaderCode, Value: []byte(l.Code)},
		kafka.Header{Key: HeaderTopic, Value: []byte(m.Topic)},
		kafka.Header{Key: HeaderPartition, Value: strconv.AppendInt(nil, int64(m.Partition), 10)},
		kafka.Header{Key: HeaderOffset, Value: strconv.AppendInt(nil, m.Offset, 10)},
		kafka.Header{Key: HeaderTime, Value: now.AppendFormat(nil, time.RFC3339Nano)},
	)
	value := m.Value
	size := len(m.Key) + len(value)
	for _, h := range headers {
		size += len(h.Key) + len(h.Value)
	}
	if forceTruncate || size > w.maxBytes {
		keep := min(len(value), truncatedValueBytes)
		value = value[:keep:keep]
		headers = append(headers, kafka.Header{Key: HeaderTruncated, Value: strconv.AppendInt(nil, int64(len(m.Value)), 10)})
	}
	return kafka.Message{Key: m.Key, Value: value, Headers: headers}
}

// Close flushes and closes the writer and its connections.
func (w *Writer) Close() error {
	err := w.w.Close()
	// kafka-go closes only transports it created itself; kafkax gives it its own.
	if t, ok := w.w.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
	return err
}
