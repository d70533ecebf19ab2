package chaos_test

// F14, the outage half: Redis stopped for 60 s under load (make chaos). The fast
// "Redis restarted empty" case is TestF14RedisRestart.

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/chaos/harness"
)

func TestF14RedisOutage(t *testing.T) {
	harness.Long(t, "F14", "Redis stopped for 60 s")
	redisOutage(t, 60*time.Second, 300)
}

// redisOutage: Redis is killed, kept down for down, and started again (empty), under a
// ledger load, with a WebSocket and an SSE subscriber on a project of the load.
// Checked:
//   - ingest keeps authenticating: no probe gets 401, the load keeps being accepted, and
//     an ingestor started during the outage (nothing cached in process, no Redis)
//     accepts every project's key from Postgres;
//   - login and authenticated requests work throughout (the login throttle falls back
//     to process memory);
//   - the consumer keeps storing while it cannot publish;
//   - the live subscribers stay connected, get {"type":"resync","missed":-1} once the
//     api has resubscribed, and live events again after it;
//   - nothing lost or duplicated (Scenario.Verify).
func redisOutage(t *testing.T, down time.Duration, rate int) {
	c := harness.NewCluster(t, harness.Options{})
	ing := c.StartIngestor()
	cons := c.StartConsumer()
	api := c.StartAPI("API_BCRYPT_COST=4")
	user := harness.RegisterUser(t, api.URL)
	watched := c.Projects[0]
	c.GiveProject(t, watched, user.ID)
	wsc := harness.DialLive(t, api.URL, watched.ID, user.Token, nil)
	sse := harness.DialSSE(t, api.URL, watched.ID, user.Token, nil)

	s := harness.NewScenario(t, c, "F14", fmt.Sprintf("Redis stopped for %s under load, live subscribers connected", down))
	l := s.StartLoad(ing.URL, harness.LoadOptions{Rate: rate})
	if !l.WaitAcked(int64(rate), time.Minute) {
		t.Fatal("no load acknowledged before the fault")
	}
	isEvent := func(m harness.LiveMsg) bool { return m.EventID() != uuid.Nil }
	for _, lc := range []*harness.LiveClient{wsc, sse} {
		if _, ok := lc.WaitMessage(time.Time{}, time.Minute, isEvent); !ok {
			t.Fatal("a live subscriber got no event before the fault")
		}
	}

	probesBefore := l.Probes()
	c.Redis.Kill()
	stopped := time.Now()
	time.Sleep(2 * time.Second) // let every client notice
	rowsAtStop := storedRows(t, c)

	// A cold ingestor: nothing in its process cache, Redis unreachable.
	cold := c.StartIngestor()
	for i := range c.Projects {
		if st := l.SendOne(cold.URL, i); st != http.StatusAccepted {
			s.Fail("project %d through an ingestor started while Redis is down: %d, want 202", i, st)
		}
	}
	var checks int
	for time.Since(stopped) < down-2*time.Second {
		st, token, err := user.Login(api.URL)
		if st != http.StatusOK {
			s.Fail("login while Redis is down: %d %v, want 200", st, err)
		}
		if st, body, err := harness.APIRequest(http.MethodGet, api.URL+"/me", token, nil); st != http.StatusOK {
			s.Fail("GET /me while Redis is down: %d %v %s, want 200", st, err, body)
		}
		// Only live streams need Redis: the api must stay in the load balancer.
		if st, body, err := harness.APIRequest(http.MethodGet, api.AdminURL()+"/readyz", "", nil); st != http.StatusOK {
			s.Fail("api /readyz while Redis is down: %d %v %s, want 200", st, err, body)
		}
		checks++
		time.Sleep(5 * time.Second)
	}
	for time.Since(stopped) < down {
		time.Sleep(100 * time.Millisecond)
	}
	if rows := storedRows(t, c); rows <= rowsAtStop {
		s.Fail("the consumer stored nothing while Redis was down (%d rows at the stop, %d at the end)", rowsAtStop, rows)
	} else {
		s.Note("rows stored while Redis was down", "%d", rows-rowsAtStop)
	}
	probesDuring := l.Probes()
	for _, lc := range []*harness.LiveClient{wsc, sse} {
		if closed, err := lc.Closed(); closed {
			s.Fail("a live subscriber was disconnected during the Redis outage: %v", err)
		}
	}
	restarted := time.Now()
	c.Redis.Start()
	c.Redis.WaitReady(30 * time.Second)
	s.Healed()

	if n := probesDuring.ByStatus[http.StatusUnauthorized] - probesBefore.ByStatus[http.StatusUnauthorized]; n > 0 {
		s.Fail("%d probes got 401 while Redis was down", n)
	}
	accepted := probesDuring.ByStatus[http.StatusAccepted] - probesBefore.ByStatus[http.StatusAccepted]
	s.Note("probes during the outage", "%d answered 202 of %d", accepted, probesDuring.Requests-probesBefore.Requests)
	if accepted == 0 {
		s.Fail("no probe was accepted while Redis was down")
	}
	s.Note("checks during the outage", "%d × (login, GET /me) → 200; cold ingestor → 202 for every key", checks)

	// The api resubscribes and tells its clients they missed messages; events follow.
	for _, x := range []struct {
		name string
		lc   *harness.LiveClient
	}{{"WebSocket", wsc}, {"SSE", sse}} {
		m, ok := x.lc.WaitMessage(stopped, 2*time.Minute, func(m harness.LiveMsg) bool { return m.Type() == "resync" })
		if !ok {
			s.Fail("%s subscriber: no resync message within 2 minutes of Redis's return", x.name)
			continue
		}
		if string(m.Data) != `{"type":"resync","missed":-1}` {
			s.Fail("%s subscriber: resync %s, want missed -1 (unknown)", x.name, m.Data)
		}
		s.Note(x.name+" resync after Redis's return", "%s", m.At.Sub(restarted).Round(100*time.Millisecond))
		if _, ok := x.lc.WaitMessage(m.At, time.Minute, isEvent); !ok {
			s.Fail("%s subscriber: no live event after the resync", x.name)
		}
	}
	if v, _ := api.Metric("pulseboard_api_live_redis_resubscriptions_total"); v < 1 {
		s.Fail("pulseboard_api_live_redis_resubscriptions_total is %v after Redis's return", v)
	}
	if !l.WaitAcked(l.Acked()+int64(2*rate), 2*time.Minute) {
		s.Fail("the load made no progress after Redis's return")
	}
	s.Verify(5 * time.Minute)
	if p := l.Probes(); p.ByStatus[http.StatusUnauthorized] > 0 {
		s.Fail("%d probes got 401", p.ByStatus[http.StatusUnauthorized])
	}
	for _, svc := range []*harness.Service{ing, cons, api} {
		if st := svc.Stats(); st.Starts != 1 {
			s.Fail("%s was started %d times: recovery must not need a restart", svc.Name(), st.Starts)
		}
	}
}
