// Package passwords hashes and verifies account passwords with bcrypt (docs/reliability.md
// promise 17, pitfall X6).
//
//   - Cost 12 by default, so hashes written by the old Node.js backend ($2a$/$2b$, cost
//     12) verify, and new hashes are as strong.
//   - Passwords over 72 bytes are refused (ErrTooLong) before any hashing: bcrypt only
//     reads 72 bytes, and silently truncating would make every longer password that
//     shares the prefix valid.
//   - Hashing is CPU-bound (about 250 ms per core at cost 12), so concurrency is bounded
//     by a semaphore. A caller that cannot get a slot within the configured wait, or
//     finds too many callers already waiting, gets ErrBusy (the api answers 503): a
//     flood of logins degrades to refusals, never to an unbounded queue.
//   - VerifyDummy spends the same work against a fixed hash, so a login for an unknown
//     e-mail takes as long as a wrong password for a known one.
package passwords

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// DefaultCost is the bcrypt cost of new hashes.
const DefaultCost = 12

// MaxBytes is bcrypt's input limit.
const MaxBytes = 72

// Errors.
var (
	ErrTooLong = fmt.Errorf("password is longer than %d bytes", MaxBytes)
	ErrBusy    = errors.New("too many password hashes in progress")
)

// Hasher hashes and verifies passwords with bounded concurrency.
type Hasher struct {
	cost       int
	sem        chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	wait       time.Duration
	dummy      []byte
}

// New returns a Hasher with the given cost, at most concurrency computations at once
// and callers waiting at most wait for a slot (and at most 4×concurrency waiting). It
// computes the dummy hash, which takes one hash's time.
func New(cost, concurrency int, wait time.Duration) (*Hasher, error) {
	if cost < bcrypt.MinCost || cost > bcrypt.MaxCost {
		return nil, fmt.Errorf("bcrypt cost must be between %d and %d, got %d", bcrypt.MinCost, bcrypt.MaxCost, cost)
	}
	if concurrency < 1 {
		return nil, errors.New("password hashing concurrency must be at least 1")
	}
	random := make([]byte, 32)
	_, _ = rand.Read(random)
	dummy, err := bcrypt.GenerateFromPassword(random[:MaxBytes/3], cost)
	if err != nil {
		return nil, fmt.Errorf("computing the dummy hash: %w", err)
	}
	return &Hasher{
		cost:       cost,
		sem:        make(chan struct{}, concurrency),
		maxWaiting: int64(4 * concurrency),
		wait:       wait,
		dummy:      dummy,
	}, nil
}

// Cost is the cost of new hashes.
func (h *Hasher) Cost() int { return h.cost }

// Check reports ErrTooLong for passwords bcrypt cannot hash faithfully.
func Check(password string) error {
	if len(password) > MaxBytes {
		return ErrTooLong
	}
	return nil
}

// Hash returns the bcrypt hash of password.
func (h *Hasher) Hash(ctx context.Context, password string) (string, error) {
	if err := Check(password); err != nil {
		return "", err
	}
	release, err := h.acquire(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	b, err := bcrypt.GenerateFromPassword([]byte(password), h.cost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(b), nil
}

// Verify reports whether password matches hash. A malformed stored hash is a mismatch.
func (h *Hasher) Verify(ctx context.Context, hash, password string) (bool, error) {
	if err := Check(password); err != nil {
		return false, err
	}
	release, err := h.acquire(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil, nil
}

// VerifyDummy does the work of a failed Verify against a hash of the current cost.
func (h *Hasher) VerifyDummy(ctx context.Context, password string) error {
	_, err := h.Verify(ctx, string(h.dummy), password)
	return err
}

// NeedsRehash reports whether a stored hash is weaker than the current cost (hashes
// imported from the old backend, or written before a cost increase).
func (h *Hasher) NeedsRehash(hash string) bool {
	c, err := bcrypt.Cost([]byte(hash))
	return err == nil && c < h.cost
}

func (h *Hasher) acquire(ctx context.Context) (func(), error) {
	select {
	case h.sem <- struct{}{}:
		return func() { <-h.sem }, nil
	default:
	}
	if h.waiting.Add(1) > h.maxWaiting {
		h.waiting.Add(-1)
		return nil, ErrBusy
	}
	defer h.waiting.Add(-1)
	t := time.NewTimer(h.wait)
	defer t.Stop()
	select {
	case h.sem <- struct{}{}:
		return func() { <-h.sem }, nil
	case <-t.C:
		return nil, ErrBusy
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
