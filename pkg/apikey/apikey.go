// Package apikey generates project API keys and derives the hash under which they are
// stored, cached and looked up. Only the hash ever leaves the process that received a key
// (Redis cache keys, invalidation messages); keys are never logged.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"math/big"
)

// Prefix marks PulseBoard ingest keys so that secret scanners and humans recognise them.
const Prefix = "pb_live_"

const (
	randomChars = 32 // 32 base62 characters ≈ 190 bits
	alphabet    = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	// MaxLen bounds what is worth looking up; keys of the old backend are shorter.
	MaxLen = 128
)

// Generate returns a new random API key.
func Generate() (string, error) {
	b := make([]byte, 0, len(Prefix)+randomChars)
	b = append(b, Prefix...)
	max := big.NewInt(int64(len(alphabet)))
	for range randomChars {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b = append(b, alphabet[n.Int64()])
	}
	return string(b), nil
}

// Hash is the SHA-256 of a key: what Postgres indexes and caches store.
type Hash [32]byte

// HashOf hashes a key.
func HashOf(key string) Hash { return sha256.Sum256([]byte(key)) }

// String is the lower-case hex form used in Redis keys and invalidation messages.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Plausible reports whether key is worth a lookup at all; anything else is refused
// without touching a cache or the database.
func Plausible(key string) bool { return len(key) >= 8 && len(key) <= MaxLen }
