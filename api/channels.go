package api

// Notification channels (issue 19 item 3): where a project's alerts go. Each project has
// channels of three kinds, configured by its owner here and delivered by the alerter
// (one deliveries table and state machine for all kinds, notification_deliveries):
//
//   - email: the project owner's verified address, never another (issue 16 item 7: an
//     account must not be able to aim mail at someone else's address), so an email
//     channel has no URL; a project has at most one. Every new project gets one
//     ("Owner email"), in the transaction that creates it; migration 00006 gave one to
//     every older project.
//   - webhook: an HTTP(S) URL that receives the alert as JSON, the body signed with
//     HMAC-SHA256 under a 32-byte key the api generates. The key is answered once, when
//     generated (create, rotate-secret), as "whsec_" + standard base64 of the 32 bytes
//     (the Svix/Standard Webhooks convention: the HMAC key is the decoded bytes), and
//     never again; the api never reads it back.
//   - slack: a Slack-compatible incoming-webhook URL. Such a URL is itself the secret
//     (whoever has it can post to the channel), so it is answered in full only to the
//     request that sets it (create, or a PATCH that changes it) and otherwise redacted
//     to scheme://host/… as in the delivery log. Webhook URLs are answered in full.
//
// A project has at most API_MAX_CHANNELS_PER_PROJECT channels (409 CHANNEL_LIMIT).
// Unknown and protected fields (id, kind on PATCH, secret, …) are ignored, as the
// project PATCH does.

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/authn"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

const (
	maxChannelNameChars = 100
	maxChannelURLChars  = 2048
	// webhookSecretBytes is the HMAC-SHA256 key size; webhookSecretPrefix marks the
	// key as shown to the owner.
	webhookSecretBytes  = 32
	webhookSecretPrefix = "whsec_"
	// API_MAX_CHANNELS_PER_PROJECT: its default (also taken for 0) and its maximum.
	defaultChannelsPerProject = 10
	maxChannelsPerProject     = 100
)

var errChannelNotFound = newError(httperr.NotFound, "Channel not found")

// channelJSON is a channel as the owner sees it: never the webhook secret.
type channelJSON struct {
	ID        string   `json:"id"`
	ProjectID string   `json:"projectId"`
	Kind      string   `json:"kind"`
	Name      string   `json:"name"`
	URL       *string  `json:"url"` // null for email; a Slack URL redacted but where just set
	Enabled   bool     `json:"enabled"`
	CreatedAt jsonTime `json:"createdAt"`
	UpdatedAt jsonTime `json:"updatedAt"`
}

// channelSecretJSON is the answer that shows a webhook's secret, once.
type channelSecretJSON struct {
	channelJSON
	Secret string `json:"secret"`
}

// toChannelJSON encodes c; fullURL answers a Slack URL unredacted (the request set it).
func toChannelJSON(c store.Channel, fullURL bool) channelJSON {
	u := c.URL
	if u != nil && c.Kind == store.ChannelSlack && !fullURL {
		r := redactURL(*u)
		u = &r
	}
	return channelJSON{
		ID: c.ID.String(), ProjectID: c.ProjectID.String(), Kind: c.Kind, Name: c.Name, URL: u,
		Enabled: c.Enabled, CreatedAt: jsonTime(c.CreatedAt), UpdatedAt: jsonTime(c.UpdatedAt),
	}
}

// redactURL keeps a URL's scheme and host, scheme://host/… (the alerter's form in the
// delivery log, alerter/internal/store.RedactURL: "/…" when there was a path or query).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "…"
	}
	s := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		s += "/…"
	}
	return s
}

func (s *Service) maxChannels() int {
	if s.cfg.MaxChannelsPerProject <= 0 {
		return defaultChannelsPerProject
	}
	return s.cfg.MaxChannelsPerProject
}

// newWebhookSecret returns a new HMAC key and its one-time display form.
func newWebhookSecret() ([]byte, string, error) {
	key := make([]byte, webhookSecretBytes)
	if _, err := rand.Read(key); err != nil {
		return nil, "", err
	}
	return key, webhookSecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// channelID parses the {channelId} path value; a malformed one is not found.
func channelID(r *http.Request) (uuid.UUID, error) {
	id, err := uuid.Parse(r.PathValue("channelId"))
	if err != nil {
		return uuid.Nil, errChannelNotFound
	}
	return id, nil
}

// channelPath parses {id} and {channelId}.
func channelPath(r *http.Request) (uuid.UUID, uuid.UUID, error) {
	pid, err := projectID(r)
	if err != nil {
		return uuid.Nil, uuid.Nil, err
	}
	cid, err := channelID(r)
	return pid, cid, err
}

// channelError maps the store's channel sentinels; store.ErrNotFound (the project) is
// writeError's PROJECT_NOT_FOUND.
func (s *Service) channelError(err error) error {
	switch {
	case errors.Is(err, store.ErrChannelNotFound):
		return errChannelNotFound
	case errors.Is(err, store.ErrChannelLimit):
		return newError(httperr.ChannelLimit, "Channel limit reached: a project may have at most "+
			strconv.Itoa(s.maxChannels())+" notification channels; delete one first")
	case errors.Is(err, store.ErrEmailChannelExists):
		return newError(httperr.ChannelLimit, "The project has an email channel already: mail goes only to the owner's verified address, so a project has at most one")
	case errors.Is(err, store.ErrNoSecret):
		return newError(httperr.BadRequest, "Only webhook channels have a secret")
	}
	return err
}

// channelURL validates the url of a webhook or Slack channel: an absolute http(s) URL
// with a host, without user info or fragment, at most maxChannelURLChars characters.
func channelURL(f fields) (string, error) {
	raw := f.m["url"]
	p := f.path + "/url"
	if string(raw) == "null" {
		return "", invalid(p + " must be string")
	}
	s, _, err := f.str("url")
	if err != nil {
		return "", err
	}
	if err := checkLength(p, s, 1, maxChannelURLChars); err != nil {
		return "", err
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return "", invalid(p + " must not contain spaces or control characters")
		}
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" || u.Hostname() == "" {
		return "", invalid(p + " must be an absolute http or https URL, like https://example.com/hooks/pulseboard")
	}
	if u.User != nil {
		return "", invalid(p + " must not contain user info (user:password@)")
	}
	if strings.Contains(s, "#") { // an unescaped # only ever starts a fragment
		return "", invalid(p + " must not have a fragment")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", invalid(p + " must have a port between 1 and 65535")
		}
	}
	return s, nil
}

// channelEnabled reads an optional boolean "enabled" (null is not a boolean).
func channelEnabled(f fields) (*bool, error) {
	if string(f.m["enabled"]) == "null" {
		return nil, invalid(f.path + "/enabled must be boolean")
	}
	return f.boolean("enabled")
}

// channelName reads an optional name of 1–maxChannelNameChars characters.
func channelName(f fields) (*string, error) {
	if string(f.m["name"]) == "null" {
		return nil, invalid(f.path + "/name must be string")
	}
	name, ok, err := f.str("name")
	if err != nil || !ok {
		return nil, err
	}
	if err := checkLength(f.path+"/name", name, 1, maxChannelNameChars); err != nil {
		return nil, err
	}
	return &name, nil
}

// urlPresent: the body has a url that is not null.
func urlPresent(f fields) bool {
	raw, ok := f.m["url"]
	return ok && string(raw) != "null"
}

var errEmailURL = invalid("body/url must be absent for an email channel: its mail goes only to the project owner's verified address")

// listChannels: GET /projects/{id}/channels, oldest first. No secrets; Slack URLs
// redacted.
func (s *Service) listChannels(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	cs, err := s.store.Channels(r.Context(), p.UserID, id)
	if err != nil {
		return err
	}
	out := make([]channelJSON, len(cs))
	for i, c := range cs {
		out[i] = toChannelJSON(c, false)
	}
	return writeData(w, http.StatusOK, out)
}

// getChannel: GET /projects/{id}/channels/{channelId}.
func (s *Service) getChannel(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	pid, cid, err := channelPath(r)
	if err != nil {
		return err
	}
	c, err := s.store.Channel(r.Context(), p.UserID, pid, cid)
	if err != nil {
		return s.channelError(err)
	}
	return writeData(w, http.StatusOK, toChannelJSON(c, false))
}

// createChannel: POST /projects/{id}/channels {kind, name, url?, enabled?}. A webhook's
// answer carries its new secret, the only time it is shown.
func (s *Service) createChannel(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	f, err := s.decodeObject(w, r)
	if err != nil {
		return err
	}
	if err := f.required("kind", "name"); err != nil {
		return err
	}
	kind, _, err := f.str("kind")
	if err != nil {
		return err
	}
	nc := store.NewChannel{Kind: kind, Enabled: true}
	switch kind {
	case store.ChannelEmail, store.ChannelWebhook, store.ChannelSlack:
	default:
		return invalid("body/kind must be equal to one of the allowed values (email, webhook, slack)")
	}
	name, err := channelName(f)
	if err != nil {
		return err
	}
	nc.Name = *name
	if kind == store.ChannelEmail {
		if urlPresent(f) {
			return errEmailURL
		}
	} else {
		if err := f.required("url"); err != nil {
			return err
		}
		u, err := channelURL(f)
		if err != nil {
			return err
		}
		nc.URL = &u
	}
	enabled, err := channelEnabled(f)
	if err != nil {
		return err
	}
	if enabled != nil {
		nc.Enabled = *enabled
	}
	var shown string
	if kind == store.ChannelWebhook {
		if nc.Secret, shown, err = newWebhookSecret(); err != nil {
			return err
		}
	}
	c, err := s.store.CreateChannel(r.Context(), p.UserID, id, nc, s.maxChannels())
	if err != nil {
		return s.channelError(err)
	}
	if kind == store.ChannelWebhook {
		return writeData(w, http.StatusCreated, channelSecretJSON{toChannelJSON(c, true), shown})
	}
	return writeData(w, http.StatusCreated, toChannelJSON(c, true))
}

// updateChannel: PATCH /projects/{id}/channels/{channelId}: name, url (webhook and
// Slack: replaced, never removed; email: must be absent) and enabled.
func (s *Service) updateChannel(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	pid, cid, err := channelPath(r)
	if err != nil {
		return err
	}
	f, err := s.decodeObject(w, r)
	if err != nil {
		return err
	}
	var patch store.ChannelPatch
	if patch.Name, err = channelName(f); err != nil {
		return err
	}
	if patch.Enabled, err = channelEnabled(f); err != nil {
		return err
	}
	cur, err := s.store.Channel(r.Context(), p.UserID, pid, cid)
	if err != nil {
		return s.channelError(err)
	}
	if _, ok := f.m["url"]; ok {
		if cur.Kind == store.ChannelEmail {
			if urlPresent(f) {
				return errEmailURL
			}
		} else {
			u, err := channelURL(f)
			if err != nil {
				return err
			}
			patch.URL = &u
		}
	}
	if patch.Name == nil && patch.URL == nil && patch.Enabled == nil {
		return writeData(w, http.StatusOK, toChannelJSON(cur, false))
	}
	c, err := s.store.UpdateChannel(r.Context(), p.UserID, pid, cid, patch)
	if err != nil {
		return s.channelError(err)
	}
	return writeData(w, http.StatusOK, toChannelJSON(c, patch.URL != nil))
}

// rotateChannelSecret: POST /projects/{id}/channels/{channelId}/rotate-secret (webhooks
// only): a new secret, answered once; the old one signs nothing from now on.
func (s *Service) rotateChannelSecret(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	pid, cid, err := channelPath(r)
	if err != nil {
		return err
	}
	key, shown, err := newWebhookSecret()
	if err != nil {
		return err
	}
	c, err := s.store.RotateChannelSecret(r.Context(), p.UserID, pid, cid, key)
	if err != nil {
		return s.channelError(err)
	}
	return writeData(w, http.StatusOK, channelSecretJSON{toChannelJSON(c, false), shown})
}

// deleteChannel: DELETE /projects/{id}/channels/{channelId}. The alert history keeps
// the channel's deliveries (channelId null).
func (s *Service) deleteChannel(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	pid, cid, err := channelPath(r)
	if err != nil {
		return err
	}
	if err := s.store.DeleteChannel(r.Context(), p.UserID, pid, cid); err != nil {
		return s.channelError(err)
	}
	return writeMessage(w, http.StatusOK, "Channel deleted", nil)
}
