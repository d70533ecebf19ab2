package api

import (
	"net/http"

	"github.com/pulseboard/pulseboard/api/internal/authn"
)

// alertJSON is an alert of the history. Every field before deliveries is unchanged since
// before notification channels (the dashboard and old clients read state: the alert's
// own email delivery); deliveries lists its per-channel deliveries (issue 19 item 3).
type alertJSON struct {
	ID          string         `json:"id"`
	Kind        string         `json:"kind"`
	State       string         `json:"state"`
	WindowStart jsonTime       `json:"windowStart"`
	WindowEnd   jsonTime       `json:"windowEnd"`
	ErrorCount  int32          `json:"errorCount"`
	Threshold   int32          `json:"threshold"`
	Attempts    int32          `json:"attempts"`
	LastError   *string        `json:"lastError"`
	CreatedAt   jsonTime       `json:"createdAt"`
	SentAt      *jsonTime      `json:"sentAt"`
	Deliveries  []deliveryJSON `json:"deliveries"`
}

// deliveryJSON is one channel's delivery of an alert. channelId is null once the channel
// is deleted; target is the recipient address or the redacted URL (scheme://host/…).
type deliveryJSON struct {
	ID             string    `json:"id"`
	ChannelID      *string   `json:"channelId"`
	Kind           string    `json:"kind"`
	Target         string    `json:"target"`
	State          string    `json:"state"`
	Attempts       int32     `json:"attempts"`
	LastError      *string   `json:"lastError"`
	ResponseStatus *int32    `json:"responseStatus"`
	SentAt         *jsonTime `json:"sentAt"`
}

// alerts: GET /projects/{id}/alerts: the alert history, newest first, keyset-paginated,
// each alert with at most API_MAX_CHANNELS_PER_PROJECT deliveries (oldest first).
func (s *Service) alerts(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	limit, err := queryInt(r.URL.Query(), "limit", alertsDefault, 1, alertsMax)
	if err != nil {
		return err
	}
	after, err := decodeCursor(r)
	if err != nil {
		return err
	}
	if err := s.store.CheckOwner(r.Context(), p.UserID, id); err != nil {
		return err
	}
	as, err := s.store.Alerts(r.Context(), id, after, limit+1, s.maxChannels())
	if err != nil {
		return err
	}
	next := ""
	if len(as) > limit {
		as = as[:limit]
		next = encodeCursor(as[limit-1].CreatedAt, as[limit-1].ID)
	}
	out := make([]alertJSON, len(as))
	for i, a := range as {
		out[i] = alertJSON{
			ID: a.ID.String(), Kind: a.Kind, State: a.State,
			WindowStart: jsonTime(a.WindowStart), WindowEnd: jsonTime(a.WindowEnd),
			ErrorCount: a.ErrorCount, Threshold: a.Threshold, Attempts: a.Attempts, LastError: a.LastError,
			CreatedAt: jsonTime(a.CreatedAt), SentAt: optTime(a.SentAt),
			Deliveries: make([]deliveryJSON, len(a.Deliveries)),
		}
		for j, d := range a.Deliveries {
			var ch *string
			if d.ChannelID != nil {
				c := d.ChannelID.String()
				ch = &c
			}
			out[i].Deliveries[j] = deliveryJSON{
				ID: d.ID.String(), ChannelID: ch, Kind: d.Kind, Target: d.Target, State: d.State,
				Attempts: d.Attempts, LastError: d.LastError, ResponseStatus: d.ResponseStatus, SentAt: optTime(d.SentAt),
			}
		}
	}
	b, err := marshal(out)
	if err != nil {
		return err
	}
	writePage(w, b, next)
	return nil
}
