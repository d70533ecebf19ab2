package passwords

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// Hashes written by the old Node.js backend (bcryptjs, $2b$, cost 12) and by other
// bcrypt implementations ($2a$) verify unchanged; new hashes have cost 12 by default.
// (Each cost-12 operation takes seconds under -race, so there are few.)
func TestOldBackendHashesVerifyAndDefaultCostIs12(t *testing.T) {
	t.Parallel()
	require.Equal(t, 12, DefaultCost)
	h, err := New(DefaultCost, 2, time.Minute)
	require.NoError(t, err)
	cost, err := bcrypt.Cost(h.dummy) // made by the same GenerateFromPassword call as Hash
	require.NoError(t, err)
	require.Equal(t, 12, cost)
	require.Equal(t, 12, h.Cost())
	for pw, hash := range map[string]string{
		"correct horse battery":   "$2b$12$548MLfU7fxyjTEkbWdDjmO.mrPgz8e/phb9SXAyhGaHazJmHRc5Fu", // bcryptjs 2.4.3
		"Tr0ub4dor&3 old backend": "$2b$12$yH5uCRk6jE2elT5Q6X13GeeX5irXqVqmUu1syFu9CajIwlSwaMsVy", // bcryptjs 3
		"legacy-2a-password":      "$2a$12$y8V.kd5QUD/tMgQX4ngtE.rnZOxUpx56KFX5bKpvCHvrafSL4M71q", // x/crypto/bcrypt
	} {
		ok, err := h.Verify(context.Background(), hash, pw)
		require.NoError(t, err)
		require.True(t, ok, hash)
		require.False(t, h.NeedsRehash(hash))
	}
	ok, err := h.Verify(context.Background(), "$2a$12$y8V.kd5QUD/tMgQX4ngtE.rnZOxUpx56KFX5bKpvCHvrafSL4M71q", "legacy-2a-password!")
	require.NoError(t, err)
	require.False(t, ok)
	require.True(t, h.NeedsRehash("$2a$10$"+strings.Repeat("a", 53)), "weaker old hashes are upgraded at login")
}

// X6/B60: more than 72 bytes is refused before hashing (it never waits for a slot,
// never truncates); a malformed stored hash is a mismatch.
func TestTooLongIsRefusedBeforeHashing(t *testing.T) {
	t.Parallel()
	h, err := New(4, 1, time.Hour)
	require.NoError(t, err)
	h.sem <- struct{}{} // every slot busy: anything that tried to hash would block
	start := time.Now()
	_, err = h.Hash(context.Background(), strings.Repeat("p", 73))
	require.ErrorIs(t, err, ErrTooLong)
	_, err = h.Verify(context.Background(), "$2a$04$x", strings.Repeat("é", 37))
	require.ErrorIs(t, err, ErrTooLong)
	require.Less(t, time.Since(start), time.Second)
	<-h.sem
	ok, err := h.Verify(context.Background(), "not a bcrypt hash", "password")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, h.VerifyDummy(context.Background(), "password"))
}

// Concurrency is bounded: with every slot taken, a caller waits at most the configured
// wait and gets ErrBusy; a cancelled caller gets its context's error.
func TestBoundedConcurrency(t *testing.T) {
	t.Parallel()
	h, err := New(4, 1, 20*time.Millisecond)
	require.NoError(t, err)
	h.sem <- struct{}{}
	_, err = h.Hash(context.Background(), "password")
	require.ErrorIs(t, err, ErrBusy)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h2, err := New(4, 1, time.Hour)
	require.NoError(t, err)
	h2.sem <- struct{}{}
	_, err = h2.Verify(ctx, "$2a$04$x", "password")
	require.True(t, errors.Is(err, context.Canceled))
	// Too many waiters are refused at once.
	h2.waiting.Store(h2.maxWaiting)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	_, err = h2.Hash(ctx2, "password")
	require.ErrorIs(t, err, ErrBusy, "refused at once, not after waiting")
}
