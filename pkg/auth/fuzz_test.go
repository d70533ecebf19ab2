package auth_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"hash"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/pkg/auth"
)

// The fuzz tests use a fixed secret so that committed corpus entries stay meaningful.
var fuzzSecret = []byte("pulseboard-fuzz-secret-0123456789abcdef")

const (
	fuzzUser = "0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b"
	// fuzzClaims is a valid claim set (exp in 2100, iat in 2026), as Issue writes them.
	fuzzClaims = `{"id":"` + fuzzUser + `","email":"ada@example.com","sub":"` + fuzzUser +
		`","iss":"pulseboard","aud":["pulseboard-api"],"exp":4102444800,"iat":1767225600,"jti":"0190a6b2-0000-7000-8000-000000000001"}`
	fuzzHeader = `{"alg":"HS256","typ":"JWT"}`
)

func fuzzTokens(f *testing.F) *auth.Tokens {
	tokens, err := auth.NewTokens(fuzzSecret, 100*365*24*time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	return tokens
}

// FuzzVerifyToken feeds arbitrary strings to Verify. Whatever it accepts must be
// exactly what a correct HS256 verifier accepts (docs/reliability.md promise 15, J1-J5): three
// segments, a header whose alg is exactly HS256, an HMAC-SHA256 under our secret over
// the first two segments, exp present and not past, our issuer and audience, a UUID
// subject, at most MaxTokenBytes, and the claims returned are the ones signed.
func FuzzVerifyToken(f *testing.F) {
	tokens := fuzzTokens(f)
	valid := signToken(fuzzHeader, fuzzClaims, 0)
	for _, s := range []string{
		valid,
		valid + ".",
		valid[:len(valid)-1],
		strings.Replace(valid, ".", "..", 1),
		signToken(`{"alg":"none"}`, fuzzClaims, 2),
		signToken(`{"alg":"HS512"}`, fuzzClaims, 4),
		"Bearer " + valid,
		strings.Repeat(".", 4000),
		strings.Repeat("a.", 2048),
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		before := time.Now()
		c, err := tokens.Verify(raw)
		if err != nil {
			if err != auth.ErrInvalidToken {
				t.Fatalf("Verify returned %v, not ErrInvalidToken", err)
			}
			return
		}
		checkAccepted(t, raw, c, before)
	})
}

// FuzzVerifySigned signs fuzzer-chosen headers and claims in several ways (correctly,
// with another key, unsigned, with HS384/HS512 under our key, over other bytes,
// re-encoded, with a fourth segment) so that the fuzzer explores the claim and
// algorithm checks behind a valid signature, which it could never forge by mutation.
func FuzzVerifySigned(f *testing.F) {
	tokens := fuzzTokens(f)
	for _, h := range []string{fuzzHeader, `{"alg":"HS256"}`, `{"alg":"none","typ":"JWT"}`, `{"alg":"HS384"}`,
		`{"alg":"RS256"}`, `{"alg":"hs256"}`, `{"alg":"HS256","kid":"other"}`, `{"alg":["HS256"]}`, `{"typ":"JWT"}`} {
		for mode := range uint8(8) {
			f.Add([]byte(h), []byte(fuzzClaims), mode)
		}
	}
	for _, c := range []string{
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":"pulseboard-api","exp":4102444800}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["pulseboard-api"]}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["pulseboard-api"],"exp":"4102444800"}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["pulseboard-api"],"exp":1000000000}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["other"],"exp":4102444800}`,
		`{"sub":"` + fuzzUser + `","iss":"other","aud":["pulseboard-api"],"exp":4102444800}`,
		`{"sub":"admin","iss":"pulseboard","aud":["pulseboard-api"],"exp":4102444800}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["pulseboard-api"],"exp":4102444800,"iat":4102444000}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["pulseboard-api"],"exp":4102444800,"nbf":4102444000}`,
		`{"sub":"` + fuzzUser + `","iss":"pulseboard","aud":["pulseboard-api"],"exp":4102444800.5,"id":7}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(fuzzHeader), []byte(c), uint8(0))
	}
	f.Fuzz(func(t *testing.T, header, claims []byte, mode uint8) {
		raw := signToken(string(header), string(claims), mode)
		before := time.Now()
		c, err := tokens.Verify(raw)
		if err != nil {
			return
		}
		checkAccepted(t, raw, c, before)
	})
}

// signToken builds header.claims.signature; mode picks how it is signed.
func signToken(header, claims string, mode uint8) string {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims))
	mac := func(h func() hash.Hash, key []byte, data string) []byte {
		m := hmac.New(h, key)
		m.Write([]byte(data))
		return m.Sum(nil)
	}
	switch mode % 8 {
	case 0:
		return input + "." + enc.EncodeToString(mac(sha256.New, fuzzSecret, input))
	case 1:
		return input + "." + enc.EncodeToString(mac(sha256.New, []byte("another-secret-of-at-least-32-bytes!!"), input))
	case 2:
		return input + "."
	case 3:
		return input + "." + enc.EncodeToString(mac(sha512.New384, fuzzSecret, input))
	case 4:
		return input + "." + enc.EncodeToString(mac(sha512.New, fuzzSecret, input))
	case 5:
		return input + "." + enc.EncodeToString(mac(sha256.New, fuzzSecret, input+"."))
	case 6:
		return input + "." + base64.StdEncoding.EncodeToString(mac(sha256.New, fuzzSecret, input))
	default:
		return input + "." + enc.EncodeToString(mac(sha256.New, fuzzSecret, input)) + ".x"
	}
}

// checkAccepted is the reference verifier, applied to a token Verify accepted.
func checkAccepted(t *testing.T, raw string, c auth.Claims, before time.Time) {
	t.Helper()
	if len(raw) > auth.MaxTokenBytes {
		t.Fatalf("accepted a token of %d bytes", len(raw))
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("accepted a token with %d segments: %q", len(parts), raw)
	}
	dec := base64.RawURLEncoding
	header, err1 := dec.DecodeString(parts[0])
	claims, err2 := dec.DecodeString(parts[1])
	sig, err3 := dec.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("accepted a token whose segments are not base64url: %q", raw)
	}
	m := hmac.New(sha256.New, fuzzSecret)
	m.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(m.Sum(nil), sig) {
		t.Fatalf("accepted a token without a valid HS256 signature under our secret: %q", raw)
	}
	var h struct {
		Alg any `json:"alg"`
	}
	if json.Unmarshal(header, &h) != nil || h.Alg != "HS256" {
		t.Fatalf("accepted a token whose header alg is not HS256: %s", header)
	}
	cl, ok := registeredClaims(claims)
	if !ok {
		t.Fatalf("accepted a token whose claims are not a JSON object: %s", claims)
	}
	// golang-jwt reads a NumericDate through json.Number, which also takes a string
	// holding a number ("exp":"4102444800"). We never issue that, and only a token with
	// our signature gets this far, so that leniency is allowed here.
	num := func(name string) (float64, bool) {
		var n json.Number
		switch v := cl[name].(type) {
		case json.Number:
			n = v
		case string:
			n = json.Number(v)
		default:
			return 0, false
		}
		f, err := n.Float64()
		return f, err == nil
	}
	const leeway = 30
	exp, ok := num("exp")
	if !ok || exp < float64(before.Unix())-leeway-1 {
		t.Fatalf("accepted a token without a current exp: %s", claims)
	}
	for _, name := range []string{"iat", "nbf"} {
		if _, present := cl[name]; !present {
			continue
		}
		if v, ok := num(name); !ok || v > float64(time.Now().Unix())+leeway+1 {
			t.Fatalf("accepted a token with %s in the future: %s", name, claims)
		}
	}
	if cl["iss"] != auth.Issuer {
		t.Fatalf("accepted a token from issuer %v", cl["iss"])
	}
	audOK := cl["aud"] == auth.AccessAudience
	if list, ok := cl["aud"].([]any); ok {
		for _, a := range list {
			audOK = audOK || a == auth.AccessAudience
		}
	}
	if !audOK {
		t.Fatalf("accepted a token for audience %v", cl["aud"])
	}
	sub, _ := cl["sub"].(string)
	if _, err := uuid.Parse(sub); err != nil || c.Subject != sub {
		t.Fatalf("accepted subject %q (claims say %v)", c.Subject, cl["sub"])
	}
	if _, err := c.UserID(); err != nil {
		t.Fatalf("accepted claims without a user id: %+v", c)
	}
}

// registeredClaims reads the claims checked above the way golang-jwt does, through
// encoding/json into a struct: keys match field names case-insensitively ("eXp" is exp;
// only a token with our signature gets this far, and we never issue such keys), and
// the last matching key in the document wins.
func registeredClaims(claims []byte) (map[string]any, bool) {
	d := json.NewDecoder(bytes.NewReader(claims))
	d.UseNumber()
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	out := map[string]any{}
	for d.More() {
		tok, err := d.Token()
		key, isKey := tok.(string)
		var v any
		if err != nil || !isKey || d.Decode(&v) != nil {
			return nil, false
		}
		for _, name := range []string{"exp", "iat", "nbf", "iss", "aud", "sub"} {
			if strings.EqualFold(key, name) {
				out[name] = v
			}
		}
	}
	return out, true
}
