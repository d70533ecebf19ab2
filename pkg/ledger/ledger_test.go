package ledger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/ledger"
	"github.com/pulseboard/pulseboard/pkg/testenv/pgtest"
)

func TestOutcomesOnlyMoveUp(t *testing.T) {
	l := ledger.New()
	p, a, b, c := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	l.Sent(p, a)
	l.Record(p, a, ledger.Acked)
	l.Record(p, a, ledger.Indeterminate) // a late timeout of an earlier attempt
	l.Sent(p, b)
	l.Record(p, b, ledger.Rejected)
	l.Sent(p, c)
	require.Equal(t, ledger.Counts{Sent: 3, Acked: 1, Rejected: 1, Indeterminate: 1}, l.Counts())

	var buf bytes.Buffer
	require.NoError(t, l.Save(&buf))
	back := ledger.New()
	require.NoError(t, back.Load(&buf))
	require.Equal(t, l.Counts(), back.Counts())
	require.Equal(t, []uuid.UUID{p}, back.Projects())
}

// TestVerifyFindsEveryKindOfFailure stores rows that break each promise and checks that the
// report names each, and that a clean store gives no error.
func TestVerifyFindsEveryKindOfFailure(t *testing.T) {
	ctx := context.Background()
	_, db := pgtest.NewDB(t)
	_, err := db.Exec(ctx, "SELECT pulseboard_ensure_event_partitions(current_date - 1, current_date + 1)")
	require.NoError(t, err)
	project, other := uuid.New(), uuid.New()
	store := func(project, id uuid.UUID) {
		t.Helper()
		_, err := db.Exec(ctx, `INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at)
			VALUES ($1, $2, 'event', 'x', '{}', now(), now())`, id, project)
		require.NoError(t, err)
	}

	l := ledger.New()
	ids := make([]uuid.UUID, 6)
	for i := range ids {
		ids[i] = uuid.New()
		l.Sent(project, ids[i])
	}
	l.Record(project, ids[0], ledger.Acked)
	l.Record(project, ids[1], ledger.Acked)
	l.Record(project, ids[2], ledger.Rejected)
	// ids[3], ids[4]: indeterminate; one stored, one not (both allowed).
	store(project, ids[0])
	store(project, ids[3])
	store(other, uuid.New()) // another project's event is not a phantom

	r, err := ledger.Verify(ctx, db, l)
	require.NoError(t, err)
	require.Error(t, r.Err())
	require.Equal(t, 1, r.Lost, r.String())
	require.Equal(t, []uuid.UUID{ids[1]}, r.LostIDs)
	require.Zero(t, r.Duplicates)
	require.Zero(t, r.Phantoms)
	require.Equal(t, 1, r.IndeterminateStored)

	// Now break every other promise too.
	store(project, ids[1]) // the lost one arrives
	store(project, ids[0]) // a duplicate
	store(project, ids[2]) // a rejected event stored
	phantom := uuid.New()
	store(project, phantom) // never sent
	r, err = ledger.Verify(ctx, db, l)
	require.NoError(t, err)
	require.Zero(t, r.Lost)
	require.Equal(t, 1, r.Duplicates)
	require.Equal(t, []uuid.UUID{ids[0]}, r.DuplicateIDs)
	require.Equal(t, 1, r.Phantoms)
	require.Equal(t, []uuid.UUID{phantom}, r.PhantomIDs)
	require.Equal(t, 1, r.RejectedStored)
	require.ErrorContains(t, r.Err(), "duplicate")
	require.ErrorContains(t, r.Err(), "never sent")
	require.ErrorContains(t, r.Err(), "rejected")

	// A clean ledger: every acked event stored once.
	clean := ledger.New()
	clean.Record(other, uuid.New(), ledger.Indeterminate)
	r, err = ledger.Verify(ctx, db, clean)
	require.NoError(t, err)
	require.Equal(t, 1, r.Phantoms, "the other project's stored event was never in this ledger")
}

// TestSaveWritesWhatEncodingJSONWrites keeps the hand-written line encoder byte-identical to
// json.Encoder over the same values, so older ledgers and other readers stay compatible.
func TestSaveWritesWhatEncodingJSONWrites(t *testing.T) {
	l := ledger.New()
	projects := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i := range 300 {
		p, id := projects[i%3], uuid.Must(uuid.NewV7())
		l.Sent(p, id)
		l.Record(p, id, ledger.Outcome(i%3))
	}
	var got bytes.Buffer
	require.NoError(t, l.Save(&got))

	type line struct {
		ID      uuid.UUID      `json:"id"`
		Project uuid.UUID      `json:"project"`
		Outcome ledger.Outcome `json:"outcome"`
	}
	lines := bytes.Split(bytes.TrimSuffix(got.Bytes(), []byte("\n")), []byte("\n"))
	require.Len(t, lines, 300)
	for _, b := range lines {
		var ln line
		require.NoError(t, json.Unmarshal(b, &ln))
		want, err := json.Marshal(ln)
		require.NoError(t, err)
		require.Equal(t, string(want), string(b))
	}
	back := ledger.New()
	require.NoError(t, back.Load(&got))
	require.Equal(t, ledger.Counts{Sent: 300, Acked: 100, Rejected: 100, Indeterminate: 100}, back.Counts())
	require.ElementsMatch(t, projects, back.Projects())
}

// TestReadsFoldWhatWasAppended reads the ledger between writes: each read folds the log,
// later writes must still raise (never lower) the folded outcomes.
func TestReadsFoldWhatWasAppended(t *testing.T) {
	l := ledger.New()
	p, a := uuid.New(), uuid.New()
	l.Sent(p, a)
	require.Equal(t, ledger.Counts{Sent: 1, Indeterminate: 1}, l.Counts())
	l.Record(p, a, ledger.Acked)
	require.Equal(t, ledger.Counts{Sent: 1, Acked: 1}, l.Counts())
	l.Record(p, a, ledger.Rejected) // lower than acked: ignored
	require.Equal(t, ledger.Counts{Sent: 1, Acked: 1}, l.Counts())

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 1000 {
				id := uuid.New()
				l.Sent(p, id)
				l.Record(p, id, ledger.Outcome(g%3))
			}
		})
	}
	wg.Wait()
	c := l.Counts()
	require.Equal(t, 8001, c.Sent)
	require.Equal(t, 1+2*1000, c.Acked) // g = 2 and 5
}

func BenchmarkRecord(b *testing.B) {
	l := ledger.New()
	p := uuid.New()
	ids := make([]uuid.UUID, b.N)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7())
	}
	b.ResetTimer()
	for i := range b.N {
		l.Sent(p, ids[i])
		l.Record(p, ids[i], ledger.Acked)
	}
}
