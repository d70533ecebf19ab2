// Package keycache resolves ingest API keys to projects through three layers: an
// in-process LRU, Redis, then Postgres. It is built for the failure modes of
// docs/reliability.md promise 7 and pitfall R6:
//   - a flood of unknown keys reaches Postgres at most once per key per negative TTL
//     (negative entries in both caches, and singleflight for concurrent misses);
//   - a Redis outage degrades to Postgres lookups, never to 401s;
//   - a Postgres outage keeps already-known keys working: an expired entry is served
//     stale while its refresh fails for infrastructure reasons;
//   - revocation is immediate where Redis delivers the invalidation message, and bounded
//     by the positive TTL (60 s) everywhere else. After a Redis reconnect, when
//     invalidations may have been missed, the local cache is dropped.
//
// Only key hashes are cached or sent anywhere; keys themselves are never stored or logged.
package keycache

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

// ErrUnknownKey means no project has this key (answer 401).
var ErrUnknownKey = errors.New("unknown API key")

// Options configure a Resolver.
type Options struct {
	TTL         time.Duration // positive entries, default 60 s
	NegativeTTL time.Duration // unknown keys, default 30 s
	Size        int           // LRU entries, default 100,000
}

// Resolver resolves API keys. Safe for concurrent use.
type Resolver struct {
	db     *pgxpool.Pool
	rdb    *redis.Client
	logger *slog.Logger
	o      Options
	local  *lru.Cache[apikey.Hash, entry]
	group  singleflight.Group
	now    func() time.Time

	lookups *prometheus.CounterVec
	// The lookups children of the hot path (local hit, local miss), looked up once.
	localHit, localMiss atomic.Pointer[prometheus.Counter]
}

type entry struct {
	project pgstore.KeyProject
	found   bool
	expires time.Time
}

// New returns a Resolver; call Run to receive invalidations.
func New(db *pgxpool.Pool, rdb *redis.Client, o Options, logger *slog.Logger, reg prometheus.Registerer) *Resolver {
	if o.TTL <= 0 {
		o.TTL = 60 * time.Second
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 30 * time.Second
	}
	if o.Size <= 0 {
		o.Size = 100_000
	}
	c, _ := lru.New[apikey.Hash, entry](o.Size)
	r := &Resolver{db: db, rdb: rdb, logger: logger, o: o, local: c, now: time.Now}
	r.lookups = promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_ingest_apikey_lookups_total",
		Help: "API key resolutions by layer that answered (local, redis, postgres, shared: waited for a concurrent lookup, stale) and outcome (hit, miss, error).",
	}, []string{"layer", "result"})
	return r
}

// count increments lookups{layer, result}. The children of the hot path are looked up
// once, the first time they count, so the exported series do not change.
func (r *Resolver) count(layer, result string) {
	if layer != "local" {
		r.lookups.WithLabelValues(layer, result).Inc()
		return
	}
	p := &r.localMiss
	if result == "hit" {
		p = &r.localHit
	}
	c := p.Load()
	if c == nil {
		child := r.lookups.WithLabelValues(layer, result)
		c = &child
		p.Store(c)
	}
	(*c).Inc()
}

// Resolve returns the project of key, ErrUnknownKey, or an infrastructure error (answer
// 503: the key may well be valid).
func (r *Resolver) Resolve(ctx context.Context, key string) (pgstore.KeyProject, error) {
	if !apikey.Plausible(key) {
		r.count("local", "miss")
		return pgstore.KeyProject{}, ErrUnknownKey
	}
	h := apikey.HashOf(key)
	now := r.now()
	e, cached := r.local.Get(h)
	if cached && now.Before(e.expires) {
		return r.answer("local", e)
	}
	loader := false // only the caller that ran load is counted against Redis or Postgres
	v, err, _ := r.group.Do(string(h[:]), func() (any, error) {
		loader = true
		return r.load(ctx, h)
	})
	if err != nil {
		if cached && e.found {
			// Serve what we knew rather than failing a key that was valid a minute ago.
			r.lookups.WithLabelValues("stale", "hit").Inc()
			return e.project, nil
		}
		layer := "postgres"
		if !loader {
			layer = "shared"
		}
		r.lookups.WithLabelValues(layer, "error").Inc()
		return pgstore.KeyProject{}, err
	}
	l := v.(loaded)
	if !loader {
		// Callers that waited for another's lookup are not Postgres or Redis queries:
		// counting them there would hide whether a flood really reached Postgres once.
		l.layer = "shared"
	}
	return r.answerLoaded(l)
}

type loaded struct {
	layer string
	e     entry
}

func (r *Resolver) answer(layer string, e entry) (pgstore.KeyProject, error) {
	if !e.found {
		r.count(layer, "miss")
		return pgstore.KeyProject{}, ErrUnknownKey
	}
	r.count(layer, "hit")
	return e.project, nil
}

func (r *Resolver) answerLoaded(l loaded) (pgstore.KeyProject, error) { return r.answer(l.layer, l.e) }

const negativeMarker = "-"

// load consults Redis, then Postgres, and fills both caches.
func (r *Resolver) load(ctx context.Context, h apikey.Hash) (loaded, error) {
	rkey := redisx.APIKeyCacheKey(h)
	if r.rdb != nil {
		rctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		val, err := r.rdb.Get(rctx, rkey).Result()
		cancel()
		switch {
		case err == nil && val == negativeMarker:
			e := entry{found: false, expires: r.now().Add(r.o.NegativeTTL)}
			r.local.Add(h, e)
			return loaded{"redis", e}, nil
		case err == nil:
			var p pgstore.KeyProject
			if jerr := json.Unmarshal([]byte(val), &p); jerr == nil {
				e := entry{project: p, found: true, expires: r.now().Add(r.o.TTL)}
				r.local.Add(h, e)
				return loaded{"redis", e}, nil
			}
		case errors.Is(err, redis.Nil):
		default:
			// Redis is down or slow: fall through to Postgres (never a 401 for that).
			r.lookups.WithLabelValues("redis", "error").Inc()
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	p, err := pgstore.ProjectByKeyHash(dctx, r.db, h)
	var e entry
	switch {
	case errors.Is(err, pgstore.ErrNotFound):
		e = entry{found: false, expires: r.now().Add(r.o.NegativeTTL)}
		r.setRedis(ctx, rkey, negativeMarker, r.o.NegativeTTL)
	case err != nil:
		return loaded{}, fmt.Errorf("resolving API key: %w", err)
	default:
		e = entry{project: p, found: true, expires: r.now().Add(r.o.TTL)}
		b, _ := json.Marshal(p)
		r.setRedis(ctx, rkey, string(b), r.o.TTL)
	}
	r.local.Add(h, e)
	return loaded{"postgres", e}, nil
}

func (r *Resolver) setRedis(ctx context.Context, key, val string, ttl time.Duration) {
	if r.rdb == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
	defer cancel()
	if err := r.rdb.Set(rctx, key, val, ttl).Err(); err != nil {
		r.lookups.WithLabelValues("redis", "error").Inc()
	}
}

// Known reports whether key resolved to a project recently: its local entry is a hit,
// fresh or past its TTL (Resolve would serve it stale). It does no I/O, so the unknown-key
// guard can ask it for every request of a blocked address (ingest B34, issue 16 item 5).
// A revoked key stops being known when its invalidation arrives or its entry is refreshed.
func (r *Resolver) Known(key string) bool {
	if !apikey.Plausible(key) {
		return false
	}
	e, ok := r.local.Peek(apikey.HashOf(key))
	return ok && e.found
}

// Invalidate drops a key hash from the local cache.
func (r *Resolver) Invalidate(h apikey.Hash) { r.local.Remove(h) }

// Run listens for invalidation messages until ctx is done. Every (re)subscription after
// the first purges the local cache, because messages sent while disconnected are lost.
func (r *Resolver) Run(ctx context.Context) error {
	if r.rdb == nil {
		<-ctx.Done()
		return nil
	}
	sub := r.rdb.Subscribe(ctx, redisx.KeyInvalidationChannel)
	defer sub.Close()
	ch := sub.ChannelWithSubscriptions(redis.WithChannelSize(1000))
	subscriptions := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					continue
				}
				subscriptions++
				if subscriptions > 1 {
					r.local.Purge()
					r.logger.Info("API key cache purged after Redis resubscription")
				}
			case *redis.Message:
				b, err := hex.DecodeString(m.Payload)
				if err != nil || len(b) != len(apikey.Hash{}) {
					continue
				}
				var h apikey.Hash
				copy(h[:], b)
				r.Invalidate(h)
			}
		}
	}
}
