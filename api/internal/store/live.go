package store

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// The live streams' checks (api/internal/live): whether a stream may open, and, every
// LIVE_REVOCATION_CHECK_INTERVAL, whether the open ones may stay.

// StreamGrant is what opening a live stream checks, read in one query.
type StreamGrant struct {
	// TokensValidAfter: access tokens issued before it are revoked (logout-all).
	TokensValidAfter time.Time
	// OwnsProject: the project is the user's (false for uuid.Nil).
	OwnsProject bool
	// SessionLive: the token's session (refresh-token family) has a token that is not
	// revoked; true for a token without a session.
	SessionLive bool
}

// StreamGrant reads the grant of user for project (uuid.Nil: none) and session
// (uuid.Nil: none); ErrNotFound when the user no longer exists.
func (s *Store) StreamGrant(ctx context.Context, userID, projectID, session uuid.UUID) (StreamGrant, error) {
	var g StreamGrant
	err := s.db.QueryRow(ctx, `
		SELECT u.tokens_valid_after,
		       EXISTS (SELECT 1 FROM projects p WHERE p.id = $2 AND p.user_id = u.id),
		       `+liveSessionSQL("$3")+`
		FROM users u WHERE u.id = $1`, userID, projectID, sessionParam(session)).
		Scan(&g.TokensValidAfter, &g.OwnsProject, &g.SessionLive)
	return g, mapErr("authorising a live stream", err)
}

// StreamState is what the revocation check of open streams reads.
type StreamState struct {
	// TokensValidAfter of each user that still exists.
	TokensValidAfter map[uuid.UUID]time.Time
	// Owner of each project that still exists.
	Owner map[uuid.UUID]uuid.UUID
	// LiveSessions are those of the sessions asked about that have a token not revoked.
	LiveSessions map[uuid.UUID]struct{}
}

// StreamState reads the state of users, projects and sessions in three queries.
func (s *Store) StreamState(ctx context.Context, users, projects, sessions []uuid.UUID) (StreamState, error) {
	st := StreamState{
		TokensValidAfter: make(map[uuid.UUID]time.Time, len(users)),
		Owner:            make(map[uuid.UUID]uuid.UUID, len(projects)),
		LiveSessions:     make(map[uuid.UUID]struct{}, len(sessions)),
	}
	if err := s.eachPair(ctx, `SELECT id, tokens_valid_after FROM users WHERE id = ANY($1)`, users, func(id uuid.UUID, v any) {
		st.TokensValidAfter[id] = *v.(*time.Time)
	}, new(time.Time)); err != nil {
		return st, mapErr("reading users of live streams", err)
	}
	if len(projects) > 0 {
		if err := s.eachPair(ctx, `SELECT id, user_id FROM projects WHERE id = ANY($1)`, projects, func(id uuid.UUID, v any) {
			st.Owner[id] = *v.(*uuid.UUID)
		}, new(uuid.UUID)); err != nil {
			return st, mapErr("reading projects of live streams", err)
		}
	}
	if len(sessions) > 0 {
		if err := s.eachPair(ctx, `SELECT DISTINCT family_id, true FROM refresh_tokens WHERE family_id = ANY($1) AND revoked_at IS NULL`, sessions, func(id uuid.UUID, _ any) {
			st.LiveSessions[id] = struct{}{}
		}, new(bool)); err != nil {
			return st, mapErr("reading sessions of live streams", err)
		}
	}
	return st, nil
}

// eachPair runs a query of ids returning (id, value) rows, calling fn for each with the
// value scanned into into.
func (s *Store) eachPair(ctx context.Context, query string, ids []uuid.UUID, fn func(uuid.UUID, any), into any) error {
	rows, err := s.db.Query(ctx, query, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id, into); err != nil {
			return err
		}
		fn(id, into)
	}
	return rows.Err()
}
