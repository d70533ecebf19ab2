package store

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Channel kinds (notification_channels.kind, migrations/sql/00006_notification_channels.sql).
const (
	ChannelEmail   = "email"
	ChannelWebhook = "webhook"
	ChannelSlack   = "slack"
)

// OwnerEmailChannelName is the name of the email channel every project gets: at its
// creation (CreateProject) and, for projects older than migration 00006, from that
// migration's backfill.
const OwnerEmailChannelName = "Owner email"

// Channel is a notification channel of a project. The webhook secret is never read back
// by the api: it is shown once, when generated (CreateChannel, RotateChannelSecret).
type Channel struct {
	ID        uuid.UUID
	ProjectID uuid.UUID
	Kind      string
	Name      string
	// URL: the webhook's or Slack-compatible hook's address; nil for email (the
	// project owner's verified address).
	URL       *string
	Enabled   bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Sentinels of the channel operations.
var (
	// ErrChannelNotFound: the project is the user's but has no such channel.
	ErrChannelNotFound = errors.New("channel not found")
	// ErrChannelLimit: the project has the maximum number of channels already.
	ErrChannelLimit = errors.New("channel limit reached")
	// ErrEmailChannelExists: the project has an email channel already (there is one
	// recipient, the owner: a second channel would only send every mail twice).
	ErrEmailChannelExists = errors.New("email channel exists")
	// ErrNoSecret: only webhook channels have a secret.
	ErrNoSecret = errors.New("channel has no secret")
)

const channelColumns = `c.id, c.project_id, c.kind, c.name, c.url, c.enabled, c.created_at, c.updated_at`

func scanChannel(row interface{ Scan(...any) error }) (Channel, error) {
	var c Channel
	err := row.Scan(&c.ID, &c.ProjectID, &c.Kind, &c.Name, &c.URL, &c.Enabled, &c.CreatedAt, &c.UpdatedAt)
	return c, err
}

// insertOwnerEmailChannel gives a new project its email channel, in the transaction
// that creates the project.
func insertOwnerEmailChannel(ctx context.Context, tx pgx.Tx, projectID uuid.UUID) error {
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO notification_channels (id, project_id, kind, name) VALUES ($1, $2, 'email', $3)`,
		id, projectID, OwnerEmailChannelName)
	return err
}

// lockOwnedProject locks one of the user's projects (FOR NO KEY UPDATE: channel
// creations of the project serialise on it, and it cannot be deleted meanwhile);
// ErrNotFound if it is missing or someone else's.
func lockOwnedProject(ctx context.Context, tx pgx.Tx, userID, projectID uuid.UUID) error {
	var one int
	return tx.QueryRow(ctx, `SELECT 1 FROM projects WHERE id = $1 AND user_id = $2 FOR NO KEY UPDATE`, projectID, userID).Scan(&one)
}

// NewChannel is a validated channel to create. Secret is set for webhooks only.
type NewChannel struct {
	Kind    string
	Name    string
	URL     *string
	Secret  []byte
	Enabled bool
}

// CreateChannel adds a channel to one of the user's projects: ErrNotFound if the project
// is missing or someone else's, ErrChannelLimit when it has maxChannels already,
// ErrEmailChannelExists for a second email channel. The project's row is locked while
// counting, so concurrent creations cannot pass the limit together.
func (s *Store) CreateChannel(ctx context.Context, userID, projectID uuid.UUID, nc NewChannel, maxChannels int) (Channel, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Channel{}, err
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return Channel{}, mapErr("creating channel", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Lock first, count in a later statement (READ COMMITTED: the count's snapshot then
	// sees what the previous lock holder committed).
	if err := lockOwnedProject(ctx, tx, userID, projectID); err != nil {
		return Channel{}, mapErr("creating channel", err)
	}
	var n, emails int
	if err := tx.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE kind = 'email') FROM notification_channels WHERE project_id = $1`,
		projectID).Scan(&n, &emails); err != nil {
		return Channel{}, mapErr("creating channel", err)
	}
	if maxChannels > 0 && n >= maxChannels {
		return Channel{}, ErrChannelLimit
	}
	if nc.Kind == ChannelEmail && emails > 0 {
		return Channel{}, ErrEmailChannelExists
	}
	c, err := scanChannel(tx.QueryRow(ctx, `
		WITH c AS (
			INSERT INTO notification_channels (id, project_id, kind, name, url, secret, enabled)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			RETURNING *
		)
		SELECT `+channelColumns+` FROM c`, id, projectID, nc.Kind, nc.Name, nc.URL, nc.Secret, nc.Enabled))
	if err != nil {
		return Channel{}, mapErr("creating channel", err)
	}
	return c, mapErr("creating channel", tx.Commit(ctx))
}

// Channels lists the channels of one of the user's projects, oldest first; ErrNotFound
// if the project is missing or someone else's.
func (s *Store) Channels(ctx context.Context, userID, projectID uuid.UUID) ([]Channel, error) {
	if err := s.CheckOwner(ctx, userID, projectID); err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, `SELECT `+channelColumns+` FROM notification_channels c
		WHERE c.project_id = $1 ORDER BY c.created_at, c.id`, projectID)
	if err != nil {
		return nil, mapErr("listing channels", err)
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Channel, error) { return scanChannel(r) })
	if err != nil {
		return nil, mapErr("listing channels", err)
	}
	return cs, nil
}

// channelNotFound tells, after a channel query found nothing, whether the project
// (ErrNotFound) or only the channel (ErrChannelNotFound) is missing for this user.
func (s *Store) channelNotFound(ctx context.Context, userID, projectID uuid.UUID) error {
	if err := s.CheckOwner(ctx, userID, projectID); err != nil {
		return err
	}
	return ErrChannelNotFound
}

// ChannelPatch is a validated partial update; nil fields are left alone.
type ChannelPatch struct {
	Name    *string
	URL     *string
	Enabled *bool
}

// UpdateChannel applies a non-empty patch to a channel of one of the user's projects. The
// caller has checked the patch against the channel's kind (Channel first); a URL cannot
// be removed, only replaced.
func (s *Store) UpdateChannel(ctx context.Context, userID, projectID, channelID uuid.UUID, p ChannelPatch) (Channel, error) {
	c, err := scanChannel(s.db.QueryRow(ctx, `
		WITH c AS (
			UPDATE notification_channels c SET
				name       = COALESCE($4::text, c.name),
				url        = COALESCE($5::text, c.url),
				enabled    = COALESCE($6::boolean, c.enabled),
				updated_at = now()
			FROM projects p
			WHERE c.id = $3 AND c.project_id = $2 AND p.id = c.project_id AND p.user_id = $1
			RETURNING c.*
		)
		SELECT `+channelColumns+` FROM c`, userID, projectID, channelID, p.Name, p.URL, p.Enabled))
	if errors.Is(err, pgx.ErrNoRows) {
		return Channel{}, s.channelNotFound(ctx, userID, projectID)
	}
	return c, mapErr("updating channel", err)
}

// Channel returns one channel of one of the user's projects.
func (s *Store) Channel(ctx context.Context, userID, projectID, channelID uuid.UUID) (Channel, error) {
	c, err := scanChannel(s.db.QueryRow(ctx, `SELECT `+channelColumns+` FROM notification_channels c
		JOIN projects p ON p.id = c.project_id
		WHERE c.id = $3 AND c.project_id = $2 AND p.user_id = $1`, userID, projectID, channelID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Channel{}, s.channelNotFound(ctx, userID, projectID)
	}
	return c, mapErr("reading channel", err)
}

// RotateChannelSecret replaces a webhook channel's secret; ErrNoSecret for other kinds.
func (s *Store) RotateChannelSecret(ctx context.Context, userID, projectID, channelID uuid.UUID, secret []byte) (Channel, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return Channel{}, mapErr("rotating channel secret", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var kind string
	err = tx.QueryRow(ctx, `SELECT c.kind FROM notification_channels c JOIN projects p ON p.id = c.project_id
		WHERE c.id = $3 AND c.project_id = $2 AND p.user_id = $1 FOR UPDATE OF c`, userID, projectID, channelID).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return Channel{}, s.channelNotFound(ctx, userID, projectID)
	}
	if err != nil {
		return Channel{}, mapErr("rotating channel secret", err)
	}
	if kind != ChannelWebhook {
		return Channel{}, ErrNoSecret
	}
	c, err := scanChannel(tx.QueryRow(ctx, `
		WITH c AS (
			UPDATE notification_channels SET secret = $2, updated_at = now() WHERE id = $1 RETURNING *
		)
		SELECT `+channelColumns+` FROM c`, channelID, secret))
	if err != nil {
		return Channel{}, mapErr("rotating channel secret", err)
	}
	return c, mapErr("rotating channel secret", tx.Commit(ctx))
}

// DeleteChannel deletes a channel of one of the user's projects. Its deliveries stay in
// the alert history (channel_id becomes NULL).
func (s *Store) DeleteChannel(ctx context.Context, userID, projectID, channelID uuid.UUID) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM notification_channels c USING projects p
		WHERE c.id = $3 AND c.project_id = $2 AND p.id = c.project_id AND p.user_id = $1`, userID, projectID, channelID)
	if err != nil {
		return mapErr("deleting channel", err)
	}
	if tag.RowsAffected() == 0 {
		return s.channelNotFound(ctx, userID, projectID)
	}
	return nil
}
