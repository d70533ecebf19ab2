package alerter

import (
	"errors"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/pulseboard/pulseboard/alerter/internal/mail"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/event"
)

// Config is the alerter's configuration (environment variables; defaults in brackets).
type Config struct {
	// Kafka is the shared Kafka configuration (KAFKA_*): the events topic. Brokers come
	// from Deps.Brokers when set, else from KAFKA_BROKERS.
	Kafka config.Kafka
	// SMTP is where emails go (SMTP_*); without SMTP_HOST they are written to the log.
	SMTP mail.Config

	// GroupID is the alerter's own consumer group [pulseboard-alerter].
	GroupID string `env:"ALERTER_GROUP" envDefault:"pulseboard-alerter"`
	// SessionTimeout: how long a dead alerter's partitions wait before another replica
	// gets them (as CONSUMER_SESSION_TIMEOUT) [10s].
	SessionTimeout time.Duration `env:"ALERTER_SESSION_TIMEOUT" envDefault:"10s"`
	// StoredGroup is the consumer group that stores events in PostgreSQL (the
	// consumer's CONSUMER_GROUP) [pulseboard-consumer]. Thresholds are counted in
	// PostgreSQL, so before evaluating a batch the alerter waits until that group has
	// committed past it: then every event of the batch is stored (or dead-lettered).
	StoredGroup string `env:"CONSUMER_GROUP" envDefault:"pulseboard-consumer"`

	// Threshold is the number of errors within Window that fires an alert [10];
	// projects.alert_threshold overrides it.
	Threshold int `env:"ALERT_ERROR_THRESHOLD" envDefault:"10"`
	// Window is the sliding window, by receive time [60s]; projects.alert_window_seconds
	// overrides it.
	Window time.Duration `env:"ALERT_WINDOW" envDefault:"60s"`
	// Cooldown is the least time between two threshold alerts of a project, by receive
	// time of the crossing events [15m]; projects.alert_cooldown_seconds overrides it.
	Cooldown time.Duration `env:"ALERT_COOLDOWN" envDefault:"15m"`
	// MaxDelay: a crossing whose event was received longer ago than this (by the
	// alerter's clock) never fires — replays of old events stay silent [1h].
	MaxDelay time.Duration `env:"ALERT_MAX_DELAY" envDefault:"1h"`
	// ResolveInterval is how often firing projects are checked for resolution [1s].
	ResolveInterval time.Duration `env:"ALERT_RESOLVE_INTERVAL" envDefault:"1s"`

	// BatchSize closes a batch at this many messages [10000]; BatchWait this long after
	// its first message [100ms]. A batch waits for the consumer group to commit past it,
	// i.e. about one store of the consumer's (whose batches reach 5000), so a batch must be
	// able to hold what arrives in that time plus BatchWait: at 2000, an all-in-one at
	// 20k events/s fell behind by 3k messages a second (the batches were 2,000 each, and
	// each waited ~70 ms); at 10000 it keeps up (batches of ~7,500).
	BatchSize int           `env:"ALERTER_BATCH_SIZE" envDefault:"10000"`
	BatchWait time.Duration `env:"ALERTER_BATCH_WAIT" envDefault:"100ms"`
	// FetchMaxBytes bounds one fetch [8388608]; FetchMaxWait a broker's long poll [250ms].
	FetchMaxBytes int           `env:"ALERTER_FETCH_MAX_BYTES" envDefault:"8388608"`
	FetchMaxWait  time.Duration `env:"ALERTER_FETCH_MAX_WAIT" envDefault:"250ms"`
	// StoredPoll is how often the stored group's offsets are polled while waiting [100ms].
	StoredPoll time.Duration `env:"ALERTER_STORED_POLL" envDefault:"100ms"`
	// BackoffMin/BackoffMax bound the backoff after Kafka or PostgreSQL errors [100ms, 5s].
	BackoffMin time.Duration `env:"ALERTER_BACKOFF_MIN" envDefault:"100ms"`
	BackoffMax time.Duration `env:"ALERTER_BACKOFF_MAX" envDefault:"5s"`

	// DeliveryInterval is how often pending emails are looked for; an alert recorded by
	// this instance is picked up at once [1s].
	DeliveryInterval time.Duration `env:"EMAIL_DELIVERY_INTERVAL" envDefault:"1s"`
	// RetryMin/RetryMax bound the exponential backoff between delivery attempts of one
	// email [5s, 5m]; after MaxAttempts attempts it is marked failed [30, ≈2 h].
	RetryMin    time.Duration `env:"EMAIL_RETRY_MIN" envDefault:"5s"`
	RetryMax    time.Duration `env:"EMAIL_RETRY_MAX" envDefault:"5m"`
	MaxAttempts int           `env:"EMAIL_MAX_ATTEMPTS" envDefault:"30"`

	// WebhookTimeout bounds one webhook or Slack request: connect, TLS, answer [10s].
	WebhookTimeout time.Duration `env:"ALERT_WEBHOOK_TIMEOUT" envDefault:"10s"`
	// WebhookMaxAttempts: a webhook or Slack delivery that failed this many times with a
	// retryable error (5xx, 408, 429, timeout, network) is marked failed [10].
	WebhookMaxAttempts int `env:"ALERT_WEBHOOK_MAX_ATTEMPTS" envDefault:"10"`
	// WebhookRetryMin/WebhookRetryMax bound the exponential backoff (with jitter)
	// between attempts of one webhook or Slack delivery [10s, 10m]; a receiver's
	// Retry-After is honoured up to WebhookRetryMax.
	WebhookRetryMin time.Duration `env:"ALERT_WEBHOOK_RETRY_MIN" envDefault:"10s"`
	WebhookRetryMax time.Duration `env:"ALERT_WEBHOOK_RETRY_MAX" envDefault:"10m"`
	// WebhookAllowPrivate lets webhook and Slack channels reach loopback, private,
	// link-local and other non-public addresses [false]. Off, the SSRF guard refuses
	// them at dial time. Set it only when every project owner is trusted and the
	// receivers are on the same machine or network (tests, a single-user all-in-one).
	WebhookAllowPrivate bool `env:"ALERT_WEBHOOK_ALLOW_PRIVATE" envDefault:"false"`

	// RequireVerified: alert and digest mail go only to owners whose address is
	// verified (the api's verification link) [true]; mail for an unverified owner is
	// recorded skipped_unverified and never sent. false is for trusted single-user
	// installs (README "Email verification").
	RequireVerified bool `env:"ALERT_REQUIRE_VERIFIED" envDefault:"true"`
	// MailPerRecipientPerHour bounds the alert and digest mails one address gets in any
	// hour, across its projects and every alerter replica [20]; mail over it is recorded
	// skipped_rate_limited and never sent. 0: no bound. Verification mails are not
	// counted (the api throttles them).
	MailPerRecipientPerHour int `env:"ALERT_MAIL_PER_RECIPIENT_PER_HOUR" envDefault:"20"`

	// DigestCron (UTC, 5 fields) [0 0 * * *]; RetentionCron [0 2 * * *].
	DigestCron    string `env:"DIGEST_CRON" envDefault:"0 0 * * *"`
	RetentionCron string `env:"RETENTION_CRON" envDefault:"0 2 * * *"`
	// DigestMaxProjects bounds the projects listed in one digest, busiest first [50].
	DigestMaxProjects int `env:"DIGEST_MAX_PROJECTS" envDefault:"50"`
	// JobTick is how often the schedules are checked [1s]; JobRetry how long after a
	// failed (or locked-out) run it is tried again [1m].
	JobTick  time.Duration `env:"JOB_TICK" envDefault:"1s"`
	JobRetry time.Duration `env:"JOB_RETRY" envDefault:"1m"`
	// JobCatchUp: a slot missed while no alerter ran is run at start if it is at most
	// this old and an earlier slot of the job was recorded [24h].
	JobCatchUp time.Duration `env:"JOB_CATCH_UP" envDefault:"24h"`

	// RetentionDays: whole day partitions older than this are dropped [30].
	RetentionDays int `env:"RETENTION_DAYS" envDefault:"30"`
	// RetentionBatchSize bounds one DELETE of per-project retention and pruning [1000].
	RetentionBatchSize int `env:"RETENTION_BATCH_SIZE" envDefault:"1000"`
	// RetentionLockTimeout bounds every lock wait of the retention job that could
	// queue ahead of ingest [2s].
	RetentionLockTimeout time.Duration `env:"RETENTION_LOCK_TIMEOUT" envDefault:"2s"`
	// RetentionDetachTimeout bounds DETACH PARTITION … CONCURRENTLY, which waits for
	// every transaction using events but blocks no one while it does [10m].
	RetentionDetachTimeout time.Duration `env:"RETENTION_DETACH_TIMEOUT" envDefault:"10m"`

	// ShutdownTimeout bounds the graceful stop [15s].
	ShutdownTimeout time.Duration `env:"ALERTER_SHUTDOWN_TIMEOUT" envDefault:"15s"`
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	errs := []error{c.Kafka.Validate(), c.SMTP.Validate()}
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.GroupID != "", "ALERTER_GROUP must not be empty")
	check(c.StoredGroup != "" && c.StoredGroup != c.GroupID, "CONSUMER_GROUP must be set and differ from ALERTER_GROUP")
	check(c.Threshold >= 1 && c.Threshold <= 1_000_000, "ALERT_ERROR_THRESHOLD must be between 1 and 1000000, got %d", c.Threshold)
	check(c.Window >= time.Second && c.Window <= 24*time.Hour, "ALERT_WINDOW must be between 1s and 24h, got %s", c.Window)
	check(c.Cooldown >= 0 && c.Cooldown <= 7*24*time.Hour, "ALERT_COOLDOWN must be between 0 and 168h, got %s", c.Cooldown)
	check(c.MaxDelay >= c.Window, "ALERT_MAX_DELAY (%s) must be at least ALERT_WINDOW (%s)", c.MaxDelay, c.Window)
	check(c.ResolveInterval > 0, "ALERT_RESOLVE_INTERVAL must be positive, got %s", c.ResolveInterval)
	check(c.BatchSize >= 1 && c.BatchSize <= 100_000, "ALERTER_BATCH_SIZE must be between 1 and 100000, got %d", c.BatchSize)
	check(c.BatchWait > 0 && c.BatchWait <= time.Minute, "ALERTER_BATCH_WAIT must be in (0, 1m], got %s", c.BatchWait)
	check(c.FetchMaxBytes >= 2*event.DefaultMaxEventBytes, "ALERTER_FETCH_MAX_BYTES must be at least %d, got %d", 2*event.DefaultMaxEventBytes, c.FetchMaxBytes)
	check(c.FetchMaxWait > 0 && c.FetchMaxWait <= 30*time.Second, "ALERTER_FETCH_MAX_WAIT must be in (0, 30s], got %s", c.FetchMaxWait)
	check(c.StoredPoll > 0, "ALERTER_STORED_POLL must be positive, got %s", c.StoredPoll)
	check(c.BackoffMin > 0 && c.BackoffMax >= c.BackoffMin, "ALERTER_BACKOFF_MIN must be positive and at most ALERTER_BACKOFF_MAX (%s, %s)", c.BackoffMin, c.BackoffMax)
	check(c.DeliveryInterval > 0, "EMAIL_DELIVERY_INTERVAL must be positive, got %s", c.DeliveryInterval)
	check(c.RetryMin > 0 && c.RetryMax >= c.RetryMin, "EMAIL_RETRY_MIN must be positive and at most EMAIL_RETRY_MAX (%s, %s)", c.RetryMin, c.RetryMax)
	check(c.MaxAttempts >= 1, "EMAIL_MAX_ATTEMPTS must be at least 1, got %d", c.MaxAttempts)
	check(c.WebhookTimeout >= 100*time.Millisecond && c.WebhookTimeout <= 5*time.Minute, "ALERT_WEBHOOK_TIMEOUT must be between 100ms and 5m, got %s", c.WebhookTimeout)
	check(c.WebhookMaxAttempts >= 1 && c.WebhookMaxAttempts <= 1000, "ALERT_WEBHOOK_MAX_ATTEMPTS must be between 1 and 1000, got %d", c.WebhookMaxAttempts)
	check(c.WebhookRetryMin > 0 && c.WebhookRetryMax >= c.WebhookRetryMin, "ALERT_WEBHOOK_RETRY_MIN must be positive and at most ALERT_WEBHOOK_RETRY_MAX (%s, %s)", c.WebhookRetryMin, c.WebhookRetryMax)
	check(c.MailPerRecipientPerHour >= 0 && c.MailPerRecipientPerHour <= 100_000, "ALERT_MAIL_PER_RECIPIENT_PER_HOUR must be between 0 (no bound) and 100000, got %d", c.MailPerRecipientPerHour)
	if _, err := parseCron(c.DigestCron); err != nil {
		errs = append(errs, fmt.Errorf("DIGEST_CRON: %w", err))
	}
	if _, err := parseCron(c.RetentionCron); err != nil {
		errs = append(errs, fmt.Errorf("RETENTION_CRON: %w", err))
	}
	check(c.DigestMaxProjects >= 1, "DIGEST_MAX_PROJECTS must be at least 1, got %d", c.DigestMaxProjects)
	check(c.JobTick > 0, "JOB_TICK must be positive, got %s", c.JobTick)
	check(c.JobRetry > 0, "JOB_RETRY must be positive, got %s", c.JobRetry)
	check(c.JobCatchUp >= 0, "JOB_CATCH_UP must not be negative, got %s", c.JobCatchUp)
	check(c.RetentionDays >= 1 && c.RetentionDays <= 3650, "RETENTION_DAYS must be between 1 and 3650, got %d", c.RetentionDays)
	check(c.RetentionBatchSize >= 1 && c.RetentionBatchSize <= 100_000, "RETENTION_BATCH_SIZE must be between 1 and 100000, got %d", c.RetentionBatchSize)
	check(c.RetentionLockTimeout > 0, "RETENTION_LOCK_TIMEOUT must be positive, got %s", c.RetentionLockTimeout)
	check(c.RetentionDetachTimeout > 0, "RETENTION_DETACH_TIMEOUT must be positive, got %s", c.RetentionDetachTimeout)
	check(c.ShutdownTimeout > 0, "ALERTER_SHUTDOWN_TIMEOUT must be positive, got %s", c.ShutdownTimeout)
	return errors.Join(errs...)
}

// cronParser reads standard 5-field expressions and descriptors (@daily); schedules are
// evaluated in UTC.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func parseCron(expr string) (cron.Schedule, error) {
	s, err := cronParser.Parse(expr)
	if err != nil {
		return nil, err
	}
	return s, nil
}
