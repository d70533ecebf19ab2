package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/pgstore"
)

// Demo account created by `pulseboard seed` (development only).
const (
	demoName     = "Demo User"
	demoEmail    = "demo@pulseboard.dev"
	demoPassword = "pulseboard-demo"
	demoProject  = "Demo Project"
)

type seedOutput struct {
	User     pgstore.User      `json:"user"`
	Password string            `json:"password"`
	Project  pgstore.Project   `json:"project"`  // the first project, as before -projects existed
	Projects []pgstore.Project `json:"projects"` // all of them, the first included
}

// runSeed creates (or finds) the demo user and its projects ("Demo Project", then "Demo
// Project 2" … with -projects N) and prints them as one JSON object. It is idempotent:
// running it twice prints the same projects and keys.
func runSeed(ctx context.Context, env config.Env, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	n := fs.Int("projects", 1, "number of demo projects (for loadgen -keys)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 {
		return errors.New("seed: -projects must be at least 1")
	}
	cfg, err := config.Parse[Common](env)
	if err != nil {
		return err
	}
	if cfg.Env == "production" {
		return errors.New("seed creates a demo account with a known password; refusing with PULSEBOARD_ENV=production")
	}
	logger, err := newLogger(io.Discard, cfg.LogLevel)
	if err != nil {
		return err
	}
	if err := prepareDatabase(ctx, cfg.DatabaseURL, logger); err != nil {
		return err
	}
	pool, err := pgstore.Open(ctx, cfg.DatabaseURL, pgstore.PoolOptions{ApplicationName: "pulseboard-seed", MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	// Cost 12, the API's cost, so the demo user can log in once the api exists.
	hash, err := bcrypt.GenerateFromPassword([]byte(demoPassword), 12)
	if err != nil {
		return fmt.Errorf("hashing the demo password: %w", err)
	}
	user, err := pgstore.UpsertUser(ctx, pool, demoName, demoEmail, string(hash))
	if err != nil {
		return err
	}
	// The demo address is the operator's own (seed refuses production): verified, so the
	// demo project's alerts are mailed (or logged) with ALERT_REQUIRE_VERIFIED on.
	if _, err := pool.Exec(ctx, `UPDATE users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1`, user.ID); err != nil {
		return fmt.Errorf("verifying the demo user: %w", err)
	}
	out := seedOutput{User: user, Password: demoPassword}
	for i := 1; i <= *n; i++ {
		name := demoProject
		if i > 1 {
			name += " " + strconv.Itoa(i)
		}
		var p pgstore.Project
		err = pool.QueryRow(ctx, `SELECT id, name, api_key, user_id FROM projects WHERE user_id = $1 AND name = $2 ORDER BY created_at LIMIT 1`,
			user.ID, name).Scan(&p.ID, &p.Name, &p.APIKey, &p.UserID)
		if errors.Is(err, pgx.ErrNoRows) {
			p, err = pgstore.CreateProject(ctx, pool, user.ID, name)
		}
		if err != nil {
			return fmt.Errorf("seeding the demo project %q: %w", name, err)
		}
		out.Projects = append(out.Projects, p)
	}
	out.Project = out.Projects[0]
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
