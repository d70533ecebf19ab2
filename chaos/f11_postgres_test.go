package chaos_test

// F11: PostgreSQL crash-restarted, then stopped for 60 s, under load (make chaos).
//
// The scenario runs a PostgreSQL server of its own (harness.StartPostgres: initdb into
// the test's temporary directory, the postgres process on a spare port), not a TCP proxy
// in front of the shared server: a real restart is what the services meet in
// production (connections that die with the server, a refused port while it is down,
// crash recovery, pools that must reconnect to a new process), and it leaves the
// shared server, which every other test uses, alone.

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/chaos/harness"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

func TestF11PostgresOutage(t *testing.T) {
	harness.Long(t, "F11", "Postgres crash-restarted, then stopped for 60 s")
	postgresOutage(t, 60*time.Second, 300)
}

// postgresOutage: PostgreSQL is crash-restarted (immediate shutdown, then started at
// once), and later stopped (fast shutdown) for down, under a ledger load. Checked:
//   - while it is down, the consumer commits no offset (it backs off and retries the
//     same batch), and drains the backlog afterwards without being restarted;
//   - ingest keeps answering 202 for the load's keys, which the ingestor has cached; a
//     key it never saw gets 503 (it cannot be checked), never 401;
//   - the api answers 503, not 401, to an authenticated request (GET /me with a valid
//     token) and to a login with the right password; both work again afterwards;
//   - nothing lost or duplicated, offsets never backwards (Scenario.Verify).
func postgresOutage(t *testing.T, down time.Duration, rate int) {
	pg := harness.StartPostgres(t)
	c := harness.NewCluster(t, harness.Options{DB: pg.DB("pulseboard")})
	c.Track(pg.Proc)
	ing := c.StartIngestor()
	cons := c.StartConsumer()
	api := c.StartAPI("API_BCRYPT_COST=4")
	user := harness.RegisterUser(t, api.URL)
	ctx := context.Background()
	spare, err := pgstore.CreateProject(ctx, c.Pool, user.ID, "never used before the outage")
	if err != nil {
		t.Fatal(err)
	}

	s := harness.NewScenario(t, c, "F11", fmt.Sprintf("Postgres crash-restarted, then stopped for %s, under load", down))
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: rate})
	if !l.WaitAcked(int64(rate), time.Minute) {
		t.Fatal("no load acknowledged before the fault")
	}
	c.WaitStored(int64(rate), time.Minute)

	// 1. A crash restart: the pools of every service must reconnect by themselves.
	pg.Restart()
	restarted := time.Now()
	waitStatus(t, s, "GET /me after the crash restart", http.StatusOK, time.Minute, func() int {
		st, _, _ := harness.APIRequest(http.MethodGet, api.URL+"/me", user.Token, nil)
		return st
	})
	rows := storedRows(t, c)
	c.WaitStored(rows+int64(rate), 2*time.Minute)
	s.Note("crash restart: storing again", "%d more rows within %s of the restart", rate, time.Since(restarted).Round(100*time.Millisecond))

	// 2. The outage.
	probesBefore := l.Probes()
	errsBefore, _ := cons.Metric(`pulseboard_consumer_store_errors_total{kind="transient"}`)
	pg.Stop()
	stopped := time.Now()
	// A batch the consumer stored just before the stop may still commit its offsets.
	time.Sleep(3 * time.Second)
	offsetsAtStart, err := c.GroupOffsets(harness.ConsumerGroup)
	if err != nil {
		t.Fatal(err)
	}
	var apiChecks, ingestChecks int
	for time.Since(stopped) < down-2*time.Second {
		if st, body, err := harness.APIRequest(http.MethodGet, api.URL+"/me", user.Token, nil); st != http.StatusServiceUnavailable {
			s.Fail("GET /me with a valid token while Postgres is down: %d %v %s, want 503", st, err, body)
		}
		if st, _, err := user.Login(api.URL); st != http.StatusServiceUnavailable {
			s.Fail("POST /auth/login with the right password while Postgres is down: %d %v, want 503", st, err)
		}
		apiChecks++
		if st := harness.Ingest(ing.URL, spare.APIKey, uuid.New()); st != http.StatusServiceUnavailable {
			s.Fail("ingest with a key the ingestor never saw, while Postgres is down: %d, want 503 (never 401)", st)
		}
		ingestChecks++
		// Cached keys keep ingesting, so the ingestor must stay in the load balancer.
		if st, body, err := harness.APIRequest(http.MethodGet, ing.AdminURL()+"/readyz", "", nil); st != http.StatusOK {
			s.Fail("ingestor /readyz while Postgres is down: %d %v %s, want 200", st, err, body)
		}
		time.Sleep(5 * time.Second)
	}
	for time.Since(stopped) < down {
		time.Sleep(100 * time.Millisecond)
	}
	offsetsAtEnd, err := c.GroupOffsets(harness.ConsumerGroup)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(offsetsAtStart, offsetsAtEnd) {
		s.Fail("the consumer committed offsets while Postgres was down: %v → %v", offsetsAtStart, offsetsAtEnd)
	}
	errsAfter, _ := cons.Metric(`pulseboard_consumer_store_errors_total{kind="transient"}`)
	s.Note("consumer store retries during the outage", "%.0f", errsAfter-errsBefore)
	if errsAfter <= errsBefore {
		s.Fail("the consumer counted no failed store attempt while Postgres was down: it did not try (or did not count)")
	}
	probesDuring := l.Probes()
	lag, _ := c.Lag()
	s.Note("lag at the end of the outage", "%d", lag)
	pg.Start()
	s.Healed()

	accepted := probesDuring.ByStatus[http.StatusAccepted] - probesBefore.ByStatus[http.StatusAccepted]
	s.Note("probes during the outage", "%d answered 202 of %d", accepted, probesDuring.Requests-probesBefore.Requests)
	if accepted == 0 {
		s.Fail("no probe was accepted while Postgres was down: cached keys must keep ingesting")
	}
	for code, n := range probesDuring.ByStatus {
		if code != http.StatusAccepted && n > probesBefore.ByStatus[code] {
			s.Fail("%d probes answered %d while Postgres was down: a cached key must keep getting 202", n-probesBefore.ByStatus[code], code)
		}
	}
	s.Note("checks during the outage", "%d × (GET /me, login) → 503; %d × uncached key → 503", apiChecks, ingestChecks)

	waitStatus(t, s, "GET /me after the outage", http.StatusOK, time.Minute, func() int {
		st, _, _ := harness.APIRequest(http.MethodGet, api.URL+"/me", user.Token, nil)
		return st
	})
	waitStatus(t, s, "login after the outage", http.StatusOK, time.Minute, func() int {
		st, _, _ := user.Login(api.URL)
		return st
	})
	waitStatus(t, s, "the uncached key after the outage", http.StatusAccepted, time.Minute, func() int {
		return harness.Ingest(ing.URL, spare.APIKey, uuid.New())
	})
	if !l.WaitAcked(l.Acked()+int64(2*rate), 2*time.Minute) {
		s.Fail("the load made no progress after the outage")
	}
	s.Verify(5 * time.Minute)
	for _, svc := range []*harness.Service{ing, cons, api} {
		if st := svc.Stats(); st.Starts != 1 {
			s.Fail("%s was started %d times: recovery must not need a restart", svc.Name(), st.Starts)
		}
	}
}

// waitStatus polls get every 200 ms until it returns want, and records a failure if it
// does not within timeout.
func waitStatus(t *testing.T, s *harness.Scenario, what string, want int, timeout time.Duration, get func() int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := 0
	for time.Now().Before(deadline) {
		if last = get(); last == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.Fail("%s: still %d after %s, want %d", what, last, timeout, want)
}

// storedRows counts the stored events, retrying while the database is unreachable.
func storedRows(t *testing.T, c *harness.Cluster) int64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := c.Consistent(ctx)
		cancel()
		if err == nil {
			return n.Events
		}
		if time.Now().After(deadline) {
			t.Fatalf("counting stored events: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
