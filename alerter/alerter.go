package alerter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"golang.org/x/sync/errgroup"

	"github.com/pulseboard/pulseboard/alerter/internal/channel"
	"github.com/pulseboard/pulseboard/alerter/internal/mail"
	"github.com/pulseboard/pulseboard/alerter/internal/store"
	"github.com/pulseboard/pulseboard/pkg/obs"
)

// Message is one email to one recipient (see Mailer).
type Message = mail.Message

// Mailer delivers emails. Send must return an error satisfying IsPermanent for errors
// retrying cannot fix; any other error is retried with backoff. Transport names where
// mails go ("smtp" or "log"), as recorded in email_deliveries.
type Mailer interface {
	Send(ctx context.Context, m Message) error
	Transport() string
}

// IsPermanent reports whether a Mailer error is permanent (the email is marked failed
// at once instead of being retried).
func IsPermanent(err error) bool { return mail.IsPermanent(err) }

// Permanent marks a Mailer error as permanent.
func Permanent(err error) error { return mail.Permanent(err) }

// Deps are the alerter's dependencies, built and closed by the caller.
type Deps struct {
	Pool *pgxpool.Pool
	// Brokers overrides Config.Kafka.Brokers (the all-in-one passes its embedded broker).
	Brokers []string
	// Logger defaults to discarding; Registerer to a private registry; Ready to none.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Ready      *obs.Readiness
	// Mailer defaults to SMTP per Config.SMTP, or to the log when SMTP_HOST is unset.
	Mailer Mailer
	// Now is the clock for windows, cooldowns, retries and schedules; time.Now when nil.
	// Tests drive it to simulate hours in milliseconds.
	Now func() time.Time
	// Instance names this replica in job_runs; host name and pid when empty.
	Instance string
}

// Service is one alerter replica. Create it with New and call Run once.
type Service struct {
	cfg     Config
	deps    Deps
	brokers []string
	logger  *slog.Logger
	m       *metrics
	store   *store.Store
	mailer  Mailer
	// http is the HTTP channels' client; senders their senders by channel kind, and
	// hookKinds those kinds.
	http      *channel.HTTP
	senders   map[string]channel.Sender
	hookKinds []string
	now       func() time.Time
	instance  string
	digest    cron.Schedule
	retention cron.Schedule

	started atomic.Bool
	// wake and wakeHooks tell the delivery loops (mail, HTTP channels) that this replica
	// recorded an alert.
	wake, wakeHooks chan struct{}
	// failing is set while window evaluation keeps failing; readiness reports it.
	failing atomic.Pointer[failure]
}

type failure struct {
	since time.Time
	err   error
}

// New checks the configuration and dependencies and registers metrics and readiness.
// It starts nothing: Run does.
func New(cfg Config, deps Deps) (*Service, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if deps.Pool == nil {
		errs = append(errs, errors.New("alerter: Deps.Pool is required"))
	}
	brokers := deps.Brokers
	if len(brokers) == 0 {
		brokers = cfg.Kafka.Brokers
	}
	if len(brokers) == 0 {
		errs = append(errs, errors.New("alerter: no Kafka brokers (Deps.Brokers or KAFKA_BROKERS)"))
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
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Instance == "" {
		host, _ := os.Hostname()
		deps.Instance = host + "-" + strconv.Itoa(os.Getpid())
	}
	logger := deps.Logger.With("component", "alerter")
	mailer := deps.Mailer
	if mailer == nil {
		if cfg.SMTP.Host == "" {
			mailer = &mail.Log{Logger: logger}
		} else {
			smtp, err := mail.NewSMTP(cfg.SMTP)
			if err != nil {
				return nil, err
			}
			mailer = smtp
		}
	}
	digest, _ := parseCron(cfg.DigestCron) // validated above
	retention, _ := parseCron(cfg.RetentionCron)
	hc := channel.NewHTTP(cfg.WebhookTimeout, cfg.WebhookAllowPrivate)
	senders := channel.Registry(hc)
	s := &Service{
		cfg: cfg, deps: deps, brokers: brokers, logger: logger,
		m: newMetrics(deps.Registerer), store: store.New(deps.Pool), mailer: mailer,
		http: hc, senders: senders, hookKinds: slices.Sorted(maps.Keys(senders)),
		now:      func() time.Time { return deps.Now().UTC() },
		instance: deps.Instance, digest: digest, retention: retention,
		wake: make(chan struct{}, 1), wakeHooks: make(chan struct{}, 1),
	}
	if deps.Ready != nil {
		deps.Ready.Add("alerter", s.readiness)
	}
	return s, nil
}

func (s *Service) readiness(context.Context) error {
	if f := s.failing.Load(); f != nil {
		return fmt.Errorf("postgres: window evaluation has failed since %s: %w", f.since.UTC().Format(time.RFC3339), f.err)
	}
	return nil
}

func (s *Service) setFailing(err error) {
	if err == nil {
		s.failing.Store(nil)
		return
	}
	if f := s.failing.Load(); f != nil {
		s.failing.Store(&failure{since: f.since, err: err})
		return
	}
	s.failing.Store(&failure{since: time.Now(), err: err})
}

// Run runs the replica until ctx is cancelled: the threshold loop (its own consumer
// group), the resolution sweep, the delivery loops (mail; webhook and Slack) and the job
// scheduler. After ctx is cancelled a notification being sent is finished and recorded
// within Config.ShutdownTimeout (one that fails meanwhile is left pending, uncharged); a batch being evaluated is left uncommitted (redelivery is
// harmless: evaluation is idempotent). Run returns nil after a graceful stop.
func (s *Service) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("alerter: Run called more than once")
	}
	// work outlives ctx by at most ShutdownTimeout, for the email in flight.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	defer s.http.CloseIdleConnections()
	stopWork := context.AfterFunc(ctx, func() {
		t := time.NewTimer(s.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelWork()
		case <-work.Done():
		}
	})
	defer stopWork()

	s.logger.Info("alerter started", "topic", s.cfg.Kafka.Topic, "group", s.cfg.GroupID,
		"stored_group", s.cfg.StoredGroup, "transport", s.mailer.Transport(),
		"webhook_allow_private", s.cfg.WebhookAllowPrivate, "threshold", s.cfg.Threshold, "window", s.cfg.Window.String(), "cooldown", s.cfg.Cooldown.String(),
		"digest_cron", s.cfg.DigestCron, "retention_cron", s.cfg.RetentionCron, "retention_days", s.cfg.RetentionDays)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.consumeLoop(gctx) })
	g.Go(func() error { return s.resolveLoop(gctx) })
	g.Go(func() error { return s.deliveryLoop(gctx, work) })
	g.Go(func() error { return s.schedulerLoop(gctx) })
	err := g.Wait()
	if ctx.Err() != nil && err == nil {
		s.logger.Info("alerter stopped")
	}
	return err
}

// notify wakes the delivery loops.
func (s *Service) notify() {
	for _, c := range []chan struct{}{s.wake, s.wakeHooks} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// truncate shortens an error text for a database column.
func truncate(s string, n int) string {
	s = mail.OneLine(s)
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
