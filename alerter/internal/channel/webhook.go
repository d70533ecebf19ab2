package channel

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Webhook POSTs the alert as JSON, signed:
//
//	Content-Type: application/json
//	X-PulseBoard-Delivery: <delivery id>   (the same on every retry: receivers dedupe on it)
//	X-PulseBoard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//
// A receiver recomputes the HMAC over the timestamp, a dot and the raw body with the
// channel's secret, compares in constant time, and refuses timestamps far from its
// clock (replays).
type Webhook struct {
	HTTP *HTTP
	// Now is the signature's clock; time.Now when nil.
	Now func() time.Time
}

// WebhookPayload is the JSON body of a webhook.
type WebhookPayload struct {
	// Type is "alert.threshold" or "alert.resolved".
	Type       string         `json:"type"`
	AlertID    string         `json:"alertId"`
	DeliveryID string         `json:"deliveryId"`
	Project    WebhookProject `json:"project"`
	Kind       string         `json:"kind"`
	Window     WebhookWindow  `json:"window"`
	ErrorCount int            `json:"errorCount"`
	Threshold  int            `json:"threshold"`
	TopErrors  []NameCount    `json:"topErrors"`
	Attempt    int            `json:"attempt"`
}

// WebhookProject names the project.
type WebhookProject struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// WebhookWindow is the alert's window, by receive time (RFC 3339, UTC).
type WebhookWindow struct {
	Start   string `json:"start"`
	End     string `json:"end"`
	Seconds int64  `json:"seconds"`
}

// Payload is n as a webhook body.
func Payload(n Notification) WebhookPayload {
	top := n.TopErrors
	if top == nil {
		top = []NameCount{}
	}
	return WebhookPayload{
		Type: "alert." + n.Kind, AlertID: n.AlertID.String(), DeliveryID: n.DeliveryID.String(),
		Project: WebhookProject{ID: n.ProjectID.String(), Name: n.ProjectName},
		Kind:    n.Kind,
		Window: WebhookWindow{
			Start: n.WindowStart.UTC().Format(time.RFC3339Nano), End: n.WindowEnd.UTC().Format(time.RFC3339Nano),
			Seconds: int64(n.WindowEnd.Sub(n.WindowStart) / time.Second),
		},
		ErrorCount: n.ErrorCount, Threshold: n.Threshold, TopErrors: top, Attempt: n.Attempt,
	}
}

// Sign returns the X-PulseBoard-Signature value of body at t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Send implements Sender.
func (w Webhook) Send(ctx context.Context, t Target, n Notification) (int, error) {
	if len(t.Secret) == 0 {
		return 0, permanent("the webhook channel has no signing secret")
	}
	body, err := json.Marshal(Payload(n))
	if err != nil {
		return 0, permanent("encoding the payload: %w", err)
	}
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-PulseBoard-Delivery", n.DeliveryID.String())
	h.Set("X-PulseBoard-Signature", Sign(t.Secret, body, now()))
	return w.HTTP.Post(ctx, t.URL, body, h)
}
