package throttle

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Attempt is one admitted attempt on a key: its failure is already counted (see
// Limiter.Begin). Call Succeeded when the attempt turns out not to be a failure.
type Attempt struct {
	key     string
	untilMS int64 // the lock this attempt set (0: none)
}

// beginScript is the atomic check-and-count of an attempt (issue 16 item 6): a locked
// key refuses; otherwise the attempt is counted as a failure at once, and the lock that
// failure would cause is set before the password is even checked. Of N concurrent
// attempts on a key, at most the number of failures that remain before the next lock
// (one, once the key has been locked before) are admitted; the rest see the lock.
// KEYS[1] key; ARGV: now (ms), free, base (ms), max (ms), forget (ms).
// Returns {locked remaining ms (0: admitted), lock set (until ms, 0: none)}.
var beginScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local until = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if until > now then return {until - now, 0} end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free, base, max, forget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lock = 0
local set = 0
if n > free then
  lock = base
  local i = 1
  while i < n - free and lock < max do lock = lock * 2; i = i + 1 end
  if lock > max then lock = max end
  set = now + lock
  redis.call('HSET', KEYS[1], 'until', set)
end
redis.call('PEXPIRE', KEYS[1], forget + lock)
return {0, set}
`)

// undoScript takes back an admitted attempt's failure: the count drops by one and the
// lock it set (if still the current one) is lifted. KEYS[1] key; ARGV[1] the lock set.
var undoScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'n', -1)
if n <= 0 then redis.call('DEL', KEYS[1]); return 0 end
if ARGV[1] ~= '0' and redis.call('HGET', KEYS[1], 'until') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'until')
end
return 0
`)

// Begin atomically checks key and, unless it is locked, counts this attempt as a
// failure (with the lock that causes). It returns the remaining lock (> 0: refused,
// nothing counted) or the admitted Attempt. A locked attempt does not extend the lock.
func (l *Limiter) Begin(ctx context.Context, key string, p Policy) (time.Duration, Attempt) {
	now := l.now()
	if rdb, rctx, cancel := l.redis(ctx); rdb != nil {
		res, err := beginScript.Run(rctx, rdb, []string{l.prefix + key},
			now.UnixMilli(), p.Free, p.Base.Milliseconds(), p.Max.Milliseconds(), p.Forget.Milliseconds()).Int64Slice()
		cancel()
		if err == nil && len(res) == 2 {
			if res[0] > 0 {
				return time.Duration(res[0]) * time.Millisecond, Attempt{}
			}
			return 0, Attempt{key: key, untilMS: res[1]}
		}
		l.fallback("counting a login attempt", err)
	}
	return l.mem.begin(key, p, now)
}

// Succeeded takes back the failure that Begin counted for a (the attempt was not a
// failure after all, or was not made).
func (l *Limiter) Succeeded(ctx context.Context, a Attempt) {
	if a.key == "" {
		return
	}
	if rdb, rctx, cancel := l.redis(ctx); rdb != nil {
		err := undoScript.Run(rctx, rdb, []string{l.prefix + a.key}, strconv.FormatInt(a.untilMS, 10)).Err()
		cancel()
		if err == nil {
			return
		}
		l.fallback("taking back a login attempt", err)
	}
	l.mem.undo(a)
}

func (m *memory) begin(key string, p Policy, now time.Time) (time.Duration, Attempt) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.live(key, now)
	if e.until.After(now) {
		return e.until.Sub(now), Attempt{}
	}
	e.n++
	lock := p.lockFor(e.n)
	var set int64
	if lock > 0 {
		e.until = now.Add(lock)
		set = e.until.UnixMilli()
	}
	e.expire = now.Add(p.Forget + lock)
	return 0, Attempt{key: key, untilMS: set}
}

func (m *memory) undo(a Attempt) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[a.key]
	if e == nil {
		return
	}
	e.n--
	if e.n <= 0 {
		delete(m.entries, a.key)
		return
	}
	if a.untilMS != 0 && e.until.UnixMilli() == a.untilMS {
		e.until = time.Time{}
	}
}

// windowScript counts one event in the fixed window of KEYS[1] (the window's start is
// in the key, so the injected clock decides it) and returns the count.
// KEYS[1] key; ARGV[1] window (ms).
var windowScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2) end
return n
`)

// Allow counts one event for key in fixed windows of window and reports how long until
// the window ends when this event is over limit (0: allowed). Counting and checking are
// one atomic step, so N concurrent callers cannot all see the last free unit. Refused
// events count too: a client that keeps trying stays refused until the window ends.
func (l *Limiter) Allow(ctx context.Context, key string, limit int, window time.Duration) time.Duration {
	now := l.now()
	w := window.Milliseconds()
	if w <= 0 {
		w = 1
	}
	start := now.UnixMilli() / w * w
	retry := time.Duration(start+w-now.UnixMilli()) * time.Millisecond
	if rdb, rctx, cancel := l.redis(ctx); rdb != nil {
		n, err := windowScript.Run(rctx, rdb, []string{l.prefix + key + ":" + strconv.FormatInt(start, 10)}, w).Int64()
		cancel()
		if err == nil {
			if n > int64(limit) {
				return max(retry, time.Millisecond)
			}
			return 0
		}
		l.fallback("counting a rate-limited event", err)
	}
	return l.mem.allow(key, limit, now, time.UnixMilli(start+w))
}

func (m *memory) allow(key string, limit int, now, windowEnd time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[key]
	if e == nil || !now.Before(e.expire) {
		if len(m.entries) >= m.max {
			m.evict(now)
		}
		e = &entry{expire: windowEnd}
		m.entries[key] = e
	}
	e.n++
	if e.n > int64(limit) {
		return max(e.expire.Sub(now), time.Millisecond)
	}
	return 0
}
