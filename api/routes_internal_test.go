package api

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

type nopLive struct{}

func (nopLive) ServeWS(http.ResponseWriter, *http.Request)       {}
func (nopLive) ServeSSE(http.ResponseWriter, *http.Request)      {}
func (nopLive) Close(context.Context)                            {}
func (nopLive) ServeSocketIO(http.ResponseWriter, *http.Request) {}

// Every route the api registers (live streams included) is in openapi.json, and every
// operation the document gives the api's server is a registered route: the document
// cannot silently fall behind the code.
func TestEveryRouteIsDocumented(t *testing.T) {
	t.Parallel()
	// Neither the pool nor the client connects before first use.
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	require.NoError(t, err)
	defer pool.Close()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	s, err := New(testConfig(), Deps{Pool: pool, Redis: rdb, Listener: ln, Live: nopLive{}})
	require.NoError(t, err)

	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(openAPIDocument, &doc))
	documented := map[string]bool{}
	for path, item := range doc.Paths {
		if isIngestPath(strings.NewReplacer("{", "", "}", "").Replace(path)) {
			continue // the ingestor's routes (the api forwards them: forward.go)
		}
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "patch":
				documented[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	registered := map[string]bool{}
	for _, p := range s.patterns {
		if isDashboardPattern(p) {
			continue // the dashboard's page and static files (dashboard.go), not JSON API routes
		}
		registered[p] = true
		require.True(t, documented[p], "route %q is not in openapi.json", p)
	}
	var extra []string
	for op := range documented {
		if !registered[op] {
			extra = append(extra, op)
		}
	}
	sort.Strings(extra)
	require.Empty(t, extra, "openapi.json documents operations the api does not serve")
	require.Contains(t, doc.Paths, "/ingest")
	require.Contains(t, doc.Paths, "/ingest/batch")
}

func testConfig() Config {
	return Config{
		Host: "127.0.0.1", Env: "development", CORSOrigins: []string{"http://localhost:3001"},
		AccessTTL: Duration(15 * 60e9), RefreshTTL: Duration(7 * 24 * 3600e9), BcryptCost: 4, HashWait: 1e9,
		RefreshReuseGrace: 10e9, LoginAccountFreeFailures: 5, LoginIPFreeFailures: 20, LoginBackoffBase: 1e9,
		LoginBackoffMax: 60e9, LoginFailureTTL: 3600e9, LoginThrottlePrefix: "x:", MaxBodyBytes: 65536,
		RegisterIPLimit: 10, RegisterGlobalLimit: 300, RegisterWindow: 600e9,
		PublicURL: "http://localhost:3000", VerifyTokenTTL: 24 * 3600e9, VerifyResendInterval: 60e9, VerifyResendDailyLimit: 5,
		ReadHeaderTimeout: 5e9, ReadTimeout: 5e9, WriteTimeout: 5e9, IdleTimeout: 5e9, MaxHeaderBytes: 8192, ShutdownTimeout: 5e9,
	}
}
