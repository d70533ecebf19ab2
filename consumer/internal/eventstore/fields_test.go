package eventstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// The field table of pkg/event and the migrations must agree: a field added to the table
// without its column (or with another type) fails here, before any COPY does.
func TestEventColumnsMatchFieldTable(t *testing.T) {
	t.Parallel()
	tb := setup(t, 0)
	rows, err := tb.pool.Query(context.Background(), `
		SELECT column_name, data_type, is_nullable = 'YES'
		FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'events'`)
	require.NoError(t, err)
	type col struct {
		typ      string
		nullable bool
	}
	got := map[string]col{}
	for rows.Next() {
		var name string
		var c col
		require.NoError(t, rows.Scan(&name, &c.typ, &c.nullable))
		got[name] = c
	}
	require.NoError(t, rows.Err())
	types := map[event.Kind]string{
		event.KindUUID: "uuid", event.KindType: "text", event.KindName: "text", event.KindObject: "jsonb",
		event.KindTime: "timestamp with time zone", event.KindLabel: "text",
	}
	for i := range event.Fields {
		f := &event.Fields[i]
		c, ok := got[f.Column]
		require.True(t, ok, "field %s: no column events.%s (a migration in migrations/sql must add it)", f.Wire, f.Column)
		require.Equal(t, types[f.Kind], c.typ, "events.%s", f.Column)
		require.Equal(t, f.Nullable, c.nullable, "events.%s nullable", f.Column)
		delete(got, f.Column)
	}
	require.Empty(t, got, "events columns that no field of pkg/event's table declares")
}

// Labels are stored in their columns; unset ones are NULL.
func TestStoreLabels(t *testing.T) {
	t.Parallel()
	tb := setup(t, 1)
	s := New(tb.pool, Options{})
	evs := makeEvents(t, tb.projects[0], 3, time.Now())
	evs[0].Labels = event.Labels{"1.2.3", "production", "sess-1", "user-1"}
	evs[1].Labels[event.LabelSessionID] = "sess-2"
	res, err := s.Store(context.Background(), evs)
	require.NoError(t, err)
	require.Equal(t, 3, res.Count(Stored))
	for i, ev := range evs {
		var release, env, session, user *string
		require.NoError(t, tb.pool.QueryRow(context.Background(),
			`SELECT release, environment, session_id, user_id FROM events WHERE project_id = $1 AND id = $2`,
			ev.ProjectID, ev.ID).Scan(&release, &env, &session, &user))
		got := event.Labels{}
		for l, p := range []*string{release, env, session, user} {
			if p != nil {
				require.NotEmpty(t, *p, "event %d: an unset label is NULL, never ''", i)
				got[l] = *p
			}
		}
		require.Equal(t, ev.Labels, got, "event %d", i)
	}
}
