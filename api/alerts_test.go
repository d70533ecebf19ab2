package api_test

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// GET /projects/{id}/alerts: the alert history newest first, paginated.
func TestAlertsHistory(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Alerted")
	p := c.createProject("Alerts")
	pid := p["id"].(string)
	base := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Hour)
	ctx := context.Background()
	var ids []string
	for i := range 7 {
		id := uuid.New()
		ids = append([]string{id.String()}, ids...)
		state, sentAt, lastErr := "sent", any(base.Add(time.Duration(i)*time.Minute+time.Second)), any(nil)
		if i == 6 {
			state, sentAt, lastErr = "pending", nil, "smtp: 421 try later"
		}
		_, err := b.pool.Exec(ctx, `INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold, state, attempts, last_error, recipient, created_at, sent_at)
			VALUES ($1, $2, 'threshold', $3, $4, $5, 10, $6, 1, $7, 'owner@example.com', $8, $9)`,
			id, pid, base.Add(time.Duration(i)*time.Minute-time.Minute), base.Add(time.Duration(i)*time.Minute), 10+i, state, lastErr, base.Add(time.Duration(i)*time.Minute), sentAt)
		require.NoError(t, err)
	}
	r := c.do("GET", "/projects/"+pid+"/alerts?limit=4", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	m := r.json(t)
	data := m["data"].([]any)
	require.Len(t, data, 4)
	first := data[0].(map[string]any)
	require.Equal(t, map[string]any{
		"id": ids[0], "kind": "threshold", "state": "pending",
		"windowStart": base.Add(5 * time.Minute).Format(event.TimeLayout), "windowEnd": base.Add(6 * time.Minute).Format(event.TimeLayout),
		"errorCount": 16.0, "threshold": 10.0, "attempts": 1.0, "lastError": "smtp: 421 try later",
		"createdAt": base.Add(6 * time.Minute).Format(event.TimeLayout), "sentAt": nil,
		"deliveries": []any{},
	}, first)
	require.Equal(t, base.Add(5*time.Minute+time.Second).Format(event.TimeLayout), data[1].(map[string]any)["sentAt"])
	next := m["nextCursor"].(string)
	r = c.do("GET", "/projects/"+pid+"/alerts?limit=4&cursor="+url.QueryEscape(next), nil)
	m = r.json(t)
	data = m["data"].([]any)
	require.Len(t, data, 3)
	require.Nil(t, m["nextCursor"])
	for i, d := range data {
		require.Equal(t, ids[4+i], d.(map[string]any)["id"])
	}
	c.do("GET", "/projects/"+pid+"/alerts?limit="+strconv.Itoa(201), nil).requireError(t, 400, "VALIDATION_FAILED", "querystring/limit must be <= 200")
}

// insertAlert inserts an alert of the project (created at createdAt) and returns its id.
func (b *bundle) insertAlert(projectID string, createdAt time.Time) string {
	b.t.Helper()
	id := uuid.NewString()
	_, err := b.pool.Exec(context.Background(), `INSERT INTO alerts (id, project_id, kind, window_start, window_end, error_count, threshold, state, attempts, recipient, created_at)
		VALUES ($1, $2, 'threshold', $3, $3, 12, 10, 'pending', 0, 'owner@example.com', $3)`, id, projectID, createdAt)
	require.NoError(b.t, err)
	return id
}

// delivery is a notification_deliveries row inserted by a test.
type delivery struct {
	id, alertID         string
	channelID           *string
	kind, target, state string
	attempts            int
	lastError           *string
	responseStatus      *int
	createdAt           time.Time
	sentAt              *time.Time
}

func (b *bundle) insertDelivery(d delivery) {
	b.t.Helper()
	_, err := b.pool.Exec(context.Background(), `INSERT INTO notification_deliveries
		(id, alert_id, channel_id, kind, target, state, attempts, last_error, response_status, created_at, sent_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		d.id, d.alertID, d.channelID, d.kind, d.target, d.state, d.attempts, d.lastError, d.responseStatus, d.createdAt, d.sentAt)
	require.NoError(b.t, err)
}

func ptr[T any](v T) *T { return &v }

// Each alert of the history carries its per-channel deliveries, oldest first, beside
// its unchanged fields; a deleted channel's delivery stays, with channelId null; at most
// API_MAX_CHANNELS_PER_PROJECT per alert.
func TestAlertsHistoryWithDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, withEnv("API_MAX_CHANNELS_PER_PROJECT", "3"))
	c, a := b.newUser("Delivered")
	pid := c.createProject("Deliveries")["id"].(string)
	base := "/projects/" + pid + "/channels"
	emailID := channelList(t, c.do("GET", base, nil))[0]["id"].(string)
	hookID := c.do("POST", base, map[string]any{"kind": "webhook", "name": "w", "url": "https://hooks.example.com/in/secret-path"}).data(t)["id"].(string)
	slackID := c.do("POST", base, map[string]any{"kind": "slack", "name": "s", "url": "https://hooks.slack.com/services/T/B/X"}).data(t)["id"].(string)

	t0 := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Hour)
	older := b.insertAlert(pid, t0)
	newer := b.insertAlert(pid, t0.Add(time.Minute))
	bare := b.insertAlert(pid, t0.Add(2*time.Minute)) // no deliveries (e.g. from before 00006)
	sent := t0.Add(time.Minute + 2*time.Second)
	ids := []string{uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()}
	b.insertDelivery(delivery{id: ids[0], alertID: newer, channelID: &emailID, kind: "email", target: a.email, state: "sent",
		attempts: 1, createdAt: t0.Add(time.Minute), sentAt: &sent})
	b.insertDelivery(delivery{id: ids[1], alertID: newer, channelID: &hookID, kind: "webhook", target: "https://hooks.example.com/…", state: "failed",
		attempts: 5, lastError: ptr("HTTP 500 from the webhook"), responseStatus: ptr(500), createdAt: t0.Add(time.Minute + time.Millisecond)})
	b.insertDelivery(delivery{id: ids[2], alertID: newer, channelID: &slackID, kind: "slack", target: "https://hooks.slack.com/…", state: "pending",
		attempts: 1, lastError: ptr("timeout"), createdAt: t0.Add(time.Minute + 2*time.Millisecond)})
	b.insertDelivery(delivery{id: ids[3], alertID: older, channelID: &hookID, kind: "webhook", target: "https://hooks.example.com/…", state: "sent",
		attempts: 1, responseStatus: ptr(204), createdAt: t0, sentAt: &sent})
	// The webhook channel is deleted: its deliveries stay, channelId null.
	require.Equal(t, http.StatusOK, c.do("DELETE", base+"/"+hookID, nil).status)

	r := c.do("GET", "/projects/"+pid+"/alerts", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	data := r.json(t)["data"].([]any)
	require.Len(t, data, 3)
	al := func(i int) map[string]any { return data[i].(map[string]any) }
	require.Equal(t, bare, al(0)["id"])
	require.Equal(t, []any{}, al(0)["deliveries"])
	// The fields the dashboard and old clients read are all still there.
	for _, k := range []string{"id", "kind", "state", "windowStart", "windowEnd", "errorCount", "threshold", "attempts", "lastError", "createdAt", "sentAt"} {
		require.Contains(t, al(1), k)
	}
	require.Equal(t, "pending", al(1)["state"])
	sentAt := sent.Format(event.TimeLayout)
	require.Equal(t, []any{
		map[string]any{"id": ids[0], "channelId": emailID, "kind": "email", "target": a.email, "state": "sent", "attempts": 1.0,
			"lastError": nil, "responseStatus": nil, "sentAt": sentAt},
		map[string]any{"id": ids[1], "channelId": nil, "kind": "webhook", "target": "https://hooks.example.com/…", "state": "failed", "attempts": 5.0,
			"lastError": "HTTP 500 from the webhook", "responseStatus": 500.0, "sentAt": nil},
		map[string]any{"id": ids[2], "channelId": slackID, "kind": "slack", "target": "https://hooks.slack.com/…", "state": "pending", "attempts": 1.0,
			"lastError": "timeout", "responseStatus": nil, "sentAt": nil},
	}, al(1)["deliveries"])
	require.Equal(t, []any{
		map[string]any{"id": ids[3], "channelId": nil, "kind": "webhook", "target": "https://hooks.example.com/…", "state": "sent", "attempts": 1.0,
			"lastError": nil, "responseStatus": 204.0, "sentAt": sentAt},
	}, al(2)["deliveries"])

	// Pagination keeps each alert's deliveries with it.
	r = c.do("GET", "/projects/"+pid+"/alerts?limit=1&cursor="+url.QueryEscape(encodeTestCursor(t, c, pid)), nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	page := r.json(t)["data"].([]any)
	require.Len(t, page, 1)
	require.Equal(t, newer, page[0].(map[string]any)["id"])
	require.Len(t, page[0].(map[string]any)["deliveries"], 3)

	// Bounded: past the cap (rows of deleted channels, a cap lowered since), the oldest
	// API_MAX_CHANNELS_PER_PROJECT are answered.
	for i := range 3 {
		b.insertDelivery(delivery{id: uuid.NewString(), alertID: newer, kind: "webhook", target: "https://gone.example.com/…", state: "failed",
			attempts: 1, createdAt: t0.Add(2*time.Minute + time.Duration(i)*time.Millisecond)})
	}
	require.Equal(t, 6, b.count(`SELECT count(*) FROM notification_deliveries WHERE alert_id = $1`, newer))
	ds := c.do("GET", "/projects/"+pid+"/alerts", nil).json(t)["data"].([]any)[1].(map[string]any)["deliveries"].([]any)
	require.Len(t, ds, 3)
	for i, d := range ds {
		require.Equal(t, ids[i], d.(map[string]any)["id"])
	}

	// Someone else's project: 404, nothing of it shown.
	other, _ := b.newUser("Nosy")
	other.do("GET", "/projects/"+pid+"/alerts", nil).requireError(t, 404, "PROJECT_NOT_FOUND", "Project not found")
}

// encodeTestCursor returns the cursor that follows the first alert of the project's
// history (from a page of one).
func encodeTestCursor(t *testing.T, c *client, pid string) string {
	t.Helper()
	r := c.do("GET", "/projects/"+pid+"/alerts?limit=1", nil)
	require.Equal(t, http.StatusOK, r.status, "body: %s", r.body)
	return r.json(t)["nextCursor"].(string)
}
