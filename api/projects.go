package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/authn"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/httperr"
	"github.com/pulseboard/pulseboard/pkg/redisx"
)

const maxProjectNameChars = 200

// projectJSON is the compat project object; the field order is the old backend's, with
// "settings" (new) last.
type projectJSON struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	APIKey    string       `json:"apiKey"`
	UserID    string       `json:"userId"`
	CreatedAt jsonTime     `json:"createdAt"`
	UpdatedAt jsonTime     `json:"updatedAt"`
	Count     countJSON    `json:"_count"`
	Settings  settingsJSON `json:"settings"`
}

type countJSON struct {
	Events int64 `json:"events"`
}

// settingsJSON: null means the service default (ALERT_ERROR_THRESHOLD, …).
type settingsJSON struct {
	AlertThreshold       *int32 `json:"alertThreshold"`
	AlertWindowSeconds   *int32 `json:"alertWindowSeconds"`
	AlertCooldownSeconds *int32 `json:"alertCooldownSeconds"`
	AlertsEnabled        bool   `json:"alertsEnabled"`
	RetentionDays        *int32 `json:"retentionDays"`
	RateLimit            *int32 `json:"rateLimit"` // events/s; null: INGEST_RATE_LIMIT
}

func toProjectJSON(p store.Project) projectJSON {
	return projectJSON{
		ID: p.ID.String(), Name: p.Name, APIKey: p.APIKey, UserID: p.UserID.String(),
		CreatedAt: jsonTime(p.CreatedAt), UpdatedAt: jsonTime(p.UpdatedAt),
		Count: countJSON{Events: p.EventCount},
		Settings: settingsJSON{
			AlertThreshold:       p.Settings.AlertThreshold,
			AlertWindowSeconds:   p.Settings.AlertWindowSeconds,
			AlertCooldownSeconds: p.Settings.AlertCooldownSeconds,
			AlertsEnabled:        p.Settings.AlertsEnabled,
			RetentionDays:        p.Settings.RetentionDays,
			RateLimit:            p.Settings.RateLimit,
		},
	}
}

// projectID parses the {id} path value. A malformed id is answered exactly like
// another user's project: 404 PROJECT_NOT_FOUND.
func projectID(r *http.Request) (uuid.UUID, error) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return uuid.Nil, errProjectNotFound
	}
	return id, nil
}

// createProject: POST /projects (compat).
func (s *Service) createProject(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	f, err := s.decodeObject(w, r)
	if err != nil {
		return err
	}
	if err := f.required("name"); err != nil {
		return err
	}
	name, _, err := f.str("name")
	if err != nil {
		return err
	}
	if err := checkLength("body/name", name, 1, maxProjectNameChars); err != nil {
		return err
	}
	proj, err := s.store.CreateProject(r.Context(), p.UserID, name, s.cfg.MaxProjectsPerUser)
	if errors.Is(err, store.ErrProjectLimit) {
		// Issue 16 item 7: projects are what alert mail is made of.
		return newError(httperr.ProjectLimit, "Project limit reached: an account may have at most "+
			strconv.Itoa(s.cfg.MaxProjectsPerUser)+" projects; delete one first")
	}
	if err != nil {
		return err
	}
	return writeData(w, http.StatusCreated, toProjectJSON(proj))
}

// listProjects: GET /projects (compat), newest first, only the caller's.
func (s *Service) listProjects(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	ps, err := s.store.Projects(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	out := make([]projectJSON, len(ps))
	for i, proj := range ps {
		out[i] = toProjectJSON(proj)
	}
	return writeData(w, http.StatusOK, out)
}

// getProject: GET /projects/{id} (compat).
func (s *Service) getProject(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	proj, err := s.store.Project(r.Context(), p.UserID, id)
	if err != nil {
		return err
	}
	return writeData(w, http.StatusOK, toProjectJSON(proj))
}

// updateProject: PATCH (and PUT) /projects/{id}: the name and the settings, validated
// against the ranges of the database's CHECK constraints (rateLimit: 1–1,000,000
// events/s, narrower than the column's, whose 0 would mean unlimited). Every other field, including
// id, apiKey, userId and timestamps, is ignored (mass assignment, B65).
func (s *Service) updateProject(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	f, err := s.decodeObject(w, r)
	if err != nil {
		return err
	}
	var patch store.Patch
	name, ok, err := f.str("name")
	if err != nil {
		return err
	}
	if ok {
		if err := checkLength("body/name", name, 1, maxProjectNameChars); err != nil {
			return err
		}
		patch.Name = &name
	}
	settings, ok, err := f.object("settings")
	if err != nil {
		return err
	}
	if ok {
		if patch.AlertThreshold, err = settings.optionalInt("alertThreshold", store.MinAlertThreshold, store.MaxAlertThreshold); err != nil {
			return err
		}
		if patch.AlertWindowSeconds, err = settings.optionalInt("alertWindowSeconds", store.MinAlertWindowSeconds, store.MaxAlertWindowSeconds); err != nil {
			return err
		}
		if patch.AlertCooldownSeconds, err = settings.optionalInt("alertCooldownSeconds", store.MinAlertCooldownSeconds, store.MaxAlertCooldownSeconds); err != nil {
			return err
		}
		if patch.AlertsEnabled, err = settings.boolean("alertsEnabled"); err != nil {
			return err
		}
		if patch.RetentionDays, err = settings.optionalInt("retentionDays", store.MinRetentionDays, store.MaxRetentionDays); err != nil {
			return err
		}
		if patch.RateLimit, err = settings.optionalInt("rateLimit", store.MinRateLimit, store.MaxRateLimit); err != nil {
			return err
		}
	}
	proj, err := s.store.UpdateProject(r.Context(), p.UserID, id, patch)
	if err != nil {
		return err
	}
	if patch.RateLimit.Set {
		// The ingestors cache the key's resolution, rate limit included (keycache: local
		// LRU over Redis over Postgres). The same invalidation as a rotation drops it
		// (the Redis entry at once, every ingestor's local entry where the message
		// arrives), so the new limit applies on the next request; where the message is
		// lost, within the cache TTL (60 s).
		s.invalidateKey(r.Context(), apikey.HashOf(proj.APIKey))
	}
	return writeData(w, http.StatusOK, toProjectJSON(proj))
}

// deleteProject: DELETE /projects/{id} (compat). The project, its events, dedup ids,
// rollups and alerts go in one transaction; then every ingestor is told to forget the
// key. If that message is lost, the ingestors' cache TTL (60 s) still bounds how long
// the key works.
func (s *Service) deleteProject(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	h, err := s.store.DeleteProject(r.Context(), p.UserID, id)
	if err != nil {
		return err
	}
	s.invalidateKey(r.Context(), h)
	return writeMessage(w, http.StatusOK, "Project deleted", nil)
}

// deleteEvents: DELETE /projects/{id}/events (compat).
func (s *Service) deleteEvents(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	n, err := s.store.DeleteEvents(r.Context(), p.UserID, id)
	if err != nil {
		return err
	}
	return writeMessage(w, http.StatusOK, "All events deleted", struct {
		DeletedCount int64 `json:"deletedCount"`
	}{n})
}

// rotateKey: POST /projects/{id}/rotate-key. The old key stops working at once on
// every ingestor that gets the invalidation, and within the cache TTL on any other.
func (s *Service) rotateKey(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	proj, old, err := s.store.RotateKey(r.Context(), p.UserID, id)
	if err != nil {
		return err
	}
	s.invalidateKey(r.Context(), old)
	return writeData(w, http.StatusOK, toProjectJSON(proj))
}

// invalidateKey tells every ingestor to drop a key. The database change is committed
// already, so a Redis failure is logged, not returned: the TTL bounds the damage.
func (s *Service) invalidateKey(ctx context.Context, h apikey.Hash) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := redisx.PublishKeyInvalidation(pctx, s.deps.Redis, h); err != nil {
		s.logger.Warn("API key invalidation not published; ingestors drop the key when their cache entry expires",
			"request_id", requestID(ctx), "error", err)
	}
}
