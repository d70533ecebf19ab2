package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// KeyProject is what ingest needs to know about the project behind an API key.
type KeyProject struct {
	ID uuid.UUID `json:"id"`
	// RateLimit is the project's events/s override; nil means the service default.
	RateLimit *int `json:"rateLimit,omitempty"`
}

// ProjectByKeyHash resolves an API key hash; ErrNotFound when no project has it.
func ProjectByKeyHash(ctx context.Context, db *pgxpool.Pool, h apikey.Hash) (KeyProject, error) {
	var p KeyProject
	err := db.QueryRow(ctx, "SELECT id, rate_limit FROM projects WHERE api_key_hash = $1", h[:]).Scan(&p.ID, &p.RateLimit)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, ErrNotFound
	}
	if err != nil {
		return p, fmt.Errorf("looking up API key: %w", err)
	}
	return p, nil
}

// User is an account.
type User struct {
	ID    uuid.UUID `json:"id"`
	Name  string    `json:"name"`
	Email string    `json:"email"`
}

// Project is a project with its API key.
type Project struct {
	ID     uuid.UUID `json:"id"`
	Name   string    `json:"name"`
	APIKey string    `json:"apiKey"`
	UserID uuid.UUID `json:"userId"`
}

// UpsertUser creates the user with this (normalised) email or returns the existing one.
func UpsertUser(ctx context.Context, db *pgxpool.Pool, name, email, passwordHash string) (User, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return User{}, err
	}
	u := User{}
	err = db.QueryRow(ctx, `
		INSERT INTO users (id, name, email, password_hash) VALUES ($1, $2, $3, $4)
		ON CONFLICT (lower(email)) DO UPDATE SET updated_at = users.updated_at
		RETURNING id, name, email`, id, name, email, passwordHash).Scan(&u.ID, &u.Name, &u.Email)
	if err != nil {
		return User{}, fmt.Errorf("upserting user: %w", err)
	}
	return u, nil
}

// CreateProject creates a project with a new API key.
func CreateProject(ctx context.Context, db *pgxpool.Pool, userID uuid.UUID, name string) (Project, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Project{}, err
	}
	key, err := apikey.Generate()
	if err != nil {
		return Project{}, fmt.Errorf("generating API key: %w", err)
	}
	h := apikey.HashOf(key)
	if _, err := db.Exec(ctx, `INSERT INTO projects (id, user_id, name, api_key, api_key_hash) VALUES ($1, $2, $3, $4, $5)`,
		id, userID, name, key, h[:]); err != nil {
		return Project{}, fmt.Errorf("creating project: %w", err)
	}
	return Project{ID: id, Name: name, APIKey: key, UserID: userID}, nil
}
