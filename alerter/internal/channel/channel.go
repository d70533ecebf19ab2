// Package channel holds the alerter's HTTP notification channels (a generic webhook and
// a Slack-compatible incoming webhook) behind one Sender interface, the HTTP client they
// share (timeouts, no redirects, bounded answers, the SSRF guard) and the outcome
// classification the delivery loop records. Email is the alerter's own path (verified
// recipients, the per-recipient rate, SMTP): internal/mail.
//
// A new HTTP channel kind is one file here (a Sender) plus its line in Registry; see
// docs/contributing.md "Adding a notification channel" for the rest (the kind in the
// schema's CHECK constraints and in the api's validation).
package channel

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
)

// NameCount is an error name and how often it occurred in the alert's window.
type NameCount struct {
	Name  string `json:"name"`
	Count int64  `json:"count"`
}

// Notification is an alert as every channel sends it.
type Notification struct {
	AlertID, DeliveryID, ProjectID uuid.UUID
	ProjectName                    string
	// Kind: threshold or resolved.
	Kind                   string
	WindowStart, WindowEnd time.Time
	ErrorCount, Threshold  int
	Cooldown               time.Duration
	TopErrors              []NameCount
	// Attempt is this attempt's number, from 1.
	Attempt int
}

// Target is where a delivery goes: the channel's URL and (webhook) signing secret.
type Target struct {
	URL    string
	Secret []byte
}

// Sender sends a notification to one channel kind. It returns the HTTP status of the
// answer (0: none) and nil for a delivered notification, or an error: *Error says
// whether retrying may help; any other error is retried.
type Sender interface {
	Send(ctx context.Context, t Target, n Notification) (status int, err error)
}

// Registry returns the HTTP channel kinds' senders, by notification_channels.kind.
func Registry(h *HTTP) map[string]Sender {
	return map[string]Sender{
		"webhook": Webhook{HTTP: h},
		"slack":   Slack{HTTP: h},
	}
}

// Kinds returns the kinds of Registry, sorted: the bounded values of the metrics' kind
// label, with email.
func Kinds() []string {
	kinds := slices.Collect(maps.Keys(Registry(nil)))
	slices.Sort(kinds)
	return kinds
}

// Error is a failed delivery attempt.
type Error struct {
	// Status is the HTTP status of the answer, 0 when there was none.
	Status int
	// Permanent: retrying cannot help (other 4xx, a refused address, a bad URL).
	Permanent bool
	// RetryAfter is the receiver's Retry-After (429, 503), 0 when absent.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// permanent returns a permanent *Error.
func permanent(format string, args ...any) error {
	return &Error{Permanent: true, Err: fmt.Errorf(format, args...)}
}

// Classify returns what err means for the delivery: permanent or not, the retry-after,
// the HTTP status.
func Classify(err error) (perm bool, retryAfter time.Duration, status int) {
	var e *Error
	if errors.As(err, &e) {
		return e.Permanent, e.RetryAfter, e.Status
	}
	return false, 0, 0
}
