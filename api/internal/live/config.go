package live

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pulseboard/pulseboard/pkg/auth"
)

// Config tunes the live streams. A zero field takes its default (in brackets); the env
// tags let a service embed Config in its own env-loaded configuration.
type Config struct {
	// AllowedOrigins are the browser origins (scheme://host[:port]) that may open a
	// stream; the api passes its CORS_ORIGIN list. A request without an Origin header is
	// a non-browser client and is allowed; any other Origin is refused with 403.
	AllowedOrigins []string `env:"-"`
	// PingInterval is how often the server pings a WebSocket client [30s]. A client that
	// sends nothing (not even the pong) for 2.5 × PingInterval is disconnected.
	PingInterval time.Duration `env:"LIVE_PING_INTERVAL" envDefault:"30s"`
	// SSEPingInterval is how often an SSE stream gets a ": ping" comment [15s].
	SSEPingInterval time.Duration `env:"LIVE_SSE_PING_INTERVAL" envDefault:"15s"`
	// WriteTimeout bounds every write to a client [10s]: a client that stops reading is
	// disconnected after it, and so is one whose queue stays full for that long. (A
	// replay's writes are bounded as a whole by ReplayTimeout instead.)
	WriteTimeout time.Duration `env:"LIVE_WRITE_TIMEOUT" envDefault:"10s"`
	// QueueSize is the most messages buffered per client [8192], QueueBytes the most
	// bytes of their encodings [8 MiB]. When either is reached, new messages for that
	// client are dropped and counted, and the client is sent {"type":"resync","missed":N}
	// as soon as there is room. The consumer publishes a stored batch (up to
	// CONSUMER_BATCH_SIZE, 5000, events) at once, so a client that reads as fast as the
	// events come needs a whole batch's room. The queue grows on demand and is released
	// when it drains: an idle client holds none of it. The encodings are shared by all
	// the clients of a project, so the byte cap bounds what one slow client keeps alive.
	QueueSize  int   `env:"LIVE_QUEUE_SIZE" envDefault:"8192"`
	QueueBytes int64 `env:"LIVE_QUEUE_BYTES" envDefault:"8388608"`
	// MaxFrameBytes caps one WebSocket frame from a client [4096]; larger closes 1009.
	MaxFrameBytes int64 `env:"LIVE_MAX_FRAME_BYTES" envDefault:"4096"`
	// MaxMessageBytes caps one WebSocket message from a client, all fragments together
	// [4096]; larger closes 1009.
	MaxMessageBytes int64 `env:"LIVE_MAX_MESSAGE_BYTES" envDefault:"4096"`
	// ReplayLimit is the most events an SSE reconnect replays from Postgres [1000].
	ReplayLimit int `env:"LIVE_REPLAY_LIMIT" envDefault:"1000"`
	// ReplayWindow is how far back an SSE reconnect may replay [1h].
	ReplayWindow time.Duration `env:"LIVE_REPLAY_WINDOW" envDefault:"1h"`
	// ReplayMaxBytes caps the bytes one replay writes [4 MiB]: the newest events that
	// fit both this and ReplayLimit are replayed, and a resync tells the client how many
	// it missed beyond them (issue 16 item 2).
	ReplayMaxBytes int64 `env:"LIVE_REPLAY_MAX_BYTES" envDefault:"4194304"`
	// ReplayConcurrency bounds the replays running at once on this instance [4], and
	// ReplayPerUser one user's [2]. Each running replay holds a Postgres connection (the
	// rows are streamed from one snapshot). A reconnect that finds no free slot within
	// a second is sent {"type":"resync","missed":-1} instead of the replay and continues
	// with live events (the client refetches through the query API).
	ReplayConcurrency int `env:"LIVE_REPLAY_CONCURRENCY" envDefault:"4"`
	ReplayPerUser     int `env:"LIVE_REPLAY_PER_USER" envDefault:"2"`
	// ReplayTimeout bounds a whole replay, the query and every write [30s]: a client
	// that does not read its replay is disconnected when it passes (it reconnects with
	// the id of the last event it did read).
	ReplayTimeout time.Duration `env:"LIVE_REPLAY_TIMEOUT" envDefault:"30s"`
	// MaxConnsPerUser bounds one user's concurrent streams on this instance [20]; the
	// next one is refused with 429 before the upgrade.
	MaxConnsPerUser int `env:"LIVE_MAX_CONNS_PER_USER" envDefault:"20"`
	// SubscribeTimeout bounds the wait for Redis to confirm a project's subscription
	// before a stream is accepted; past it the request gets 503 [5s].
	SubscribeTimeout time.Duration `env:"LIVE_SUBSCRIBE_TIMEOUT" envDefault:"5s"`
	// RevocationCheckInterval is how often open streams are checked against
	// users.tokens_valid_after (logout everywhere) and deleted projects [5s].
	RevocationCheckInterval time.Duration `env:"LIVE_REVOCATION_CHECK_INTERVAL" envDefault:"5s"`
}

// Defaults (see Config).
const (
	DefaultPingInterval            = 30 * time.Second
	DefaultSSEPingInterval         = 15 * time.Second
	DefaultWriteTimeout            = 10 * time.Second
	DefaultQueueSize               = 8192
	DefaultQueueBytes              = 8 << 20
	DefaultMaxFrameBytes           = 4 << 10
	DefaultMaxMessageBytes         = 4 << 10
	DefaultReplayLimit             = 1000
	DefaultReplayWindow            = time.Hour
	DefaultReplayMaxBytes          = 4 << 20
	DefaultReplayConcurrency       = 4
	DefaultReplayPerUser           = 2
	DefaultReplayTimeout           = 30 * time.Second
	DefaultMaxConnsPerUser         = 20
	DefaultSubscribeTimeout        = 5 * time.Second
	DefaultRevocationCheckInterval = 5 * time.Second
)

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	setDur := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	setDur(&c.PingInterval, DefaultPingInterval)
	setDur(&c.SSEPingInterval, DefaultSSEPingInterval)
	setDur(&c.WriteTimeout, DefaultWriteTimeout)
	setDur(&c.ReplayWindow, DefaultReplayWindow)
	setDur(&c.ReplayTimeout, DefaultReplayTimeout)
	if c.ReplayMaxBytes == 0 {
		c.ReplayMaxBytes = DefaultReplayMaxBytes
	}
	if c.ReplayConcurrency == 0 {
		c.ReplayConcurrency = DefaultReplayConcurrency
	}
	if c.ReplayPerUser == 0 {
		c.ReplayPerUser = DefaultReplayPerUser
	}
	setDur(&c.SubscribeTimeout, DefaultSubscribeTimeout)
	setDur(&c.RevocationCheckInterval, DefaultRevocationCheckInterval)
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.ReplayLimit == 0 {
		c.ReplayLimit = DefaultReplayLimit
	}
	if c.MaxConnsPerUser == 0 {
		c.MaxConnsPerUser = DefaultMaxConnsPerUser
	}
	return c
}

// Validate reports every problem at once; zero fields are valid (they take defaults).
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	for _, o := range c.AllowedOrigins {
		check(o != "" && o != "*", "live: allowed origin %q must be an exact origin, not empty or *", o)
	}
	check(c.PingInterval >= 0, "LIVE_PING_INTERVAL must not be negative, got %s", c.PingInterval)
	check(c.SSEPingInterval >= 0, "LIVE_SSE_PING_INTERVAL must not be negative, got %s", c.SSEPingInterval)
	check(c.WriteTimeout >= 0, "LIVE_WRITE_TIMEOUT must not be negative, got %s", c.WriteTimeout)
	check(c.QueueSize >= 0 && c.QueueSize <= 1<<16, "LIVE_QUEUE_SIZE must be in [1, 65536], got %d", c.QueueSize)
	check(c.QueueBytes >= 0 && c.QueueBytes <= 1<<30, "LIVE_QUEUE_BYTES must be in [1, 1073741824], got %d", c.QueueBytes)
	// A client frame must at least hold a close frame (125 bytes of control payload).
	check(c.MaxFrameBytes == 0 || c.MaxFrameBytes >= 125, "LIVE_MAX_FRAME_BYTES must be at least 125, got %d", c.MaxFrameBytes)
	check(c.MaxMessageBytes == 0 || c.MaxMessageBytes >= 125, "LIVE_MAX_MESSAGE_BYTES must be at least 125, got %d", c.MaxMessageBytes)
	check(c.ReplayLimit >= 0 && c.ReplayLimit <= 100_000, "LIVE_REPLAY_LIMIT must be in [1, 100000], got %d", c.ReplayLimit)
	check(c.ReplayWindow >= 0, "LIVE_REPLAY_WINDOW must not be negative, got %s", c.ReplayWindow)
	// At least one event of the largest size the ingestor accepts (64 KiB) must fit.
	check(c.ReplayMaxBytes == 0 || (c.ReplayMaxBytes >= 128<<10 && c.ReplayMaxBytes <= 1<<30),
		"LIVE_REPLAY_MAX_BYTES must be in [131072, 1073741824], got %d", c.ReplayMaxBytes)
	check(c.ReplayConcurrency >= 0 && c.ReplayConcurrency <= 1024, "LIVE_REPLAY_CONCURRENCY must be in [1, 1024], got %d", c.ReplayConcurrency)
	check(c.ReplayPerUser >= 0 && c.ReplayPerUser <= 1024, "LIVE_REPLAY_PER_USER must be in [1, 1024], got %d", c.ReplayPerUser)
	check(c.ReplayTimeout >= 0, "LIVE_REPLAY_TIMEOUT must not be negative, got %s", c.ReplayTimeout)
	check(c.MaxConnsPerUser >= 0, "LIVE_MAX_CONNS_PER_USER must not be negative, got %d", c.MaxConnsPerUser)
	check(c.SubscribeTimeout >= 0, "LIVE_SUBSCRIBE_TIMEOUT must not be negative, got %s", c.SubscribeTimeout)
	check(c.RevocationCheckInterval >= 0, "LIVE_REVOCATION_CHECK_INTERVAL must not be negative, got %s", c.RevocationCheckInterval)
	return errors.Join(errs...)
}

// Deps are the Hub's dependencies, built and closed by the caller (after Hub.Close).
type Deps struct {
	// Tokens verifies access JWTs.
	Tokens *auth.Tokens
	// Pool answers ownership, revocation and SSE replay queries.
	Pool *pgxpool.Pool
	// Redis is the client the Hub opens its one PubSub connection from.
	Redis *redis.Client
	// Logger defaults to discarding; Registerer to none (metrics are kept but not
	// exported).
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (d Deps) validate() error {
	var errs []error
	if d.Tokens == nil {
		errs = append(errs, errors.New("live: Deps.Tokens is required"))
	}
	if d.Pool == nil {
		errs = append(errs, errors.New("live: Deps.Pool is required"))
	}
	if d.Redis == nil {
		errs = append(errs, errors.New("live: Deps.Redis is required"))
	}
	return errors.Join(errs...)
}
