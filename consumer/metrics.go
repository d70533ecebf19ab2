package consumer

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/pulseboard/pulseboard/consumer/internal/deadletter"
	"github.com/pulseboard/pulseboard/consumer/internal/eventstore"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// dlqCodes is the bounded label set of pulseboard_consumer_dlq_messages_total.
var dlqCodes = []string{
	event.CodeInvalidJSON, event.CodeValidationFailed, event.CodeInvalidTimestamp, event.CodePayloadTooLarge,
	deadletter.CodeUnknownProject, deadletter.CodeDBRejected, "OTHER",
}

// metrics are the consumer's Prometheus collectors. No label carries a project id.
type metrics struct {
	batchSize        prometheus.Histogram
	storeDuration    prometheus.Histogram
	rowsStored       prometheus.Counter
	duplicates       prometheus.Counter
	dlqMessages      *prometheus.CounterVec
	dlqWriteErrors   prometheus.Counter
	storeErrors      *prometheus.CounterVec
	lag              *prometheus.GaugeVec
	receiveToStored  prometheus.Histogram
	receiveToPublish prometheus.Histogram
	publishErrors    *prometheus.CounterVec
	offsetsCommitted prometheus.Counter
	commitErrors     prometheus.Counter
	fetchErrors      prometheus.Counter
}

// delayBuckets cover 5 ms to ~80 s: normal operation is well under a second, an outage
// drains in minutes.
var delayBuckets = prometheus.ExponentialBuckets(0.005, 2, 15)

func newMetrics(reg prometheus.Registerer, held *inHand) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		batchSize: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pulseboard_consumer_batch_size_messages",
			Help:    "Messages per batch taken from Kafka.",
			Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000},
		}),
		storeDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pulseboard_consumer_store_duration_seconds",
			Help:    "Duration of one store transaction (dedup gate, COPY into events, rollups, commit), successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		rowsStored: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_consumer_rows_stored_total",
			Help: "Events newly stored in PostgreSQL.",
		}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_consumer_duplicates_total",
			Help: "Events absorbed by deduplication (redelivery, replays, producer or client retries).",
		}),
		dlqMessages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_consumer_dlq_messages_total",
			Help: "Messages written to the dead-letter topic, by reason code.",
		}, []string{"code"}),
		dlqWriteErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_consumer_dlq_write_errors_total",
			Help: "Failed attempts to write to the dead-letter topic (retried; offsets wait).",
		}),
		storeErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_consumer_store_errors_total",
			Help: "Failed store attempts: transient (retried after a backoff), data (a row PostgreSQL refuses; bisected), unexpected (retried).",
		}, []string{"kind"}),
		lag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pulseboard_consumer_lag_messages",
			Help: "Messages behind the partition's high-water mark, as of the last message fetched from it.",
		}, []string{"partition"}),
		receiveToStored: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pulseboard_consumer_receive_to_stored_seconds",
			Help:    "Delay from the ingestor's receive time to the commit of the event's row.",
			Buckets: delayBuckets,
		}),
		receiveToPublish: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pulseboard_consumer_receive_to_published_seconds",
			Help:    "Delay from the ingestor's receive time to the event's PUBLISH on Redis.",
			Buckets: delayBuckets,
		}),
		publishErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_consumer_publish_errors_total",
			Help: "Stored events not published to the live feed: error (Redis failed), dropped (queue full or stopping).",
		}, []string{"reason"}),
		offsetsCommitted: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_consumer_offsets_committed_total",
			Help: "Messages whose offsets were committed (after being stored or dead-lettered).",
		}),
		commitErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_consumer_commit_errors_total",
			Help: "Failed offset commits (the messages are stored; they will be redelivered and deduplicated).",
		}),
		fetchErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_consumer_fetch_errors_total",
			Help: "Errors returned by the Kafka reader while fetching.",
		}),
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_consumer_oldest_message_age_seconds",
		Help: "Age (by Kafka timestamp) of the oldest message in hand (the batch being processed, or formed); 0 when idle. Grows during an outage.",
	}, func() float64 {
		ns := held.oldest()
		if ns == 0 {
			return 0
		}
		return time.Since(time.Unix(0, ns)).Seconds()
	})
	// Initialise the bounded label sets so dashboards and alerts see zeros, not gaps.
	for _, c := range dlqCodes {
		m.dlqMessages.WithLabelValues(c)
	}
	for _, k := range []eventstore.Kind{eventstore.KindTransient, eventstore.KindData, eventstore.KindUnexpected} {
		m.storeErrors.WithLabelValues(k.String())
	}
	m.publishErrors.WithLabelValues("error")
	m.publishErrors.WithLabelValues("dropped")
	return m
}

func dlqCodeLabel(code string) string {
	for _, c := range dlqCodes {
		if c == code {
			return c
		}
	}
	return "OTHER"
}

func storeErrorLabel(k eventstore.Kind) string {
	switch k {
	case eventstore.KindData, eventstore.KindUnexpected:
		return k.String()
	}
	return eventstore.KindTransient.String()
}

func partitionLabel(p int) string { return strconv.Itoa(p) }

// inHand holds the Kafka timestamps (unix ns; 0 = none) of the oldest message of the
// batch being processed and of the batch the fetcher is forming.
type inHand struct{ processing, forming atomic.Int64 }

// oldest is the earlier of the two, 0 if neither batch exists.
func (h *inHand) oldest() int64 {
	p, f := h.processing.Load(), h.forming.Load()
	if p == 0 || (f != 0 && f < p) {
		return f
	}
	return p
}
