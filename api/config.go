package api

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pulseboard/pulseboard/api/internal/live"
	"github.com/pulseboard/pulseboard/pkg/auth"
	"github.com/pulseboard/pulseboard/pkg/clientip"
)

// Config is the api's configuration. Environment variable names are in the tags; the
// names of the old backend (PORT, HOST, CORS_ORIGIN, JWT_*) are kept. Defaults in brackets.
type Config struct {
	// Host and Port of the public listener [0.0.0.0, 3000].
	Host string `env:"HOST" envDefault:"0.0.0.0"`
	Port int    `env:"PORT" envDefault:"3000"`
	// CORSOrigins are the browser origins allowed to call the api with credentials, and
	// the only origins /auth/refresh and /auth/logout accept [http://localhost:3001].
	// Comma-separated; "*" and "null" are refused.
	CORSOrigins []string `env:"CORS_ORIGIN" envSeparator:"," envDefault:"http://localhost:3001"`
	// AccessSecret signs access tokens (HS256, at least 32 bytes). Required in
	// production; in development a random one is generated at start (with a warning), so
	// tokens do not survive a restart.
	AccessSecret Secret `env:"JWT_ACCESS_SECRET"`
	// RefreshSecret is accepted for compatibility with the old backend's environment and
	// is not used: refresh tokens are opaque 256-bit random values stored as SHA-256,
	// which needs no key (a stolen database cannot be turned into valid cookies).
	RefreshSecret Secret `env:"JWT_REFRESH_SECRET"`
	// AccessTTL is the access token lifetime [15m].
	AccessTTL Duration `env:"JWT_ACCESS_EXPIRES" envDefault:"15m"`
	// RefreshTTL is the refresh token lifetime and the cookie's Max-Age [7d]. Every
	// refresh issues a new token with a full lifetime.
	RefreshTTL Duration `env:"JWT_REFRESH_EXPIRES" envDefault:"7d"`
	// Env is development or production [development]. Production requires the secrets
	// and adds Secure to the refresh cookie.
	Env string `env:"PULSEBOARD_ENV" envDefault:"development"`

	// BcryptCost is the cost of new password hashes [12]. Production refuses less than
	// 12; tests use 4. Hashes with a lower cost are upgraded at the next login.
	BcryptCost int `env:"API_BCRYPT_COST" envDefault:"12"`
	// HashConcurrency bounds concurrent bcrypt computations; 0 means GOMAXPROCS [0].
	// Requests that cannot get a slot within HashWait get 503 with Retry-After.
	HashConcurrency int           `env:"API_HASH_CONCURRENCY" envDefault:"0"`
	HashWait        time.Duration `env:"API_HASH_WAIT" envDefault:"2s"`

	// RefreshReuseGrace: a rotated refresh token presented again within this long after
	// its rotation gets 401 without revoking its family (two tabs refreshing at once);
	// later, the whole family is revoked [10s, at most 10s].
	RefreshReuseGrace time.Duration `env:"API_REFRESH_REUSE_GRACE" envDefault:"10s"`

	// Login throttling (see doc.go). After LoginAccountFreeFailures failed logins on one
	// account [5], or LoginIPFreeFailures from one client IP [20], each further failure
	// locks that account or IP for LoginBackoffBase doubling per failure [1s], at most
	// LoginBackoffMax [15m]. Failures are forgotten LoginFailureTTL after the last one
	// [1h]; a successful login forgets the account's.
	LoginAccountFreeFailures int           `env:"API_LOGIN_ACCOUNT_FREE_FAILURES" envDefault:"5"`
	LoginIPFreeFailures      int           `env:"API_LOGIN_IP_FREE_FAILURES" envDefault:"20"`
	LoginBackoffBase         time.Duration `env:"API_LOGIN_BACKOFF_BASE" envDefault:"1s"`
	LoginBackoffMax          time.Duration `env:"API_LOGIN_BACKOFF_MAX" envDefault:"15m"`
	LoginFailureTTL          time.Duration `env:"API_LOGIN_FAILURE_TTL" envDefault:"1h"`
	// LoginThrottlePrefix prefixes the Redis keys of login throttling
	// [pulseboard:login:]; deployments sharing a Redis can separate themselves.
	LoginThrottlePrefix string `env:"API_LOGIN_THROTTLE_PREFIX" envDefault:"pulseboard:login:"`
	// Registration (issue 16 item 6). Each client address may attempt
	// RegisterIPLimit registrations [10] and all clients together RegisterGlobalLimit
	// [300] per fixed RegisterWindow [10m]; beyond that /auth/register answers 429 with
	// Retry-After. Registrations hash on their own RegisterHashConcurrency slots (0:
	// GOMAXPROCS/4, at least 1) [0], separate from the logins' API_HASH_CONCURRENCY, so
	// a registration flood cannot make logins fail with 503.
	RegisterIPLimit         int           `env:"API_REGISTER_IP_LIMIT" envDefault:"10"`
	RegisterGlobalLimit     int           `env:"API_REGISTER_GLOBAL_LIMIT" envDefault:"300"`
	RegisterWindow          time.Duration `env:"API_REGISTER_WINDOW" envDefault:"10m"`
	RegisterHashConcurrency int           `env:"API_REGISTER_HASH_CONCURRENCY" envDefault:"0"`
	// Email verification (issue 16 item 7). PublicURL is the api's address as browsers
	// reach it, the base of the verification link <PublicURL>/auth/verify?token=…
	// [http://localhost:3000]. A link works once, for VerifyTokenTTL [24h]. A user may
	// ask for another mail once per VerifyResendInterval [1m] and VerifyResendDailyLimit
	// [5] times per 24 h (the registration's mail counts), per account and per address.
	PublicURL              string        `env:"API_PUBLIC_URL" envDefault:"http://localhost:3000"`
	VerifyTokenTTL         time.Duration `env:"API_VERIFY_TOKEN_TTL" envDefault:"24h"`
	VerifyResendInterval   time.Duration `env:"API_VERIFY_RESEND_INTERVAL" envDefault:"1m"`
	VerifyResendDailyLimit int           `env:"API_VERIFY_RESEND_DAILY_LIMIT" envDefault:"5"`
	// MaxProjectsPerUser caps each account's projects [50]; one more gets 409
	// PROJECT_LIMIT. 0: no cap.
	MaxProjectsPerUser int `env:"API_MAX_PROJECTS_PER_USER" envDefault:"50"`
	// MaxChannelsPerProject caps each project's notification channels [10] (issue 19
	// item 3); one more gets 409 CHANNEL_LIMIT. It also bounds the deliveries listed
	// per alert in the alert history. 1–100; 0 takes the default.
	MaxChannelsPerProject int `env:"API_MAX_CHANNELS_PER_PROJECT" envDefault:"10"`
	// TrustedProxies are the addresses (IPs or CIDRs) of reverse proxies whose
	// X-Forwarded-For is believed when finding the client IP [none].
	TrustedProxies []string `env:"API_TRUSTED_PROXIES" envSeparator:","`
	// IngestURL is the ingestor's base URL (e.g. http://ingestor:3002) to which the api
	// forwards POST /ingest, /ingest/batch and /analytics/… so that SDKs pointed at the
	// api's origin lose nothing (issue 17 item 2; forward.go) [unset: not forwarded,
	// those paths answer 404]. The ingestor must list the api's address in
	// INGEST_TRUSTED_PROXIES to key its guard on the client the api reports. The
	// all-in-one forwards to its own ingest listener when this is unset.
	IngestURL string `env:"API_INGEST_URL"`

	// MaxBodyBytes caps request bodies [65536]; larger ones get 413.
	MaxBodyBytes int64 `env:"API_MAX_BODY_BYTES" envDefault:"65536"`
	// MaxResponseBytes is the byte budget of a query answer [4 MiB] (issue 16 item 2):
	// an event list stops before the event that would pass it, and a paginated one
	// returns the cursor of the rest. An answer always holds at least one event, whole.
	// 0 takes the default.
	MaxResponseBytes int64 `env:"API_MAX_RESPONSE_BYTES" envDefault:"4194304"`
	// http.Server limits against slow or oversized clients. Long-lived streams (SSE,
	// WebSocket) clear the read and write deadlines for their own connection.
	// MaxHeaderBytes [8192] (net/http allows 4 KiB more): a 16 KiB cookie or a 1 MB
	// Authorization header gets 431 before anything parses it (B35, B50).
	ReadHeaderTimeout time.Duration `env:"API_READ_HEADER_TIMEOUT" envDefault:"5s"`
	ReadTimeout       time.Duration `env:"API_READ_TIMEOUT" envDefault:"15s"`
	WriteTimeout      time.Duration `env:"API_WRITE_TIMEOUT" envDefault:"30s"`
	IdleTimeout       time.Duration `env:"API_IDLE_TIMEOUT" envDefault:"60s"`
	MaxHeaderBytes    int           `env:"API_MAX_HEADER_BYTES" envDefault:"8192"`
	// Connection caps (issue 16): at most MaxConns connections open at once [0: half
	// the process's open-file soft limit, within 16..65536] and MaxConnsPerIP per
	// client address [512; 0: no per-address cap]. WebSocket and SSE streams count.
	// Over a cap a connection is answered 503 (total) or 429 (per address) and closed
	// at once; from 90 % of MaxConns on, the oldest idle keep-alive connections are
	// closed to make room. Per address means per TCP peer: behind a reverse proxy,
	// raise MaxConnsPerIP or set it to 0 and rely on MaxConns and the proxy's limits.
	MaxConns      int `env:"API_MAX_CONNS" envDefault:"0"`
	MaxConnsPerIP int `env:"API_MAX_CONNS_PER_IP" envDefault:"512"`
	// ShutdownTimeout bounds the graceful stop: in-flight requests finish and live
	// streams are closed within it, then remaining connections are closed [15s].
	ShutdownTimeout time.Duration `env:"API_SHUTDOWN_TIMEOUT" envDefault:"15s"`
	// Live configures the WebSocket/SSE streams (LIVE_* variables); see NewLive.
	Live live.Config
}

// Production reports whether PULSEBOARD_ENV is production.
func (c Config) Production() bool { return c.Env == "production" }

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Env == "development" || c.Env == "production", "PULSEBOARD_ENV must be development or production, got %q", c.Env)
	check(c.Port >= 0 && c.Port <= 65535, "PORT must be a port number, got %d", c.Port)
	check(len(c.CORSOrigins) > 0, "CORS_ORIGIN must list at least one origin")
	for _, o := range c.CORSOrigins {
		check(validOrigin(o), "CORS_ORIGIN: %q is not an origin like https://app.example.com (\"*\" and \"null\" are refused)", o)
	}
	if c.Production() {
		check(c.AccessSecret != "", "JWT_ACCESS_SECRET is required with PULSEBOARD_ENV=production")
		// Length alone lets "aaaa…" through (issue 16 item 6).
		check(c.AccessSecret == "" || len(c.AccessSecret) < auth.MinSecretBytes || HighEntropySecret(string(c.AccessSecret)),
			"JWT_ACCESS_SECRET looks low-entropy (a repeated character or pattern, a word): production needs at least %d bits by byte-frequency estimate and %.1f bits per byte; generate one with `openssl rand -base64 48`",
			minSecretBits, minSecretBitsPerByte)
		// Every CORS origin is allowed with credentials (cookies), so in production a
		// loopback origin would let any page served on the user's own machine act as
		// the dashboard (issue 16 item 6).
		for _, o := range c.CORSOrigins {
			check(!validOrigin(o) || !loopbackOrigin(o),
				"CORS_ORIGIN: %q is a localhost origin, refused with PULSEBOARD_ENV=production (origins are allowed with credentials)", o)
		}
		// The verification link is mailed to users: a localhost base (the default) would
		// send them a link that opens nothing.
		check(!validPublicURL(c.PublicURL) || !loopbackOrigin(publicOrigin(c.PublicURL)),
			"API_PUBLIC_URL: %q is a localhost address, refused with PULSEBOARD_ENV=production (it is the base of the links mailed to users); set it to the api's public address", c.PublicURL)
	}
	check(c.AccessSecret == "" || len(c.AccessSecret) >= auth.MinSecretBytes,
		"JWT_ACCESS_SECRET must be at least %d bytes (256 random bits)", auth.MinSecretBytes)
	check(c.AccessTTL > 0 && c.AccessTTL.D() <= 24*time.Hour, "JWT_ACCESS_EXPIRES must be in (0, 24h], got %s", c.AccessTTL)
	check(c.RefreshTTL.D() >= time.Minute && c.RefreshTTL.D() <= 365*24*time.Hour, "JWT_REFRESH_EXPIRES must be in [1m, 365d], got %s", c.RefreshTTL)
	check(c.BcryptCost >= 4 && c.BcryptCost <= 31, "API_BCRYPT_COST must be between 4 and 31, got %d", c.BcryptCost)
	if c.Production() {
		check(c.BcryptCost >= 12, "API_BCRYPT_COST must be at least 12 in production, got %d", c.BcryptCost)
	}
	check(c.HashConcurrency >= 0, "API_HASH_CONCURRENCY must be >= 0, got %d", c.HashConcurrency)
	check(c.HashWait > 0, "API_HASH_WAIT must be positive, got %s", c.HashWait)
	check(c.RefreshReuseGrace >= 0 && c.RefreshReuseGrace <= 10*time.Second, "API_REFRESH_REUSE_GRACE must be in [0, 10s], got %s", c.RefreshReuseGrace)
	check(c.LoginAccountFreeFailures >= 1, "API_LOGIN_ACCOUNT_FREE_FAILURES must be >= 1, got %d", c.LoginAccountFreeFailures)
	check(c.LoginIPFreeFailures >= 1, "API_LOGIN_IP_FREE_FAILURES must be >= 1, got %d", c.LoginIPFreeFailures)
	check(c.LoginBackoffBase > 0, "API_LOGIN_BACKOFF_BASE must be positive, got %s", c.LoginBackoffBase)
	check(c.LoginBackoffMax >= c.LoginBackoffBase, "API_LOGIN_BACKOFF_MAX must be >= API_LOGIN_BACKOFF_BASE")
	check(c.LoginFailureTTL >= c.LoginBackoffMax, "API_LOGIN_FAILURE_TTL must be >= API_LOGIN_BACKOFF_MAX")
	check(c.LoginThrottlePrefix != "", "API_LOGIN_THROTTLE_PREFIX must not be empty")
	check(c.RegisterIPLimit >= 1, "API_REGISTER_IP_LIMIT must be >= 1, got %d", c.RegisterIPLimit)
	check(c.RegisterGlobalLimit >= c.RegisterIPLimit, "API_REGISTER_GLOBAL_LIMIT must be >= API_REGISTER_IP_LIMIT, got %d", c.RegisterGlobalLimit)
	check(c.RegisterWindow >= time.Second, "API_REGISTER_WINDOW must be at least 1s, got %s", c.RegisterWindow)
	check(c.RegisterHashConcurrency >= 0, "API_REGISTER_HASH_CONCURRENCY must be >= 0, got %d", c.RegisterHashConcurrency)
	check(validPublicURL(c.PublicURL), "API_PUBLIC_URL must be an absolute http(s) URL without query or fragment, like https://api.example.com, got %q", c.PublicURL)
	check(c.VerifyTokenTTL >= time.Minute && c.VerifyTokenTTL <= 30*24*time.Hour, "API_VERIFY_TOKEN_TTL must be between 1m and 720h, got %s", c.VerifyTokenTTL)
	check(c.VerifyResendInterval >= 0 && c.VerifyResendInterval <= 24*time.Hour, "API_VERIFY_RESEND_INTERVAL must be between 0 and 24h, got %s", c.VerifyResendInterval)
	check(c.VerifyResendDailyLimit >= 1 && c.VerifyResendDailyLimit <= 1000, "API_VERIFY_RESEND_DAILY_LIMIT must be between 1 and 1000, got %d", c.VerifyResendDailyLimit)
	check(c.MaxProjectsPerUser >= 0, "API_MAX_PROJECTS_PER_USER must be >= 0 (0: no cap), got %d", c.MaxProjectsPerUser)
	check(c.MaxChannelsPerProject >= 0 && c.MaxChannelsPerProject <= maxChannelsPerProject,
		"API_MAX_CHANNELS_PER_PROJECT must be between 1 and %d (0: the default, %d), got %d", maxChannelsPerProject, defaultChannelsPerProject, c.MaxChannelsPerProject)
	if _, err := clientip.ParseTrusted(strings.Join(c.TrustedProxies, ",")); err != nil {
		errs = append(errs, fmt.Errorf("API_TRUSTED_PROXIES: %w", err))
	}
	check(validIngestURL(c.IngestURL), "API_INGEST_URL must be an absolute http(s) URL without query, fragment or user info, like http://ingestor:3002, got %q", c.IngestURL)
	check(c.MaxBodyBytes >= 1024 && c.MaxBodyBytes <= 16<<20, "API_MAX_BODY_BYTES must be between 1024 and 16777216, got %d", c.MaxBodyBytes)
	check(c.MaxResponseBytes == 0 || (c.MaxResponseBytes >= 64<<10 && c.MaxResponseBytes <= 1<<30),
		"API_MAX_RESPONSE_BYTES must be between 65536 and 1073741824, got %d", c.MaxResponseBytes)
	check(c.ReadHeaderTimeout > 0, "API_READ_HEADER_TIMEOUT must be positive")
	check(c.ReadTimeout > 0, "API_READ_TIMEOUT must be positive")
	check(c.WriteTimeout > 0, "API_WRITE_TIMEOUT must be positive")
	check(c.IdleTimeout > 0, "API_IDLE_TIMEOUT must be positive")
	check(c.MaxHeaderBytes >= 4096 && c.MaxHeaderBytes <= 1<<20, "API_MAX_HEADER_BYTES must be between 4096 and 1048576, got %d", c.MaxHeaderBytes)
	check(c.ShutdownTimeout > 0, "API_SHUTDOWN_TIMEOUT must be positive")
	check(c.MaxConns >= 0, "API_MAX_CONNS must be >= 0 (0: derived from the open-file limit), got %d", c.MaxConns)
	check(c.MaxConnsPerIP >= 0, "API_MAX_CONNS_PER_IP must be >= 0 (0: no per-address cap), got %d", c.MaxConnsPerIP)
	return errors.Join(errs...)
}

// String is the configuration with secrets masked, for start-up logs.
func (c Config) String() string {
	return fmt.Sprintf("host=%s port=%d env=%s cors=%s access_secret=%s access_ttl=%s refresh_ttl=%s bcrypt_cost=%d",
		c.Host, c.Port, c.Env, strings.Join(c.CORSOrigins, ","), c.AccessSecret, c.AccessTTL, c.RefreshTTL, c.BcryptCost)
}

// Production secret rule: the Shannon entropy of the secret's byte frequencies must be
// at least minSecretBitsPerByte per byte and, times its length, at least minSecretBits.
// A random base64 or hex secret of 32+ bytes passes easily (about 5 and 4 bits per
// byte); a repeated character (0 bits), a short repeated pattern or a word does not.
const (
	minSecretBits        = 128
	minSecretBitsPerByte = 3.0
)

// HighEntropySecret applies the production secret rule above.
func HighEntropySecret(secret string) bool {
	if secret == "" {
		return false
	}
	var counts [256]int
	for i := 0; i < len(secret); i++ {
		counts[secret[i]]++
	}
	n := float64(len(secret))
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h >= minSecretBitsPerByte && h*n >= minSecretBits
}

// loopbackOrigin reports whether a valid origin's host is localhost (or a name under
// .localhost), a loopback address (127.0.0.0/8, ::1) or the unspecified address.
func loopbackOrigin(o string) bool {
	_, rest, _ := strings.Cut(o, "://")
	host := rest
	if h, _, err := net.SplitHostPort(rest); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(strings.ToLower(host), "[]"), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		return a.IsLoopback() || a.IsUnspecified()
	}
	return false
}

// validPublicURL: an absolute http(s) URL with a host and no query, fragment or
// user info (the verification link appends /auth/verify?token=…).
// publicOrigin is scheme://host[:port] of a valid public URL.
func publicOrigin(s string) string {
	u, _ := url.Parse(s)
	return u.Scheme + "://" + u.Host
}

func validPublicURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" &&
		u.RawQuery == "" && u.Fragment == "" && !strings.HasSuffix(s, "?") && !strings.HasSuffix(s, "#") && u.User == nil && u.Opaque == ""
}

func validOrigin(o string) bool {
	scheme, rest, ok := strings.Cut(o, "://")
	if !ok || (scheme != "http" && scheme != "https") || rest == "" {
		return false
	}
	return !strings.ContainsAny(rest, "/?#*@ ")
}

// Secret is a configuration value that is never printed.
type Secret string

// String masks the value.
func (s Secret) String() string {
	if s == "" {
		return "(unset)"
	}
	return "***"
}

// Duration is a lifetime in the old backend's notation ("15m", "7d", "1w", "900" for
// seconds) or Go's ("1h30m").
type Duration time.Duration

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalText parses the notations above.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		*d = Duration(time.Duration(n) * time.Second)
		return nil
	}
	units := map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour, "y": 365 * 24 * time.Hour}
	for suffix, unit := range units {
		if num, ok := strings.CutSuffix(s, suffix); ok {
			n, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return fmt.Errorf("invalid duration %q", s)
			}
			*d = Duration(time.Duration(n * float64(unit)))
			return nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (use e.g. 15m, 12h, 7d)", s)
	}
	*d = Duration(v)
	return nil
}
