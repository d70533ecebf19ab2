package consumer_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/consumer/internal/deadletter"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

func TestConfigDefaultsAndValidate(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse[consumer.Config](config.Env{})
	require.NoError(t, err)
	require.Equal(t, "pulseboard-consumer", cfg.GroupID)
	require.Equal(t, 5000, cfg.BatchSize)
	require.Equal(t, 100*time.Millisecond, cfg.BatchWait)
	require.Equal(t, "pulseboard.events", cfg.Kafka.Topic)
	require.Equal(t, "pulseboard.events.dlq", cfg.Kafka.DLQTopic)
	require.Equal(t, event.DefaultMaxEventBytes, cfg.MaxEventBytes)
	require.NoError(t, cfg.Validate())

	// The event size limit is the ingestor's own variable, so the two cannot disagree.
	cfg, err = config.Parse[consumer.Config](config.Env{"INGEST_MAX_EVENT_BYTES": "131072"})
	require.NoError(t, err)
	require.Equal(t, 131072, cfg.MaxEventBytes)

	cfg, err = config.Parse[consumer.Config](config.Env{
		"CONSUMER_BATCH_SIZE": "0", "CONSUMER_BATCH_WAIT": "0s",
		"CONSUMER_BACKOFF_MIN": "2s", "CONSUMER_BACKOFF_MAX": "1s", "KAFKA_DLQ_TOPIC": "pulseboard.events",
	})
	require.NoError(t, err)
	err = cfg.Validate()
	require.Error(t, err)
	for _, name := range []string{"CONSUMER_BATCH_SIZE", "CONSUMER_BATCH_WAIT", "CONSUMER_BACKOFF_MAX", "KAFKA_DLQ_TOPIC"} {
		require.ErrorContains(t, err, name)
	}

	_, err = consumer.New(cfg, consumer.Deps{})
	require.ErrorContains(t, err, "Deps.Pool")
}

// 1. Events across projects are stored exactly once, rollups match, each event is
// published on its project's channel with the canonical JSON in offset order, and the
// offsets are committed.
func TestStoresPublishesAndCommits(t *testing.T) {
	t.Parallel()
	b := setup(t, 4, 3)
	const perProject = 120
	var all []event.Event
	byChannel := map[string][]event.Event{}
	channels := make([]string, 0, len(b.projects))
	for _, p := range b.projects {
		evs := makeEvents(t, p.ID, perProject)
		all = append(all, evs...)
		ch := redisx.EventsChannel(p.ID)
		byChannel[ch] = evs
		channels = append(channels, ch)
	}
	live := subscribe(t, b.rdb, channels...)
	// Interleave the projects as concurrent ingest would.
	var produced []event.Event
	for i := range perProject {
		for _, ch := range channels {
			produced = append(produced, byChannel[ch][i])
		}
	}
	b.produce(t, produced...)

	cfg := b.config(t, "g1")
	cfg.BatchSize = 100
	r := b.start(t, context.Background(), cfg, nil)
	b.waitLag(t, "g1", 0)

	b.requireStoredOnce(t, all)
	for _, p := range b.projects {
		require.Equal(t, perProject, b.count(t, `SELECT count(*) FROM events WHERE project_id = $1`, p.ID))
		require.Equal(t, perProject, b.count(t, `SELECT sum(count)::int FROM event_rollups WHERE project_id = $1`, p.ID))
	}
	// Rollups per UTC minute and type agree with the rows.
	require.Zero(t, b.count(t, `
		SELECT count(*) FROM event_rollups r FULL JOIN (
			SELECT project_id, date_trunc('minute', received_at, 'UTC') AS minute, type, count(*) AS n
			FROM events GROUP BY 1, 2, 3) e USING (project_id, minute, type)
		WHERE r.count IS DISTINCT FROM e.n`))

	// Every event on its project's channel, once, canonical, in produce order (one
	// project = one key = one partition).
	got := map[string][]string{}
	deadline := time.After(waitFor)
	for n := 0; n < len(all); n++ {
		select {
		case m := <-live:
			got[m.Channel] = append(got[m.Channel], m.Payload)
		case <-deadline:
			t.Fatalf("received %d of %d live events", n, len(all))
		}
	}
	for ch, evs := range byChannel {
		want := make([]string, len(evs))
		for i, ev := range evs {
			want[i] = string(ev.AppendJSON(nil))
		}
		require.Equal(t, want, got[ch], "channel %s", ch)
	}

	require.EqualValues(t, len(all), metric(t, r.reg, "pulseboard_consumer_rows_stored_total"))
	require.Zero(t, metric(t, r.reg, "pulseboard_consumer_duplicates_total"))
	require.EqualValues(t, len(all), metric(t, r.reg, "pulseboard_consumer_offsets_committed_total"))
	_, fetched := histogram(t, r.reg, "pulseboard_consumer_batch_size_messages")
	require.EqualValues(t, len(all), fetched)
	require.Eventually(t, func() bool {
		n, _ := histogram(t, r.reg, "pulseboard_consumer_receive_to_published_seconds")
		return n == uint64(len(all))
	}, waitFor, pollEvery)
	require.Zero(t, metric(t, r.reg, "pulseboard_consumer_publish_errors_total", "reason", "error"))
	for p := range 4 {
		require.Zero(t, metric(t, r.reg, "pulseboard_consumer_lag_messages", "partition", strconv.Itoa(p)))
	}
	require.NoError(t, r.ready.Check(context.Background()))
	require.NoError(t, r.stop(t))
}

// 2. Redelivery and replay: the same message produced twice, and the whole topic
// consumed again by another group on the same database, still give one row per event;
// the duplicates metric counts what was absorbed.
func TestRedeliveryAndReplayStoreOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 3, 2)
	evs := append(makeEvents(t, b.projects[0].ID, 150), makeEvents(t, b.projects[1].ID, 150)...)
	b.produce(t, evs...)
	b.produce(t, evs[:100]...) // a producer retry of the first hundred

	first := b.start(t, context.Background(), b.config(t, "first"), nil)
	b.waitLag(t, "first", 0)
	b.requireStoredOnce(t, evs)
	require.EqualValues(t, len(evs), metric(t, first.reg, "pulseboard_consumer_rows_stored_total"))
	require.EqualValues(t, 100, metric(t, first.reg, "pulseboard_consumer_duplicates_total"))
	require.NoError(t, first.stop(t))

	replay := b.start(t, context.Background(), b.config(t, "replay"), nil)
	b.waitLag(t, "replay", 0)
	b.requireStoredOnce(t, evs)
	require.Zero(t, metric(t, replay.reg, "pulseboard_consumer_rows_stored_total"))
	require.EqualValues(t, len(evs)+100, metric(t, replay.reg, "pulseboard_consumer_duplicates_total"))
	require.NoError(t, replay.stop(t))
}

// 3. Failpoints: a consumer killed after the fetch, between the DB commit and the offset
// commit, or after the offset commit loses nothing and duplicates nothing once a new
// member of the same group takes over.
func TestFailpoints(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		hook func(*consumer.Hooks, func(context.Context) error)
		// check runs after the killed consumer returned.
		check func(t *testing.T, b *bundle, n int)
		// dedup reports whether the successor must absorb duplicates.
		dedup bool
	}{
		{
			name: "AfterFetch",
			hook: func(h *consumer.Hooks, f func(context.Context) error) { h.AfterFetch = f },
			check: func(t *testing.T, b *bundle, n int) {
				require.Zero(t, b.count(t, `SELECT count(*) FROM events`))
				require.EqualValues(t, n, b.lag(t, "g"))
			},
		},
		{
			name: "AfterDBCommit",
			hook: func(h *consumer.Hooks, f func(context.Context) error) { h.AfterDBCommit = f },
			check: func(t *testing.T, b *bundle, n int) {
				require.Positive(t, b.count(t, `SELECT count(*) FROM events`))
				require.EqualValues(t, n, b.lag(t, "g"), "nothing may be committed")
			},
			dedup: true,
		},
		{
			name: "AfterOffsetCommit",
			hook: func(h *consumer.Hooks, f func(context.Context) error) { h.AfterOffsetCommit = f },
			check: func(t *testing.T, b *bundle, n int) {
				stored := b.count(t, `SELECT count(*) FROM events`)
				require.Positive(t, stored)
				require.EqualValues(t, n-stored, b.lag(t, "g"), "exactly the stored messages are committed")
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, 2, 2)
			evs := append(makeEvents(t, b.projects[0].ID, 200), makeEvents(t, b.projects[1].ID, 200)...)
			b.produce(t, evs...)
			cfg := b.config(t, "g")
			cfg.BatchSize = 50

			killed := b.start(t, context.Background(), cfg, func(d *consumer.Deps) { c.hook(&d.Hooks, failOnce()) })
			require.ErrorIs(t, killed.wait(t), errFailpoint)
			stored := b.count(t, `SELECT count(*) FROM events`)
			c.check(t, b, len(evs))

			successor := b.start(t, context.Background(), cfg, nil)
			b.waitLag(t, "g", 0)
			b.requireStoredOnce(t, evs)
			dups := metric(t, successor.reg, "pulseboard_consumer_duplicates_total")
			if c.dedup {
				require.EqualValues(t, stored, dups, "the dedup counter shows the window was hit")
			} else {
				require.Zero(t, dups)
			}
			require.EqualValues(t, len(evs)-stored, metric(t, successor.reg, "pulseboard_consumer_rows_stored_total"))
			require.NoError(t, successor.stop(t))
		})
	}
}

// 4. Poison messages mixed with good ones on one partition each go to the dead-letter
// topic with their reason headers and original bytes; the good ones are stored and
// the lag returns to 0.
func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t, 3, 1)
	p := b.projects[0].ID
	key := []byte(p.String()) // one key: one partition for good and bad alike
	good := makeEvents(t, p, 7)
	valid := func(mutate func(*event.Event)) []byte {
		ev := makeEvents(t, p, 1)[0]
		mutate(&ev)
		return ev.AppendJSON(nil)
	}
	withName := func(rawName string) []byte {
		v := string(valid(func(ev *event.Event) { ev.Name = "NAME" }))
		return []byte(strings.Replace(v, `"name":"NAME"`, `"name":"`+rawName+`"`, 1))
	}
	ghost := uuid.New()
	poison := []struct {
		value []byte
		code  string
	}{
		{[]byte(`{"id":"` + uuid.NewString() + `","projectId":`), event.CodeInvalidJSON},
		{withName(`nul\u0000byte`), event.CodeValidationFailed},
		{withName(`lone\ud800surrogate`), event.CodeValidationFailed},
		{valid(func(ev *event.Event) {
			ev.Payload = []byte(`{"blob":"` + strings.Repeat("x", 70<<10) + `"}`)
		}), event.CodePayloadTooLarge},
		{valid(func(ev *event.Event) { ev.ProjectID = ghost }), deadletter.CodeUnknownProject},
		{valid(func(ev *event.Event) { ev.ReceivedAt = ev.ReceivedAt.AddDate(3, 0, 0) }), event.CodeInvalidTimestamp},
	}
	var msgs []kafka.Message
	for i, ev := range good {
		msgs = append(msgs, message(ev))
		if i < len(poison) {
			msgs = append(msgs, kafka.Message{Key: key, Value: poison[i].value,
				Headers: []kafka.Header{{Key: "origin", Value: []byte("test")}}})
		}
	}
	b.produceRaw(t, msgs...)

	r := b.start(t, context.Background(), b.config(t, "g"), nil)
	b.waitLag(t, "g", 0)
	b.requireStoredOnce(t, good)

	letters := b.readDLQ(t, len(poison))
	byValue := map[string]kafka.Message{}
	for _, m := range letters {
		byValue[string(m.Value)] = m
	}
	for i, pm := range poison {
		m, ok := byValue[string(pm.value)]
		require.True(t, ok, "poison %d (%s) is not in the dead-letter topic with its original bytes", i, pm.code)
		require.Equal(t, key, m.Key)
		code, _ := header(m, deadletter.HeaderCode)
		require.Equal(t, pm.code, code, "poison %d", i)
		reason, _ := header(m, deadletter.HeaderReason)
		require.NotEmpty(t, reason, "poison %d", i)
		topic, _ := header(m, deadletter.HeaderTopic)
		require.Equal(t, b.kc.Topic, topic)
		origin, _ := header(m, "origin")
		require.Equal(t, "test", origin, "original headers are kept")
		ts, _ := header(m, deadletter.HeaderTime)
		_, err := time.Parse(time.RFC3339Nano, ts)
		require.NoError(t, err)
		// The partition and offset headers point at the original message.
		ps, _ := header(m, deadletter.HeaderPartition)
		os, _ := header(m, deadletter.HeaderOffset)
		partition, err := strconv.Atoi(ps)
		require.NoError(t, err)
		offset, err := strconv.ParseInt(os, 10, 64)
		require.NoError(t, err)
		require.Equal(t, pm.value, b.readAt(t, partition, offset).Value, "poison %d", i)
	}
	unknownReason, _ := header(byValue[string(poison[4].value)], deadletter.HeaderReason)
	require.Contains(t, unknownReason, ghost.String())

	require.EqualValues(t, 2, metric(t, r.reg, "pulseboard_consumer_dlq_messages_total", "code", event.CodeValidationFailed))
	require.EqualValues(t, 1, metric(t, r.reg, "pulseboard_consumer_dlq_messages_total", "code", event.CodeInvalidJSON))
	require.EqualValues(t, 1, metric(t, r.reg, "pulseboard_consumer_dlq_messages_total", "code", event.CodePayloadTooLarge))
	require.EqualValues(t, 1, metric(t, r.reg, "pulseboard_consumer_dlq_messages_total", "code", deadletter.CodeUnknownProject))
	require.EqualValues(t, 1, metric(t, r.reg, "pulseboard_consumer_dlq_messages_total", "code", event.CodeInvalidTimestamp))
	require.NoError(t, r.stop(t))
}

// Rows PostgreSQL refuses are found by bisection and dead-lettered with their SQLSTATE;
// the rest of the batch is stored.
func TestRowsPostgresRefusesAreDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, 1)
	_, err := b.pool.Exec(context.Background(), `ALTER TABLE events ADD CONSTRAINT test_refuse CHECK (name <> 'refuse-me')`)
	require.NoError(t, err)
	evs := makeEvents(t, b.projects[0].ID, 60)
	evs[11].Name = "refuse-me"
	evs[42].Name = "refuse-me"
	b.produce(t, evs...)

	r := b.start(t, context.Background(), b.config(t, "g"), nil)
	b.waitLag(t, "g", 0)
	var good []event.Event
	for i, ev := range evs {
		if i != 11 && i != 42 {
			good = append(good, ev)
		}
	}
	b.requireStoredOnce(t, good)
	letters := b.readDLQ(t, 2)
	for _, m := range letters {
		code, _ := header(m, deadletter.HeaderCode)
		require.Equal(t, deadletter.CodeDBRejected, code)
		reason, _ := header(m, deadletter.HeaderReason)
		require.True(t, strings.HasPrefix(reason, "SQLSTATE 23514: "), reason)
		require.Contains(t, reason, "test_refuse")
	}
	require.ElementsMatch(t, [][]byte{evs[11].AppendJSON(nil), evs[42].AppendJSON(nil)}, [][]byte{letters[0].Value, letters[1].Value})
	require.Positive(t, metric(t, r.reg, "pulseboard_consumer_store_errors_total", "kind", "data"))
	require.EqualValues(t, 2, metric(t, r.reg, "pulseboard_consumer_dlq_messages_total", "code", deadletter.CodeDBRejected))
	require.NoError(t, r.stop(t))
}

// 5. During a Postgres outage nothing is committed, nothing more is fetched, readiness
// fails; after it the backlog is stored exactly once by the same, never restarted,
// consumer.
func TestPostgresOutage(t *testing.T) {
	t.Parallel()
	b := setup(t, 2, 1)
	pool, proxy := b.proxiedPool(t)
	cfg := b.config(t, "g")
	cfg.StoreTimeout = 5 * time.Second
	r := b.start(t, context.Background(), cfg, func(d *consumer.Deps) { d.Pool = pool })

	before := makeEvents(t, b.projects[0].ID, 50)
	b.produce(t, before...)
	b.waitLag(t, "g", 0)
	require.NoError(t, r.ready.Check(context.Background()))

	proxy.Cut()
	during := makeEvents(t, b.projects[0].ID, 100)
	b.produce(t, during...)
	require.Eventually(t, func() bool { return r.ready.Check(context.Background()) != nil }, waitFor, pollEvery,
		"readiness must fail while Postgres is down")
	require.ErrorContains(t, r.ready.Check(context.Background()), "postgres")
	batches, _ := histogram(t, r.reg, "pulseboard_consumer_batch_size_messages")
	retries := metric(t, r.reg, "pulseboard_consumer_store_errors_total", "kind", "transient")
	// More arrives while the consumer keeps retrying.
	b.produce(t, makeEvents(t, b.projects[0].ID, 20)...)
	require.Eventually(t, func() bool {
		return metric(t, r.reg, "pulseboard_consumer_store_errors_total", "kind", "transient") >= retries+3
	}, waitFor, pollEvery, "the consumer keeps retrying with backoff")
	require.EqualValues(t, 120, b.lag(t, "g"), "nothing is committed during the outage")
	require.Equal(t, 50, b.count(t, `SELECT count(*) FROM events`))
	after, _ := histogram(t, r.reg, "pulseboard_consumer_batch_size_messages")
	require.Equal(t, batches, after, "no new batch is fetched while the one in hand cannot be stored")
	require.Positive(t, metric(t, r.reg, "pulseboard_consumer_oldest_message_age_seconds"))

	proxy.Restore()
	b.waitLag(t, "g", 0)
	require.Equal(t, 170, b.count(t, `SELECT count(*) FROM events`))
	require.Equal(t, 170, b.count(t, `SELECT count(DISTINCT id) FROM events`))
	require.Equal(t, 170, b.count(t, `SELECT sum(count)::int FROM event_rollups`))
	require.Eventually(t, func() bool { return r.ready.Check(context.Background()) == nil }, waitFor, pollEvery)
	select {
	case err := <-r.done:
		t.Fatalf("the consumer stopped during the outage: %v", err)
	default:
	}
	require.NoError(t, r.stop(t))
}

// While a batch is stored, the next one is fetched and decoded (Postgres is not left
// idle meanwhile); batches are still processed, and their offsets committed, in order.
func TestNextBatchIsFetchedWhileOneIsProcessed(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, 1)
	cfg := b.config(t, "g")
	cfg.BatchSize = 10
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	r := b.start(t, context.Background(), cfg, func(d *consumer.Deps) {
		d.Hooks.AfterFetch = func(context.Context) error {
			if calls.Add(1) == 1 {
				close(entered)
				<-release // the first batch's processing stops here
			}
			return nil
		}
	})
	evs := makeEvents(t, b.projects[0].ID, 20)
	b.produce(t, evs[:10]...)
	<-entered
	b.produce(t, evs[10:]...)
	require.Eventually(t, func() bool { return consumer.BatchAhead(r.svc) }, waitFor, pollEvery,
		"the next batch was not fetched while the first was processed")
	require.Zero(t, b.count(t, `SELECT count(*) FROM events`), "the second batch waits for the first")
	require.EqualValues(t, 20, b.lag(t, "g"))

	close(release)
	b.waitLag(t, "g", 0)
	b.requireStoredOnce(t, evs)
	// The first ten may arrive as more than one fetch, hence more than two batches.
	require.GreaterOrEqual(t, calls.Load(), int32(2))
	require.NoError(t, r.stop(t))
}

// 6. A graceful stop mid-stream finishes the batch in hand: everything fetched is
// stored and committed, Run returns nil, and a restart stores the rest exactly once.
func TestGracefulStopFinishesBatchInHand(t *testing.T) {
	t.Parallel()
	b := setup(t, 3, 2)
	evs := append(makeEvents(t, b.projects[0].ID, 1500), makeEvents(t, b.projects[1].ID, 1500)...)
	b.produce(t, evs...)
	cfg := b.config(t, "g")
	cfg.BatchSize = 200

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	batches := 0
	r := b.start(t, ctx, cfg, func(d *consumer.Deps) {
		d.Hooks.AfterFetch = func(context.Context) error {
			if batches++; batches == 3 {
				cancel() // SIGTERM while the third batch is in hand
			}
			return nil
		}
	})
	require.NoError(t, r.wait(t))

	_, fetched := histogram(t, r.reg, "pulseboard_consumer_batch_size_messages")
	committed := metric(t, r.reg, "pulseboard_consumer_offsets_committed_total")
	require.Positive(t, fetched)
	require.Equal(t, fetched, committed, "every fetched message is committed")
	require.EqualValues(t, committed, b.count(t, `SELECT count(*) FROM events`), "every committed message is stored")
	require.EqualValues(t, float64(len(evs))-committed, b.lag(t, "g"))
	require.Less(t, committed, float64(len(evs)), "the stop happened mid-stream")

	again := b.start(t, context.Background(), cfg, nil)
	b.waitLag(t, "g", 0)
	b.requireStoredOnce(t, evs)
	require.Zero(t, metric(t, again.reg, "pulseboard_consumer_duplicates_total"))
	require.NoError(t, again.stop(t))
}

// A stop requested while a batch is still being gathered (BatchWait not over) ends the
// gathering at once and finishes what is in hand.
func TestGracefulStopWhileGatheringABatch(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, 1)
	evs := makeEvents(t, b.projects[0].ID, 50)
	b.produce(t, evs...)
	cfg := b.config(t, "g")
	cfg.BatchSize = 1000
	cfg.BatchWait = 20 * time.Second
	// As after a store that took 20 s: a caught-up batch stays open that long.
	r := b.startPrepared(t, context.Background(), cfg, nil, func(s *consumer.Service) { consumer.SetLastStore(s, 20*time.Second) })
	require.Eventually(t, func() bool {
		return metric(t, r.reg, "pulseboard_consumer_oldest_message_age_seconds") > 0
	}, waitFor, pollEvery, "a batch is in hand")

	start := time.Now()
	require.NoError(t, r.stop(t))
	require.Less(t, time.Since(start), 10*time.Second, "the stop does not wait for BatchWait")
	committed := metric(t, r.reg, "pulseboard_consumer_offsets_committed_total")
	require.Positive(t, committed, "the batch in hand was finished, not abandoned")
	require.EqualValues(t, committed, b.count(t, `SELECT count(*) FROM events`))
	require.EqualValues(t, float64(len(evs))-committed, b.lag(t, "g"))
}

// A graceful stop during an outage is bounded: Run gives up on the batch in hand after
// ShutdownTimeout, commits nothing and says so.
func TestGracefulStopIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, 1)
	pool, proxy := b.proxiedPool(t)
	cfg := b.config(t, "g")
	cfg.ShutdownTimeout = 500 * time.Millisecond
	r := b.start(t, context.Background(), cfg, func(d *consumer.Deps) { d.Pool = pool })
	proxy.Cut()
	b.produce(t, makeEvents(t, b.projects[0].ID, 10)...)
	require.Eventually(t, func() bool { return r.ready.Check(context.Background()) != nil }, waitFor, pollEvery)

	start := time.Now()
	err := r.stop(t)
	require.ErrorContains(t, err, "not finished within")
	require.Less(t, time.Since(start), 5*time.Second)
	require.EqualValues(t, 10, b.lag(t, "g"))
}
