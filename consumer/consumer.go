package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/consumer/internal/deadletter"
	"github.com/pulseboard/pulseboard/consumer/internal/eventstore"
	"github.com/pulseboard/pulseboard/consumer/internal/livefeed"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/obs"
)

// Config is the consumer's configuration (environment variables; defaults in brackets).
type Config struct {
	// Kafka is the shared Kafka configuration (KAFKA_*): the events topic to consume
	// [pulseboard.events] and the dead-letter topic [pulseboard.events.dlq]. Brokers
	// come from Deps.Brokers when set, else from KAFKA_BROKERS.
	Kafka config.Kafka

	// GroupID is the Kafka consumer group [pulseboard-consumer]. Every consumer of one
	// deployment uses the same group; partitions are shared among them.
	GroupID string `env:"CONSUMER_GROUP" envDefault:"pulseboard-consumer"`
	// SessionTimeout: when a consumer dies without leaving the group (kill -9, a lost
	// machine), its partitions wait this long before another consumer gets them; a
	// shorter one moves them sooner but evicts consumers on long pauses. Brokers accept
	// 6s to 30m by default [10s].
	SessionTimeout time.Duration `env:"CONSUMER_SESSION_TIMEOUT" envDefault:"10s"`
	// BatchSize closes a batch at this many messages [5000].
	BatchSize int `env:"CONSUMER_BATCH_SIZE" envDefault:"5000"`
	// BatchWait closes a batch this long after its first message arrived at most [100ms];
	// a batch holding every message fetched so far closes once it has been open as long
	// as the last store took.
	BatchWait time.Duration `env:"CONSUMER_BATCH_WAIT" envDefault:"100ms"`
	// FetchMaxBytes bounds one fetch response from a broker; it must exceed the largest
	// message on the topic (K14) [8388608 = 8 MiB]. It also bounds a dead letter.
	FetchMaxBytes int `env:"CONSUMER_FETCH_MAX_BYTES" envDefault:"8388608"`
	// FetchMaxWait is how long a broker may hold a fetch waiting for data [250ms].
	FetchMaxWait time.Duration `env:"CONSUMER_FETCH_MAX_WAIT" envDefault:"250ms"`
	// BackoffMin and BackoffMax bound the exponential, jittered backoff between retries
	// of a batch Postgres could not take, or of dead letters Kafka could not take
	// [100ms, 5s].
	BackoffMin time.Duration `env:"CONSUMER_BACKOFF_MIN" envDefault:"100ms"`
	BackoffMax time.Duration `env:"CONSUMER_BACKOFF_MAX" envDefault:"5s"`
	// StoreTimeout bounds one store transaction; one that runs out is rolled back and
	// retried as a transient failure [30s].
	StoreTimeout time.Duration `env:"CONSUMER_STORE_TIMEOUT" envDefault:"30s"`
	// ShutdownTimeout bounds the graceful stop after ctx is cancelled: the batches in
	// hand (the one being stored and the next) are stored, dead-lettered, committed and
	// published within it, or left uncommitted for redelivery [15s].
	ShutdownTimeout time.Duration `env:"CONSUMER_SHUTDOWN_TIMEOUT" envDefault:"15s"`
	// PublishTimeout bounds one Redis PUBLISH pipeline [2s].
	PublishTimeout time.Duration `env:"CONSUMER_PUBLISH_TIMEOUT" envDefault:"2s"`
	// PublishBufferBytes bounds the stored events waiting to be published; beyond it
	// live-feed batches are dropped (and counted), never the pipeline slowed [33554432
	// = 32 MiB].
	PublishBufferBytes int64 `env:"CONSUMER_PUBLISH_BUFFER_BYTES" envDefault:"33554432"`
	// MaxClockSkew: an event received further in the future than this (by the
	// consumer's clock) is dead-lettered as INVALID_TIMESTAMP rather than creating
	// partitions for a forged date [1h].
	MaxClockSkew time.Duration `env:"CONSUMER_MAX_CLOCK_SKEW" envDefault:"1h"`
	// PartitionCheckInterval is how often the partitions from yesterday to a week ahead
	// are ensured [1h].
	PartitionCheckInterval time.Duration `env:"CONSUMER_PARTITION_CHECK_INTERVAL" envDefault:"1h"`
	// MaxEventBytes is the largest event the consumer accepts. It is deliberately the
	// ingestor's variable: one setting for both, so the consumer can never dead-letter an
	// event the ingestor accepted (docs/reliability.md promise 4) [65536].
	MaxEventBytes int `env:"INGEST_MAX_EVENT_BYTES" envDefault:"65536"`
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	errs := []error{c.Kafka.Validate()}
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.GroupID != "", "CONSUMER_GROUP must not be empty")
	check(c.BatchSize >= 1 && c.BatchSize <= 100_000, "CONSUMER_BATCH_SIZE must be between 1 and 100000, got %d", c.BatchSize)
	check(c.BatchWait > 0 && c.BatchWait <= time.Minute, "CONSUMER_BATCH_WAIT must be in (0, 1m], got %s", c.BatchWait)
	check(c.FetchMaxBytes >= 2*event.DefaultMaxEventBytes, "CONSUMER_FETCH_MAX_BYTES must be at least %d, got %d", 2*event.DefaultMaxEventBytes, c.FetchMaxBytes)
	check(c.FetchMaxWait > 0 && c.FetchMaxWait <= 30*time.Second, "CONSUMER_FETCH_MAX_WAIT must be in (0, 30s], got %s", c.FetchMaxWait)
	check(c.BackoffMin > 0, "CONSUMER_BACKOFF_MIN must be positive, got %s", c.BackoffMin)
	check(c.BackoffMax >= c.BackoffMin, "CONSUMER_BACKOFF_MAX (%s) must be at least CONSUMER_BACKOFF_MIN (%s)", c.BackoffMax, c.BackoffMin)
	check(c.StoreTimeout > 0, "CONSUMER_STORE_TIMEOUT must be positive, got %s", c.StoreTimeout)
	check(c.ShutdownTimeout > 0, "CONSUMER_SHUTDOWN_TIMEOUT must be positive, got %s", c.ShutdownTimeout)
	check(c.PublishTimeout > 0, "CONSUMER_PUBLISH_TIMEOUT must be positive, got %s", c.PublishTimeout)
	check(c.PublishBufferBytes >= 1<<20, "CONSUMER_PUBLISH_BUFFER_BYTES must be at least 1 MiB, got %d", c.PublishBufferBytes)
	check(c.MaxClockSkew > 0, "CONSUMER_MAX_CLOCK_SKEW must be positive, got %s", c.MaxClockSkew)
	check(c.PartitionCheckInterval > 0, "CONSUMER_PARTITION_CHECK_INTERVAL must be positive, got %s", c.PartitionCheckInterval)
	check(c.MaxEventBytes >= 1024 && c.MaxEventBytes <= 1<<20, "INGEST_MAX_EVENT_BYTES must be between 1024 and 1048576, got %d", c.MaxEventBytes)
	check(c.FetchMaxBytes >= 2*c.MaxEventBytes, "CONSUMER_FETCH_MAX_BYTES must be at least twice INGEST_MAX_EVENT_BYTES")
	return errors.Join(errs...)
}

// Deps are the consumer's dependencies, built and closed by the caller.
type Deps struct {
	Pool  *pgxpool.Pool
	Redis *redis.Client
	// Brokers overrides Config.Kafka.Brokers (the all-in-one passes its embedded broker).
	Brokers []string
	// Logger defaults to discarding; Registerer to a private registry; Ready to none.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Ready      *obs.Readiness
	// Hooks are test failpoints; the zero value has none.
	Hooks Hooks
}

// Hooks are failpoints for tests. A hook that returns an error makes Run return that
// error at once, without doing the next step, as if the process were killed there.
type Hooks struct {
	// AfterFetch runs when a batch has been fetched, before anything is stored.
	AfterFetch func(ctx context.Context) error
	// AfterDBCommit runs when the batch's rows are committed in Postgres, before dead
	// letters are written and offsets committed.
	AfterDBCommit func(ctx context.Context) error
	// AfterOffsetCommit runs when the offsets are committed, before publishing.
	AfterOffsetCommit func(ctx context.Context) error
}

// Service is one consumer group member. Create it with New and call Run once.
type Service struct {
	cfg     Config
	deps    Deps
	brokers []string
	logger  *slog.Logger
	m       *metrics
	store   *eventstore.Store
	dec     *event.Decoder // used only by the fetcher (fetchLoop)

	started atomic.Bool
	// inHand has the oldest message's Kafka timestamp of each batch in hand; ahead is
	// set while a formed batch waits for the processor.
	inHand inHand
	ahead  atomic.Bool
	// storeFailing and dlqFailing are set while Postgres, or the dead-letter topic,
	// refuses the batch in hand; readiness reports them.
	storeFailing atomic.Pointer[failure]
	dlqFailing   atomic.Pointer[failure]
	lastAhead    time.Time
	// lastStore is how long the last store transaction took (ns): the batch being
	// formed stays open at least that long (fetch).
	lastStore atomic.Int64
}

type failure struct {
	since time.Time
	err   error
}

// New checks the configuration and dependencies and registers metrics and readiness.
// It starts nothing: Run connects to Kafka.
func New(cfg Config, deps Deps) (*Service, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if deps.Pool == nil {
		errs = append(errs, errors.New("consumer: Deps.Pool is required"))
	}
	if deps.Redis == nil {
		errs = append(errs, errors.New("consumer: Deps.Redis is required"))
	}
	brokers := deps.Brokers
	if len(brokers) == 0 {
		brokers = cfg.Kafka.Brokers
	}
	if len(brokers) == 0 {
		errs = append(errs, errors.New("consumer: no Kafka brokers (Deps.Brokers or KAFKA_BROKERS)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if deps.Registerer == nil {
		deps.Registerer = prometheus.NewRegistry()
	}
	s := &Service{
		cfg:     cfg,
		deps:    deps,
		brokers: brokers,
		logger:  deps.Logger.With("component", "consumer"),
		dec:     event.NewDecoder(event.Limits{MaxNameChars: event.DefaultMaxNameChars, MaxEventBytes: cfg.MaxEventBytes, MaxDepth: event.DefaultMaxDepth}),
	}
	s.m = newMetrics(deps.Registerer, &s.inHand)
	s.store = eventstore.New(deps.Pool, eventstore.Options{
		TxTimeout: cfg.StoreTimeout,
		OnTx: func(_ int, d time.Duration, _ error) {
			s.m.storeDuration.Observe(d.Seconds())
			s.lastStore.Store(int64(d))
		},
	})
	if deps.Ready != nil {
		deps.Ready.Add("consumer", s.readiness)
	}
	return s, nil
}

// readiness fails while the batch in hand cannot be stored or dead-lettered.
func (s *Service) readiness(context.Context) error {
	var errs []error
	if f := s.storeFailing.Load(); f != nil {
		errs = append(errs, fmt.Errorf("postgres: storing events has failed since %s: %w", f.since.UTC().Format(time.RFC3339), f.err))
	}
	if f := s.dlqFailing.Load(); f != nil {
		errs = append(errs, fmt.Errorf("kafka: dead-letter writes have failed since %s: %w", f.since.UTC().Format(time.RFC3339), f.err))
	}
	return errors.Join(errs...)
}

func setFailing(p *atomic.Pointer[failure], err error) {
	if f := p.Load(); f != nil {
		p.Store(&failure{since: f.since, err: err})
		return
	}
	p.Store(&failure{since: time.Now(), err: err})
}

// Run consumes until ctx is cancelled or a hook fails. After ctx is cancelled it
// finishes the batches in hand (store, dead letters, offset commit, publish) within
// Config.ShutdownTimeout, closes the reader and returns nil. A batch that cannot be
// finished in time is left uncommitted (it will be redelivered and deduplicated) and
// Run returns an error saying so.
func (s *Service) Run(ctx context.Context) (err error) {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("consumer: Run called more than once")
	}
	// A GroupReader, not kafka-go's Reader: it commits each message through the group
	// generation it was fetched in, so a rebalance cannot move a committed offset
	// backwards (K12).
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
		if cerr := reader.Close(); cerr != nil {
			s.logger.Warn("closing the Kafka reader", "error", cerr)
		}
	}()
	dlq, err := deadletter.New(s.brokers, s.cfg.Kafka.DLQTopic, s.cfg.FetchMaxBytes)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dlq.Close(); cerr != nil {
			s.logger.Warn("closing the dead-letter writer", "error", cerr)
		}
	}()

	// work outlives ctx by at most ShutdownTimeout: the batch in hand finishes with it.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	go func() {
		select {
		case <-ctx.Done():
		case <-work.Done():
			return
		}
		t := time.NewTimer(s.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelWork()
		case <-work.Done():
		}
	}()

	feed := livefeed.New(s.deps.Redis, s.logger, livefeed.Options{
		Timeout:         s.cfg.PublishTimeout,
		MaxPendingBytes: s.cfg.PublishBufferBytes,
		OnDone:          s.published,
		OnDropped:       func(n int) { s.m.publishErrors.WithLabelValues("dropped").Add(float64(n)) },
	})
	feedDone := make(chan struct{})
	go func() { defer close(feedDone); feed.Run(work) }()
	graceful := false
	defer func() {
		// After a graceful stop, publish what is queued (within the shutdown bound);
		// after a failure, as after a crash, drop it.
		feed.Close()
		if !graceful {
			cancelWork()
		}
		<-feedDone
	}()

	s.logger.Info("consumer started", "topic", s.cfg.Kafka.Topic, "group", s.cfg.GroupID,
		"batch_size", s.cfg.BatchSize, "batch_wait", s.cfg.BatchWait.String())

	// Two stages: the fetcher forms (and decodes) the next batch while this goroutine
	// stores, commits and publishes the last one, so Postgres is not left idle while a
	// batch is fetched and decoded (one store at a time took the store ceiling to ~80 %
	// of the time; the rest was fetch and decode). Batches are processed one at a time,
	// in fetch order, so offsets are committed in order and only after their rows.
	fctx, stopFetch := context.WithCancel(ctx)
	defer stopFetch()
	batches := make(chan fetched) // unbuffered: at most one batch waits, fully formed
	var fetchErr error
	go func() {
		defer close(batches)
		fetchErr = s.fetchLoop(fctx, reader, batches)
	}()
	for b := range batches {
		if err := s.process(work, reader, dlq, feed, b); err != nil {
			// The batch the fetcher holds is dropped uncommitted: it is redelivered.
			stopFetch()
			for range batches {
			}
			if ctx.Err() != nil && work.Err() != nil {
				return fmt.Errorf("consumer: graceful stop: the batch of %d messages was not finished within %s and stays uncommitted (it will be redelivered): %w",
					len(b.msgs), s.cfg.ShutdownTimeout, err)
			}
			return err
		}
	}
	// The fetcher has returned: ctx was cancelled (every batch it formed is processed by
	// now) or the reader failed for good.
	if fetchErr != nil {
		return fetchErr
	}
	graceful = true
	s.logger.Info("consumer stopped")
	return nil
}

// fetched is a batch as the fetcher hands it over: its messages, decoded.
type fetched struct {
	msgs    []kafkaMessage
	evs     []event.Event // the messages that decoded,
	pos     []int         // evs[i] came from msgs[pos[i]],
	letters []letter      // the others, as dead letters
}

// fetchLoop forms batches and sends them to out until ctx is cancelled (it sends the
// batch in hand first) or the reader is closed. Fetch errors are retried with backoff
// (kafkax.FetchLoop, the alerter's loop too).
func (s *Service) fetchLoop(ctx context.Context, r messageReader, out chan<- fetched) error {
	return kafkax.FetchLoop{
		Name:  "consumer",
		Fetch: func(ctx context.Context) ([]kafkaMessage, error) { return s.fetch(ctx, r) },
		Handle: func(batch []kafkaMessage) error {
			b := s.decode(batch)
			s.ahead.Store(true)
			out <- b // the processor takes it once it is done with the last batch
			s.ahead.Store(false)
			s.inHand.forming.Store(0)
			return nil
		},
		BackoffMin: s.cfg.BackoffMin,
		BackoffMax: s.cfg.BackoffMax,
		Logger:     s.logger,
		OnError:    func(error) { s.m.fetchErrors.Inc() },
	}.Run(ctx)
}

// fetch returns the next batch: it waits for a first message, then takes messages until
// the batch is full, BatchWait has passed since the first one, or the batch holds every
// message fetched and has been open as long as the last store took. When ctx is cancelled
// it returns what it has; the caller finishes it.
//
// Group commit: once every message fetched so far is in the batch, the batch closes as
// soon as it has been open as long as the last store took (BatchWait at most). At low
// load batches are small and stored within milliseconds of arriving; as the load grows
// so do the stores and the batches with them, until BatchSize, where the store's fixed
// cost per batch is small. (A fixed BatchWait held every event 0 to 100 ms at any load;
// closing the batch whenever the buffer was empty stored 40k events/s in batches so small
// that their fixed cost took the store to 90 % busy.)
func (s *Service) fetch(ctx context.Context, r messageReader) ([]kafkaMessage, error) {
	return kafkax.FetchBatch(ctx, r, kafkax.BatchPolicy{
		Size:   s.cfg.BatchSize,
		Wait:   s.cfg.BatchWait,
		Linger: func() time.Duration { return time.Duration(s.lastStore.Load()) },
		// The batch is in hand from its first message on (the oldest-message age counts
		// from here; trackBatch refines it once the batch is complete).
		OnFirst: func(first kafkaMessage) {
			oldest := first.Time
			if oldest.IsZero() {
				oldest = time.Now()
			}
			s.inHand.forming.Store(oldest.UnixNano())
		},
	})
}
