package alerter_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	netmail "net/mail"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/kafkax"
	"github.com/pulseboard/pulseboard/pkg/obs"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
	"github.com/pulseboard/pulseboard/pkg/testenv"
	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.GoleakOptions()...)
}

// waitFor is how long any asynchronous outcome may take before a test fails.
const waitFor = 30 * time.Second

const pollEvery = 20 * time.Millisecond

// storedGroup is the consumer group of the stand-in consumer (storeLoop).
const storedGroup = "pulseboard-consumer"

// clock is the injected clock: real time plus an offset the test moves.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// Set makes Now return t now (and time flows on from there).
func (c *clock) Set(t time.Time) { c.offset.Store(int64(time.Until(t))) }

// Advance moves the clock forward by d.
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// --- SMTP ------------------------------------------------------------------------

// received is one message accepted by the test SMTP server.
type received struct {
	From string
	To   []string
	Data []byte
}

// smtpServer is a real SMTP server (emersion/go-smtp) in-process.
type smtpServer struct {
	Host string
	Port int

	mu       sync.Mutex
	messages []received
	// failRcpt makes RCPT TO for an address fail transiently this many more times.
	failRcpt map[string]int

	down  atomic.Bool  // answer 421 to MAIL FROM
	delay atomic.Int64 // hold DATA this long before 250
	srv   *smtp.Server
}

func newSMTPServer(t *testing.T) *smtpServer {
	t.Helper()
	s := &smtpServer{failRcpt: map[string]int{}}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &smtpSession{srv: s}, nil
	}))
	s.srv.Domain = "localhost"
	s.srv.AllowInsecureAuth = true
	s.srv.ReadTimeout = 10 * time.Second
	s.srv.WriteTimeout = 10 * time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().(*net.TCPAddr)
	s.Host, s.Port = "127.0.0.1", addr.Port
	done := make(chan struct{})
	go func() { defer close(done); _ = s.srv.Serve(ln) }()
	t.Cleanup(func() { _ = s.srv.Close(); <-done })
	return s
}

// Messages returns a copy of what was accepted so far.
func (s *smtpServer) Messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.messages...)
}

// To returns the accepted messages addressed to rcpt.
func (s *smtpServer) To(rcpt string) []received {
	var out []received
	for _, m := range s.Messages() {
		for _, r := range m.To {
			if r == rcpt {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

type smtpSession struct {
	srv  *smtpServer
	from string
	to   []string
}

func (s *smtpSession) Reset()        { s.from, s.to = "", nil }
func (s *smtpSession) Logout() error { return nil }

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.srv.down.Load() {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "service not available (test)"}
	}
	s.from = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	if s.srv.failRcpt[to] > 0 {
		s.srv.failRcpt[to]--
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later (test)"}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if d := time.Duration(s.srv.delay.Load()); d > 0 {
		time.Sleep(d) // a slow server: widens the window in which a second sender could interfere
	}
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	s.srv.messages = append(s.srv.messages, received{From: s.from, To: append([]string(nil), s.to...), Data: b})
	return nil
}

// parsed is a delivered message, decoded.
type parsed struct {
	Header  netmail.Header
	Subject string
	Text    string
	HTML    string
}

// parse decodes a delivered message with net/mail and mime/multipart.
func parse(t *testing.T, m received) parsed {
	t.Helper()
	msg, err := netmail.ReadMessage(bytes.NewReader(m.Data))
	require.NoError(t, err)
	var dec mime.WordDecoder
	subject, err := dec.DecodeHeader(msg.Header.Get("Subject"))
	require.NoError(t, err)
	p := parsed{Header: msg.Header, Subject: subject}
	mediaType, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/alternative", mediaType, "a text and an HTML part")
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		body, err := io.ReadAll(part) // quoted-printable is decoded by multipart
		require.NoError(t, err)
		ct, _, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		require.NoError(t, err)
		switch ct {
		case "text/plain":
			p.Text = string(body)
		case "text/html":
			p.HTML = string(body)
		}
	}
	require.NotEmpty(t, p.Text, "text part")
	require.NotEmpty(t, p.HTML, "HTML part")
	return p
}

// --- the bundle -------------------------------------------------------------------

type bundle struct {
	dbURL  string
	pool   *pgxpool.Pool
	kc     *kafkatest.Cluster
	smtp   *smtpServer
	clock  *clock
	writer *kafka.Writer
}

// setup gives a test its own database, Kafka cluster, SMTP server and clock, and runs
// the stand-in consumer that stores what is produced (as the real consumer does).
func setup(t *testing.T) *bundle {
	t.Helper()
	dbURL, pool := pgtest.NewDB(t)
	b := &bundle{dbURL: dbURL, pool: pool, kc: kafkatest.New(t, 2), smtp: newSMTPServer(t), clock: &clock{}}
	// Tests move the clock up to an hour ahead of where it starts. Started in the last
	// two hours before midnight UTC, that hour would reach the daily digest slot, and a
	// replica would send a digest the test did not ask for (seen at 23:33 in CI). Those
	// tests start three hours earlier instead; tests that set the clock (the digest
	// tests) are unaffected.
	if time.Now().UTC().Hour() >= 22 {
		b.clock.Advance(-3 * time.Hour)
	}
	var err error
	b.writer, err = kafkax.NewWriter(b.kc.Brokers, b.kc.Topic, kafkax.DefaultWriterOptions())
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = b.writer.Close()
		if tr, ok := b.writer.Transport.(*kafka.Transport); ok {
			tr.CloseIdleConnections()
		}
	})
	b.storeLoop(t)
	return b
}

// user creates a user whose address is verified (alert and digest mail go only to
// verified addresses) with one project per name.
func (b *bundle) user(t *testing.T, email string, projects ...string) (pgstore.User, []pgstore.Project) {
	t.Helper()
	u, ps := b.unverifiedUser(t, email, projects...)
	b.verify(t, u.ID)
	return u, ps
}

// verify marks the user's address verified, as following the api's link does.
func (b *bundle) verify(t *testing.T, user uuid.UUID) {
	t.Helper()
	_, err := b.pool.Exec(context.Background(), `UPDATE users SET email_verified_at = now() WHERE id = $1`, user)
	require.NoError(t, err)
}

// unverifiedUser creates a user who never followed the verification link, with one
// project per name.
func (b *bundle) unverifiedUser(t *testing.T, email string, projects ...string) (pgstore.User, []pgstore.Project) {
	t.Helper()
	ctx := context.Background()
	u, err := pgstore.UpsertUser(ctx, b.pool, "User "+email, email, "x")
	require.NoError(t, err)
	var ps []pgstore.Project
	for _, name := range projects {
		p, err := pgstore.CreateProject(ctx, b.pool, u.ID, name)
		require.NoError(t, err)
		ps = append(ps, p)
	}
	return u, ps
}

// config is the default configuration for this bundle, with short intervals.
func (b *bundle) config(t *testing.T, group string) alerter.Config {
	t.Helper()
	cfg, err := config.Parse[alerter.Config](config.Env{
		"KAFKA_TOPIC":     b.kc.Topic,
		"KAFKA_DLQ_TOPIC": b.kc.DLQTopic,
		"ALERTER_GROUP":   group,
		"CONSUMER_GROUP":  storedGroup,
		"SMTP_HOST":       b.smtp.Host,
		"SMTP_PORT":       strconv.Itoa(b.smtp.Port),
		"SMTP_TLS":        "none",
		"SMTP_TIMEOUT":    "5s",
	})
	require.NoError(t, err)
	cfg.BatchWait = 20 * time.Millisecond
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.StoredPoll = 20 * time.Millisecond
	cfg.ResolveInterval = 50 * time.Millisecond
	cfg.DeliveryInterval = 50 * time.Millisecond
	cfg.RetryMin = 50 * time.Millisecond
	cfg.RetryMax = 200 * time.Millisecond
	cfg.BackoffMax = 300 * time.Millisecond
	cfg.JobTick = 20 * time.Millisecond
	cfg.JobRetry = 200 * time.Millisecond
	cfg.ShutdownTimeout = 2 * time.Second
	require.NoError(t, cfg.Validate())
	return cfg
}

// running is a Service running in a goroutine.
type running struct {
	svc    *alerter.Service
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// start runs an alerter replica (stopped when the test ends); mutate may change its
// dependencies.
func (b *bundle) start(t *testing.T, cfg alerter.Config, mutate func(*alerter.Deps)) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	svc := b.service(t, cfg, r.reg, mutate)
	r.svc = svc
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitFor):
			t.Errorf("alerter did not stop within %s", waitFor)
		}
	})
	return r
}

// service builds an alerter replica without running it (RunJob works without Run);
// mutate may change its dependencies.
func (b *bundle) service(t *testing.T, cfg alerter.Config, reg *prometheus.Registry, mutate func(*alerter.Deps)) *alerter.Service {
	t.Helper()
	deps := alerter.Deps{
		Pool: b.pool, Brokers: b.kc.Brokers,
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registerer: reg, Ready: obs.NewReadiness(), Now: b.clock.Now,
	}
	if mutate != nil {
		mutate(&deps)
	}
	svc, err := alerter.New(cfg, deps)
	require.NoError(t, err)
	return svc
}

// stop cancels Run and returns its result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(waitFor):
		t.Fatalf("Run did not return within %s", waitFor)
		return nil
	}
}

// ev returns an event of project received at at.
func ev(t *testing.T, project uuid.UUID, typ, name string, at time.Time) event.Event {
	t.Helper()
	id, err := uuid.NewV7()
	require.NoError(t, err)
	at = at.UTC().Truncate(event.Precision)
	return event.Event{ID: id, ProjectID: project, Type: typ, Name: name, Payload: []byte(`{"k":1}`), Timestamp: at, ReceivedAt: at}
}

// errorsAt returns n errors of project received at start, start+every, ….
func errorsAt(t *testing.T, project uuid.UUID, n int, start time.Time, every time.Duration) []event.Event {
	t.Helper()
	out := make([]event.Event, n)
	for i := range out {
		out[i] = ev(t, project, event.TypeError, "TypeError: x is undefined", start.Add(time.Duration(i)*every))
	}
	return out
}

// produce writes events as the ingestor does: key = project id, value = canonical JSON.
func (b *bundle) produce(t *testing.T, evs ...event.Event) {
	t.Helper()
	msgs := make([]kafka.Message, len(evs))
	for i, e := range evs {
		msgs[i] = kafka.Message{Key: []byte(e.ProjectID.String()), Value: e.AppendJSON(nil)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, b.writer.WriteMessages(ctx, msgs...))
}

// storeLoop is a stand-in for the consumer (which the alerter's tests cannot import):
// it stores what is produced — dedup gate, events, rollups — in one transaction per
// batch and commits its group's offsets afterwards, as the consumer does.
func (b *bundle) storeLoop(t *testing.T) {
	t.Helper()
	r := kafkax.NewReader(b.kc.Brokers, b.kc.Topic, kafkax.ReaderOptions{
		GroupID: storedGroup, MinBytes: 1, MaxBytes: 8 << 20, MaxWait: 100 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done; _ = r.Close() })
	go func() {
		defer close(done)
		dec := event.NewDecoder(event.DefaultLimits())
		for ctx.Err() == nil {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				continue
			}
			batch := []kafka.Message{m}
			fctx, fcancel := context.WithTimeout(ctx, 20*time.Millisecond)
			for len(batch) < 500 {
				m, err := r.FetchMessage(fctx)
				if err != nil {
					break
				}
				batch = append(batch, m)
			}
			fcancel()
			for ctx.Err() == nil {
				if err := b.store(ctx, dec, batch); err == nil {
					break
				}
			}
			_ = r.CommitMessages(ctx, batch...)
		}
	}()
}

func (b *bundle) store(ctx context.Context, dec *event.Decoder, batch []kafka.Message) error {
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	for _, m := range batch {
		e, err := dec.DecodeMessage(m.Value)
		if err != nil {
			continue
		}
		tag, err := tx.Exec(ctx, `INSERT INTO event_ids (project_id, id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			e.ProjectID, e.ID, e.ReceivedAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			continue
		}
		if _, err := tx.Exec(ctx, `INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			e.ID, e.ProjectID, e.Type, e.Name, string(e.Payload), e.Timestamp, e.ReceivedAt); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO event_rollups AS r (project_id, minute, type, count) VALUES ($1, date_trunc('minute', $2::timestamptz, 'UTC'), $3, 1)
			ON CONFLICT (project_id, minute, type) DO UPDATE SET count = r.count + 1`, e.ProjectID, e.ReceivedAt, e.Type); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// waitLag waits until group has committed everything produced so far.
func (b *bundle) waitLag(t *testing.T, group string) {
	t.Helper()
	var last int64
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lag, err := kafkax.GroupLag(ctx, b.kc.Brokers, group, b.kc.Topic)
		last = lag
		return err == nil && lag == 0
	}, waitFor, pollEvery, "lag of group %s stayed at %d", group, last)
}

func (b *bundle) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// eventually waits until query counts want rows.
func (b *bundle) eventually(t *testing.T, want int, query string, args ...any) {
	t.Helper()
	var last int
	require.Eventually(t, func() bool {
		last = b.count(t, query, args...)
		return last == want
	}, waitFor, pollEvery, "%s: %d, want %d", query, last, want)
}

// waitMessages waits until exactly n messages were delivered to rcpt and returns them.
func (b *bundle) waitMessages(t *testing.T, rcpt string, n int, within time.Duration) []received {
	t.Helper()
	var got []received
	require.Eventually(t, func() bool {
		got = b.smtp.To(rcpt)
		return len(got) >= n
	}, within, pollEvery, "messages to %s", rcpt)
	if len(got) != n {
		var subjects []string
		for _, m := range got {
			subjects = append(subjects, parse(t, m).Subject)
		}
		t.Fatalf("%d messages to %s, want %d: %q", len(got), rcpt, n, subjects)
	}
	return got
}

// counter returns a counter's value (0 when absent).
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) && m.Counter != nil {
				return m.Counter.GetValue()
			}
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
