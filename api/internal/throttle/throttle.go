// Package throttle slows down password guessing (docs/reliability.md promise 18, B59).
//
// A key (an account, a client IP) accumulates failures. The first Free failures cost
// nothing; each further failure locks the key for Base·2^(n−Free−1), at most Max, so an
// attacker's rate falls exponentially while a user who mistyped a few times never
// notices. There is no permanent lockout: a lock always expires (after at most Max),
// failures are forgotten Forget after the last one, and a successful login clears the
// account's count. Attempts made while a key is locked are refused without checking the
// password and are not counted, so they do not extend the lock.
//
// State lives in Redis, shared by every api instance (hash per key: failure count and
// lock deadline, with a TTL). If Redis fails, the limiter falls back to an in-process
// table for that call and logs it: a Redis outage must not stop logins (F14), and
// throttling then holds per instance instead of globally.
package throttle

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Policy is one key kind's rule.
type Policy struct {
	Free   int           // failures that cost nothing
	Base   time.Duration // first lock
	Max    time.Duration // longest lock
	Forget time.Duration // failures are forgotten this long after the last one
}

// lockFor is the lock after the n-th failure.
func (p Policy) lockFor(n int64) time.Duration {
	if n <= int64(p.Free) {
		return 0
	}
	d := p.Base
	for i := int64(1); i < n-int64(p.Free) && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// Limiter tracks failures per key.
type Limiter struct {
	rdb    *redis.Client
	prefix string
	now    func() time.Time
	logger *slog.Logger
	mem    *memory
	// OnFallback, if set, is called when Redis failed and the in-process table was used.
	OnFallback func()
	// downUntil (Unix ns, real time) skips Redis after a failure.
	downUntil atomic.Int64
}

// Bounds on the use of Redis.
const (
	RedisTimeout    = 250 * time.Millisecond
	RedisRetryAfter = 5 * time.Second
)

// redis returns the client and a bounded context, or nil while Redis is considered down.
func (l *Limiter) redis(ctx context.Context) (*redis.Client, context.Context, context.CancelFunc) {
	if l.rdb == nil || time.Now().UnixNano() < l.downUntil.Load() {
		return nil, ctx, func() {}
	}
	c, cancel := context.WithTimeout(ctx, RedisTimeout)
	return l.rdb, c, cancel
}

// New returns a Limiter keeping state in rdb under prefix (or only in process when rdb
// is nil). now is the clock (tests inject one).
func New(rdb *redis.Client, prefix string, now func() time.Time, logger *slog.Logger) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{rdb: rdb, prefix: prefix, now: now, logger: logger, mem: newMemory(100_000)}
}

// Locked returns how long key stays locked (0: not locked).
func (l *Limiter) Locked(ctx context.Context, key string) time.Duration {
	now := l.now()
	if rdb, rctx, cancel := l.redis(ctx); rdb != nil {
		until, err := rdb.HGet(rctx, l.prefix+key, "until").Int64()
		cancel()
		switch {
		case errors.Is(err, redis.Nil):
			return 0
		case err == nil:
			return remaining(until, now)
		}
		l.fallback("reading a login throttle", err)
	}
	return l.mem.locked(key, now)
}

// failScript counts a failure and sets the lock computed from the new count.
// KEYS[1] key; ARGV: now (ms), free, base (ms), max (ms), forget (ms).
var failScript = redis.NewScript(`
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free, base, max, forget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lock = 0
if n > free then
  lock = base
  local i = 1
  while i < n - free and lock < max do lock = lock * 2; i = i + 1 end
  if lock > max then lock = max end
  redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[1]) + lock)
end
redis.call('PEXPIRE', KEYS[1], forget + lock)
return {n, lock}
`)

// Fail records a failure for key and returns the lock it caused (0: none yet).
func (l *Limiter) Fail(ctx context.Context, key string, p Policy) time.Duration {
	now := l.now()
	if rdb, rctx, cancel := l.redis(ctx); rdb != nil {
		res, err := failScript.Run(rctx, rdb, []string{l.prefix + key},
			now.UnixMilli(), p.Free, p.Base.Milliseconds(), p.Max.Milliseconds(), p.Forget.Milliseconds()).Int64Slice()
		cancel()
		if err == nil && len(res) == 2 {
			return time.Duration(res[1]) * time.Millisecond
		}
		l.fallback("recording a failed login", err)
	}
	return l.mem.fail(key, p, now)
}

// Reset forgets key's failures (a successful login).
func (l *Limiter) Reset(ctx context.Context, key string) {
	if rdb, rctx, cancel := l.redis(ctx); rdb != nil {
		if err := rdb.Del(rctx, l.prefix+key).Err(); err != nil {
			l.fallback("resetting a login throttle", err)
		}
		cancel()
	}
	l.mem.reset(key)
}

func (l *Limiter) fallback(what string, err error) {
	l.downUntil.Store(time.Now().Add(RedisRetryAfter).UnixNano())
	if l.OnFallback != nil {
		l.OnFallback()
	}
	l.logger.Warn("Redis unavailable for login throttling; using the in-process table", "op", what, "error", err)
}

func remaining(untilMS int64, now time.Time) time.Duration {
	d := time.Duration(untilMS-now.UnixMilli()) * time.Millisecond
	if d < 0 {
		return 0
	}
	return d
}

// memory is the in-process fallback: the same rule, bounded in size.
type memory struct {
	mu      sync.Mutex
	entries map[string]*entry
	max     int
}

type entry struct {
	n      int64
	until  time.Time
	expire time.Time
}

func newMemory(max int) *memory { return &memory{entries: map[string]*entry{}, max: max} }

func (m *memory) locked(key string, now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[key]
	if e == nil || now.After(e.expire) || !e.until.After(now) {
		return 0
	}
	return e.until.Sub(now)
}

func (m *memory) fail(key string, p Policy, now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.live(key, now)
	e.n++
	lock := p.lockFor(e.n)
	if lock > 0 {
		e.until = now.Add(lock)
	}
	e.expire = now.Add(p.Forget + lock)
	return lock
}

// live returns key's entry, a new one if it has none or its window expired (evicting
// expired entries when the table is full). The caller holds m.mu.
func (m *memory) live(key string, now time.Time) *entry {
	e := m.entries[key]
	if e == nil || now.After(e.expire) {
		if len(m.entries) >= m.max {
			m.evict(now)
		}
		e = &entry{}
		m.entries[key] = e
	}
	return e
}

func (m *memory) reset(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, key)
}

// evict drops expired entries, or, if none is expired, an arbitrary tenth of the table:
// memory stays bounded even under a flood of distinct keys.
func (m *memory) evict(now time.Time) {
	for k, e := range m.entries {
		if now.After(e.expire) {
			delete(m.entries, k)
		}
	}
	drop := m.max / 10
	for k := range m.entries {
		if len(m.entries) < m.max || drop == 0 {
			break
		}
		delete(m.entries, k)
		drop--
	}
}
