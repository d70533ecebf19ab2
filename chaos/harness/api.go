package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
)

// APIUser is a user registered through the api (POST /auth/register), with the access
// token of that session. Start the api with API_BCRYPT_COST=4 to keep hashing cheap.
type APIUser struct {
	ID       uuid.UUID
	Email    string
	Password string
	Token    string
}

// RegisterUser registers a new user through the api at apiURL.
func RegisterUser(t testing.TB, apiURL string) APIUser {
	t.Helper()
	u := APIUser{Email: "chaos-" + randomHex(6) + "@pulseboard.test", Password: "chaos-" + randomHex(12)}
	status, body, err := APIRequest(http.MethodPost, apiURL+"/auth/register", "",
		map[string]string{"name": "Chaos", "email": u.Email, "password": u.Password})
	if err != nil || status != http.StatusCreated {
		t.Fatalf("harness: POST /auth/register: %d %v %s", status, err, body)
	}
	var r struct {
		Data struct {
			AccessToken string `json:"accessToken"`
			User        struct {
				ID uuid.UUID `json:"id"`
			} `json:"user"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Data.AccessToken == "" {
		t.Fatalf("harness: POST /auth/register answered %s (%v)", body, err)
	}
	u.ID, u.Token = r.Data.User.ID, r.Data.AccessToken
	return u
}

// Login posts the user's credentials to /auth/login and returns the status (and, on
// 200, the new access token).
func (u APIUser) Login(apiURL string) (int, string, error) {
	status, body, err := APIRequest(http.MethodPost, apiURL+"/auth/login", "",
		map[string]string{"email": u.Email, "password": u.Password})
	if err != nil || status != http.StatusOK {
		return status, "", err
	}
	var r struct {
		Data struct {
			AccessToken string `json:"accessToken"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return status, "", fmt.Errorf("login answer %s: %w", body, err)
	}
	return status, r.Data.AccessToken, nil
}

// APIRequest sends one request (a JSON body when body is not nil, a bearer token when
// token is not empty) with a 30 s timeout and returns the status and body.
func APIRequest(method, url, token string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// GiveProject makes user the owner of the cluster's project p, so that the user's
// live streams may subscribe to it (they are authorised per project).
func (c *Cluster) GiveProject(t testing.TB, p Project, user uuid.UUID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Pool.Exec(ctx, `UPDATE projects SET user_id = $1 WHERE id = $2`, user, p.ID); err != nil {
		t.Fatalf("harness: %v", err)
	}
}

// Ingest sends one event (id, with any key: not recorded in a ledger, see
// Load.SendOne for that) to POST /ingest and returns the status (0 when there was no
// answer).
func Ingest(ingestURL, apiKey string, id uuid.UUID) int {
	return postSingle(&http.Client{Timeout: 30 * time.Second}, ingestURL, apiKey, id)
}
