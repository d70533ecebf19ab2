package apikey_test

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// FuzzAPIKey checks the key handling every lookup goes through (ingestor key cache, the
// api's GET /events?apiKey=, project key rotation): Plausible bounds what is looked up at
// all by length alone, HashOf is the SHA-256 of the exact bytes (no normalisation that
// could make two keys one), and the hash's string form is its lower-case hex, 64
// characters, as used in Redis keys. Generated keys are plausible and well-formed.
func FuzzAPIKey(f *testing.F) {
	gen, err := apikey.Generate()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{gen, "", "pb_live_", "1234567", "12345678", strings.Repeat("k", apikey.MaxLen),
		strings.Repeat("k", apikey.MaxLen+1), " " + gen, gen + "\x00", "PB_LIVE_" + gen[8:], "pb_live_\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if got, want := apikey.Plausible(key), len(key) >= 8 && len(key) <= apikey.MaxLen; got != want {
			t.Fatalf("Plausible(%q) = %v", key, got)
		}
		h := apikey.HashOf(key)
		if want := sha256.Sum256([]byte(key)); h != apikey.Hash(want) {
			t.Fatalf("HashOf(%q) is not its SHA-256", key)
		}
		s := h.String()
		raw, err := hex.DecodeString(s)
		if err != nil || len(s) != 64 || strings.ToLower(s) != s || string(raw) != string(h[:]) {
			t.Fatalf("Hash.String() = %q", s)
		}
		if apikey.HashOf(key+"x") == h || apikey.HashOf(strings.ToUpper(key)) == h && strings.ToUpper(key) != key {
			t.Fatalf("two keys share a hash: %q", key)
		}
	})
}

func TestGeneratedKeysAreWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		k, err := apikey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		body, ok := strings.CutPrefix(k, apikey.Prefix)
		if !ok || len(body) != 32 || strings.Trim(body, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") != "" ||
			!apikey.Plausible(k) || seen[k] {
			t.Fatalf("generated key %q", k)
		}
		seen[k] = true
	}
}
