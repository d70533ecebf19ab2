package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// Project is a project as its owner sees it.
type Project struct {
	ID         uuid.UUID
	Name       string
	APIKey     string
	UserID     uuid.UUID
	CreatedAt  time.Time
	UpdatedAt  time.Time
	EventCount int64 // from event_rollups
	Settings   Settings
}

// Settings are the per-project overrides; nil means "the service default".
type Settings struct {
	AlertThreshold       *int32
	AlertWindowSeconds   *int32
	AlertCooldownSeconds *int32
	AlertsEnabled        bool
	RetentionDays        *int32
	// RateLimit is the ingest limit in events/s (projects.rate_limit, read by the
	// ingestor's key resolution); nil means INGEST_RATE_LIMIT.
	RateLimit *int32
}

// Setting ranges, identical to the CHECK constraints of migrations/sql/00001_core.sql.
const (
	MinAlertThreshold, MaxAlertThreshold             = 1, 1_000_000
	MinAlertWindowSeconds, MaxAlertWindowSeconds     = 10, 86_400
	MinAlertCooldownSeconds, MaxAlertCooldownSeconds = 60, 604_800
	MinRetentionDays, MaxRetentionDays               = 1, 3650
	// The column admits 0 (unlimited, the ingestor's meaning); the API offers 1 and up.
	MinRateLimit, MaxRateLimit = 1, 1_000_000
)

const projectColumns = `p.id, p.name, p.api_key, p.user_id, p.created_at, p.updated_at,
	COALESCE((SELECT sum(r.count) FROM event_rollups r WHERE r.project_id = p.id), 0)::bigint,
	p.alert_threshold, p.alert_window_seconds, p.alert_cooldown_seconds, p.alerts_enabled, p.retention_days, p.rate_limit`

func scanProject(row interface{ Scan(...any) error }) (Project, error) {
	var p Project
	err := row.Scan(&p.ID, &p.Name, &p.APIKey, &p.UserID, &p.CreatedAt, &p.UpdatedAt, &p.EventCount,
		&p.Settings.AlertThreshold, &p.Settings.AlertWindowSeconds, &p.Settings.AlertCooldownSeconds,
		&p.Settings.AlertsEnabled, &p.Settings.RetentionDays, &p.Settings.RateLimit)
	return p, err
}

// ErrProjectLimit: the user has the maximum number of projects already.
var ErrProjectLimit = errors.New("project limit reached")

// CreateProject creates a project with a new API key and its owner-email notification
// channel; ErrProjectLimit when the user has maxProjects already (0: no limit). The
// user's row is locked while counting, so concurrent creations of one user cannot pass
// the limit together.
func (s *Store) CreateProject(ctx context.Context, userID uuid.UUID, name string, maxProjects int) (Project, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Project{}, err
	}
	key, err := apikey.Generate()
	if err != nil {
		return Project{}, fmt.Errorf("generating API key: %w", err)
	}
	h := apikey.HashOf(key)
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return Project{}, mapErr("creating project", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if maxProjects > 0 {
		// Lock first, count in a later statement: in READ COMMITTED each statement takes
		// a new snapshot, so the count sees the projects of the transaction that held
		// the lock before us (a count in the locking statement would not).
		var one, n int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE`, userID).Scan(&one); err != nil {
			return Project{}, mapErr("creating project", err)
		}
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM projects WHERE user_id = $1`, userID).Scan(&n); err != nil {
			return Project{}, mapErr("creating project", err)
		}
		if n >= maxProjects {
			return Project{}, ErrProjectLimit
		}
	}
	p, err := scanProject(tx.QueryRow(ctx, `
		WITH p AS (
			INSERT INTO projects (id, user_id, name, api_key, api_key_hash) VALUES ($1, $2, $3, $4, $5)
			RETURNING *
		)
		SELECT `+projectColumns+` FROM p`, id, userID, name, key, h[:]))
	if err != nil {
		return Project{}, mapErr("creating project", err)
	}
	// Issue 19 item 3: alert mail is a channel; every project starts with it.
	if err := insertOwnerEmailChannel(ctx, tx, id); err != nil {
		return Project{}, mapErr("creating project", err)
	}
	return p, mapErr("creating project", tx.Commit(ctx))
}

// Projects lists the user's projects, newest first.
func (s *Store) Projects(ctx context.Context, userID uuid.UUID) ([]Project, error) {
	rows, err := s.db.Query(ctx, `SELECT `+projectColumns+` FROM projects p WHERE p.user_id = $1 ORDER BY p.created_at DESC, p.id DESC`, userID)
	if err != nil {
		return nil, mapErr("listing projects", err)
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Project, error) { return scanProject(r) })
	if err != nil {
		return nil, mapErr("listing projects", err)
	}
	return ps, nil
}

// Project returns one of the user's projects; ErrNotFound if it does not exist or
// belongs to someone else.
func (s *Store) Project(ctx context.Context, userID, id uuid.UUID) (Project, error) {
	p, err := scanProject(s.db.QueryRow(ctx, `SELECT `+projectColumns+` FROM projects p WHERE p.id = $1 AND p.user_id = $2`, id, userID))
	return p, mapErr("reading project", err)
}

// ProjectIDByKeyHash resolves an API key hash (the compat GET /events?apiKey=…).
func (s *Store) ProjectIDByKeyHash(ctx context.Context, h apikey.Hash) (uuid.UUID, error) {
	var id uuid.UUID
	err := s.db.QueryRow(ctx, `SELECT id FROM projects WHERE api_key_hash = $1`, h[:]).Scan(&id)
	return id, mapErr("looking up API key", err)
}

// CheckOwner returns nil if the project exists and is the user's, else ErrNotFound.
func (s *Store) CheckOwner(ctx context.Context, userID, id uuid.UUID) error {
	var one int
	err := s.db.QueryRow(ctx, `SELECT 1 FROM projects WHERE id = $1 AND user_id = $2`, id, userID).Scan(&one)
	return mapErr("checking project owner", err)
}

// OptionalInt is a PATCH value: absent (Set false), null (Set, Value nil) or a number.
type OptionalInt struct {
	Set   bool
	Value *int32
}

// Patch is a partial update of a project; nil or unset fields are left alone.
type Patch struct {
	Name                 *string
	AlertThreshold       OptionalInt
	AlertWindowSeconds   OptionalInt
	AlertCooldownSeconds OptionalInt
	AlertsEnabled        *bool
	RetentionDays        OptionalInt
	RateLimit            OptionalInt
}

func (p Patch) empty() bool {
	return p.Name == nil && !p.AlertThreshold.Set && !p.AlertWindowSeconds.Set && !p.AlertCooldownSeconds.Set &&
		p.AlertsEnabled == nil && !p.RetentionDays.Set && !p.RateLimit.Set
}

// UpdateProject applies a validated patch to one of the user's projects.
func (s *Store) UpdateProject(ctx context.Context, userID, id uuid.UUID, patch Patch) (Project, error) {
	if patch.empty() {
		return s.Project(ctx, userID, id)
	}
	p, err := scanProject(s.db.QueryRow(ctx, `
		WITH p AS (
			UPDATE projects SET
				name                   = COALESCE($3, name),
				alert_threshold        = CASE WHEN $4 THEN $5 ELSE alert_threshold END,
				alert_window_seconds   = CASE WHEN $6 THEN $7 ELSE alert_window_seconds END,
				alert_cooldown_seconds = CASE WHEN $8 THEN $9 ELSE alert_cooldown_seconds END,
				alerts_enabled         = COALESCE($10, alerts_enabled),
				retention_days         = CASE WHEN $11 THEN $12 ELSE retention_days END,
				rate_limit             = CASE WHEN $13 THEN $14 ELSE rate_limit END,
				updated_at             = now()
			WHERE id = $1 AND user_id = $2
			RETURNING *
		)
		SELECT `+projectColumns+` FROM p`, id, userID, patch.Name,
		patch.AlertThreshold.Set, patch.AlertThreshold.Value,
		patch.AlertWindowSeconds.Set, patch.AlertWindowSeconds.Value,
		patch.AlertCooldownSeconds.Set, patch.AlertCooldownSeconds.Value,
		patch.AlertsEnabled,
		patch.RetentionDays.Set, patch.RetentionDays.Value,
		patch.RateLimit.Set, patch.RateLimit.Value))
	return p, mapErr("updating project", err)
}

// RotateKey gives one of the user's projects a new API key and returns the project and
// the hash of the old key, which the caller must invalidate in every ingestor's cache.
func (s *Store) RotateKey(ctx context.Context, userID, id uuid.UUID) (Project, apikey.Hash, error) {
	var old apikey.Hash
	key, err := apikey.Generate()
	if err != nil {
		return Project{}, old, fmt.Errorf("generating API key: %w", err)
	}
	h := apikey.HashOf(key)
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return Project{}, old, mapErr("rotating API key", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var oldHash []byte
	if err := tx.QueryRow(ctx, `SELECT api_key_hash FROM projects WHERE id = $1 AND user_id = $2 FOR UPDATE`, id, userID).Scan(&oldHash); err != nil {
		return Project{}, old, mapErr("rotating API key", err)
	}
	copy(old[:], oldHash)
	p, err := scanProject(tx.QueryRow(ctx, `
		WITH p AS (
			UPDATE projects SET api_key = $3, api_key_hash = $4, updated_at = now()
			WHERE id = $1 AND user_id = $2
			RETURNING *
		)
		SELECT `+projectColumns+` FROM p`, id, userID, key, h[:]))
	if err != nil {
		return Project{}, old, mapErr("rotating API key", err)
	}
	return p, old, mapErr("rotating API key", tx.Commit(ctx))
}

// DeleteProject deletes one of the user's projects with its events, dedup ids, rollups
// and alerts (events have no foreign key: they are partitioned) in one transaction, and
// returns the hash of its API key for invalidation.
func (s *Store) DeleteProject(ctx context.Context, userID, id uuid.UUID) (apikey.Hash, error) {
	var h apikey.Hash
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return h, mapErr("deleting project", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var keyHash []byte
	// Lock the row first so a concurrent rotation or second delete waits for us.
	if err := tx.QueryRow(ctx, `SELECT api_key_hash FROM projects WHERE id = $1 AND user_id = $2 FOR UPDATE`, id, userID).Scan(&keyHash); err != nil {
		return h, mapErr("deleting project", err)
	}
	copy(h[:], keyHash)
	for _, q := range []string{
		`DELETE FROM events WHERE project_id = $1`,
		`DELETE FROM event_ids WHERE project_id = $1`,
		`DELETE FROM event_rollups WHERE project_id = $1`,
		`DELETE FROM alerts WHERE project_id = $1`,
		`DELETE FROM projects WHERE id = $1`,
	} {
		if _, err := tx.Exec(ctx, q, id); err != nil {
			return h, mapErr("deleting project", err)
		}
	}
	return h, mapErr("deleting project", tx.Commit(ctx))
}

// DeleteEvents deletes every stored event of one of the user's projects and its
// rollups, and returns how many events were deleted. The dedup ids (event_ids) are kept
// on purpose: a Kafka replay or a client retry of a deleted event must not bring it back.
func (s *Store) DeleteEvents(ctx context.Context, userID, id uuid.UUID) (int64, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return 0, mapErr("deleting events", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var one int
	// FOR SHARE: the project cannot be deleted or moved while we delete its events.
	if err := tx.QueryRow(ctx, `SELECT 1 FROM projects WHERE id = $1 AND user_id = $2 FOR SHARE`, id, userID).Scan(&one); err != nil {
		return 0, mapErr("deleting events", err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM events WHERE project_id = $1`, id)
	if err != nil {
		return 0, mapErr("deleting events", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM event_rollups WHERE project_id = $1`, id); err != nil {
		return 0, mapErr("deleting events", err)
	}
	return tag.RowsAffected(), mapErr("deleting events", tx.Commit(ctx))
}
