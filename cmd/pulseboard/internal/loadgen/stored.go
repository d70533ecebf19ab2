package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// lookupProjects maps API keys to their projects' ids in Postgres (by the key's hash, as
// the ingestor looks them up).
func lookupProjects(ctx context.Context, db *pgxpool.Pool, keys []string) (map[string]uuid.UUID, error) {
	m := make(map[string]uuid.UUID, len(keys))
	for _, k := range keys {
		h := apikey.HashOf(k)
		var id uuid.UUID
		err := db.QueryRow(ctx, `SELECT id FROM projects WHERE api_key_hash = $1`, h[:]).Scan(&id)
		if err == pgx.ErrNoRows {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("looking up the projects of the API keys: %w", err)
		}
		m[k] = id
	}
	return m, nil
}

// probeProjects finds the keys' projects by sending each key one event to the compat POST
// /ingest, whose 202 answer is the stored event with its projectId. The probes are
// recorded in the ledger as acknowledged: verify expects them stored like the others.
func probeProjects(ctx context.Context, base string, keys []string, l *ledger.Ledger) (map[string]uuid.UUID, error) {
	hc := &http.Client{Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	m := make(map[string]uuid.UUID, len(keys))
	for i, k := range keys {
		id := uuid.Must(uuid.NewV7())
		body, _ := json.Marshal(map[string]any{"apiKey": k, "type": "event", "name": "loadgen.probe",
			"payload": map[string]any{"probe": true}, "eventId": id})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/ingest", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("probing key #%d for its project: %w", i+1, err)
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
		var out struct {
			Data struct {
				ProjectID uuid.UUID `json:"projectId"`
			} `json:"data"`
		}
		if resp.StatusCode != http.StatusAccepted || json.Unmarshal(b, &out) != nil || out.Data.ProjectID == uuid.Nil {
			return nil, fmt.Errorf("probing key #%d for its project: HTTP %d %s (give -db to look the projects up instead)",
				i+1, resp.StatusCode, bytes.TrimSpace(b[:min(len(b), 200)]))
		}
		m[k] = out.Data.ProjectID
		l.Record(out.Data.ProjectID, id, ledger.Acked)
	}
	return m, nil
}

// storedPoll is how often the sampler asks Postgres which sampled events are stored: the
// resolution of the ingest → stored latency.
const storedPoll = 20 * time.Millisecond

// storedMaxPending bounds the sampled events waiting to be seen in Postgres; past it new
// samples are skipped (counted), so the poll stays cheap for the database under test.
const storedMaxPending = 2000

type sample struct {
	project uuid.UUID
	id      uuid.UUID
	t0      time.Time
}

// storedSampler polls event_ids (the consumer's dedup table, written in the transaction
// that stores the event) for a sample of acknowledged events and records how long after
// their send time they became visible.
type storedSampler struct {
	db      *pgxpool.Pool
	lat     hist
	mu      sync.Mutex
	pending []sample
	sampled int64
	skipped int64
	errs    int64
}

// add queues an acknowledged event for polling.
func (s *storedSampler) add(project, id uuid.UUID, t0 time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) >= storedMaxPending {
		s.skipped++
		return
	}
	s.sampled++
	s.pending = append(s.pending, sample{project: project, id: id, t0: t0})
}

func (s *storedSampler) outstanding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// run polls until ctx ends.
func (s *storedSampler) run(ctx context.Context) {
	t := time.NewTicker(storedPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.poll(ctx)
	}
}

func (s *storedSampler) poll(ctx context.Context) {
	s.mu.Lock()
	batch := append([]sample(nil), s.pending...)
	s.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	byProject := map[uuid.UUID][]uuid.UUID{}
	for _, x := range batch {
		byProject[x.project] = append(byProject[x.project], x.id)
	}
	found := map[uuid.UUID]bool{}
	for p, ids := range byProject {
		rows, err := s.db.Query(ctx, `SELECT id FROM event_ids WHERE project_id = $1 AND id = ANY($2)`, p, ids)
		if err == nil {
			var id uuid.UUID
			_, err = pgx.ForEachRow(rows, []any{&id}, func() error { found[id] = true; return nil })
		}
		if err != nil {
			if ctx.Err() == nil {
				s.mu.Lock()
				s.errs++
				s.mu.Unlock()
			}
			return
		}
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.pending[:0]
	for _, x := range s.pending {
		if found[x.id] {
			s.lat.add(now.Sub(x.t0))
		} else {
			kept = append(kept, x)
		}
	}
	s.pending = kept
}
