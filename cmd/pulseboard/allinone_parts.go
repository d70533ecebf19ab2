package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/api"
	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	kafkaembedded "github.com/pulseboard/pulseboard/pkg/kafkax/embedded"
	"github.com/pulseboard/pulseboard/pkg/obs"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	redisembedded "github.com/pulseboard/pulseboard/pkg/redisx/embedded"
)

// infra is what the all-in-one's services share: PostgreSQL (embedded when none is
// configured or found), Redis (likewise), the broker (embedded unless KAFKA_BROKERS is
// set), the metrics registry and the readiness checks. Each embedded part is watched by
// the liveness checks.
type infra struct {
	pool     *pgxpool.Pool
	rdb      *redis.Client
	brokers  []string
	embedded *kafkaembedded.Broker // nil with KAFKA_BROKERS
	// closeBroker stops the embedded broker (once; the shutdown calls it after the drain).
	closeBroker func()
	reg         *prometheus.Registry
	ready       *obs.Readiness
	closers     []func() // run in reverse by close
}

// startInfra starts or connects to everything the services need. On an error, what was
// started is closed again.
func startInfra(ctx context.Context, env config.Env, cfg allConfig, live *liveness, logger *slog.Logger) (in *infra, err error) {
	in = &infra{reg: obs.NewRegistry(), ready: obs.NewReadiness()}
	defer func() {
		if err != nil {
			in.close()
		}
	}()
	databaseURL, embeddedPG, stopPostgres, err := allInOneDatabase(ctx, env, cfg, logger)
	if err != nil {
		return nil, err
	}
	in.closers = append(in.closers, stopPostgres)
	if embeddedPG {
		live.add("postgres", probePostgres(databaseURL))
	}
	if err := prepareDatabase(ctx, databaseURL, logger); err != nil {
		return nil, err
	}
	if in.pool, err = pgstore.Open(ctx, databaseURL, pgstore.PoolOptions{ApplicationName: "pulseboard", MaxConns: 16}); err != nil {
		return nil, err
	}
	in.closers = append(in.closers, in.pool.Close)
	rdb, embeddedRedis, closeRedis, err := redisembedded.OpenOrStartServer(ctx, cfg.RedisURL, logger)
	if err != nil {
		return nil, err
	}
	in.rdb = rdb
	in.closers = append(in.closers, closeRedis)
	if embeddedRedis != nil {
		live.add("redis", probeRedis(embeddedRedis.Addr()))
	}
	if err := in.startBroker(ctx, cfg, live, logger); err != nil {
		return nil, err
	}
	in.ready.Add("postgres", func(ctx context.Context) error { return in.pool.Ping(ctx) })
	in.ready.Add("redis", func(ctx context.Context) error { return in.rdb.Ping(ctx).Err() })
	return in, nil
}

// startBroker starts the embedded broker, or makes sure a cluster's topics exist.
func (in *infra) startBroker(ctx context.Context, cfg allConfig, live *liveness, logger *slog.Logger) error {
	if len(cfg.Kafka.Brokers) > 0 {
		in.brokers = cfg.Kafka.Brokers
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return kafkax.EnsureTopics(tctx, in.brokers,
			kafkax.Topic{Name: cfg.Kafka.Topic, Partitions: cfg.Kafka.Partitions}, kafkax.Topic{Name: cfg.Kafka.DLQTopic, Partitions: 1})
	}
	// Retention trims what the consumer and the alerter have both stored.
	b, err := kafkaembedded.Start(kafkaembedded.Options{
		Port: cfg.Kafka.EmbeddedPort, Topics: []string{cfg.Kafka.Topic, cfg.Kafka.DLQTopic}, Partitions: cfg.Kafka.Partitions,
		Retention: cfg.EmbeddedKafka.retention([]string{cfg.Consumer.GroupID, cfg.Alerter.GroupID}, cfg.Kafka.Topic),
		Logger:    logger.With("component", "broker"), Registerer: in.reg,
	})
	if err != nil {
		return fmt.Errorf("%w (set KAFKA_EMBEDDED_PORT=0 for any free port, or KAFKA_BROKERS for a real cluster)", err)
	}
	in.embedded, in.brokers, in.closeBroker = b, b.Addrs(), sync.OnceFunc(b.Close)
	in.closers = append(in.closers, in.closeBroker) // for the early returns
	live.add("kafka", probeKafka(in.brokers))
	logger.Warn("KAFKA_BROKERS is not set: using the embedded Kafka-protocol broker; it keeps events in memory only, "+
		"and shutdown drains it into PostgreSQL", "addr", in.brokers)
	return nil
}

// close releases what startInfra started, the last started first. It may be called again.
func (in *infra) close() {
	for i := len(in.closers) - 1; i >= 0; i-- {
		in.closers[i]()
	}
	in.closers = nil
}

// services are the four services of the all-in-one, built on one infra.
type services struct {
	ingestor *ingestor.Service
	consumer *consumer.Service
	alerter  *alerter.Service
	api      *api.Service
}

func buildServices(cfg *allConfig, in *infra, logger *slog.Logger) (svc services, err error) {
	// The api port serves the ingest routes too, forwarded to the ingest listener
	// (oneorigin.go); the ingestor must trust the api's address before it is built.
	origin := planOneOrigin(cfg)
	if svc.ingestor, err = ingestor.New(cfg.Ingestor, ingestor.Deps{
		Pool: in.pool, Redis: in.rdb, Brokers: in.brokers, Logger: logger.With("component", "ingestor"), Registerer: in.reg, Ready: in.ready,
	}); err != nil {
		return svc, err
	}
	if svc.consumer, err = consumer.New(cfg.Consumer, consumer.Deps{
		Pool: in.pool, Redis: in.rdb, Brokers: in.brokers, Logger: logger, Registerer: in.reg, Ready: in.ready,
	}); err != nil {
		return svc, err
	}
	if svc.alerter, err = alerter.New(cfg.Alerter, alerter.Deps{
		Pool: in.pool, Brokers: in.brokers, Logger: logger, Registerer: in.reg, Ready: in.ready, // the alerter names itself
	}); err != nil {
		return svc, err
	}
	origin.apply(cfg, svc.ingestor.Addr(), logger)
	tokens, err := api.NewAccessTokens(cfg.API, logger.With("component", "api"))
	if err != nil {
		return svc, err
	}
	// The api (and its live streams) add "component" to their own logs.
	apiDeps := api.Deps{Pool: in.pool, Redis: in.rdb, Logger: logger, Registerer: in.reg, Ready: in.ready, Tokens: tokens}
	if apiDeps.Live, err = api.NewLive(cfg.API, apiDeps, tokens); err != nil {
		return svc, err
	}
	svc.api, err = api.New(cfg.API, apiDeps)
	return svc, err
}

// part is one running component of the all-in-one, with a context of its own so that
// the shutdown can stop the components in its order.
type part struct {
	stop context.CancelFunc
	done chan struct{}
}

// startPart runs run in g on a context derived from base. A failure is sent to failed
// (when not nil), which starts the shutdown.
func startPart(g *errgroup.Group, base context.Context, name string, failed chan<- error, run func(context.Context) error) *part {
	ctx, stop := context.WithCancel(base)
	p := &part{stop: stop, done: make(chan struct{})}
	g.Go(func() error {
		defer close(p.done)
		err := run(ctx)
		if err != nil && failed != nil {
			failed <- fmt.Errorf("%s: %w", name, err)
		}
		return err
	})
	return p
}

// wait waits until the part's run returned.
func (p *part) wait() { <-p.done }
