package event

import (
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// storedLengths are the lengths PostgreSQL 15 gives these numbers read back from jsonb
// (length(('{"a":' || n || '}')::jsonb->'a')::text)), measured once.
var storedLengths = []struct {
	n   string
	len int
}{
	{"0", 1}, {"-0", 1}, {"1", 1}, {"-1", 2}, {"10", 2}, {"123.456", 7}, {"-0.0", 3},
	{"0e-5", 7}, {"-0e3", 1}, {"1.50e2", 3}, {"1.5e-3", 6}, {"-0.001e-2", 8}, {"123e-1", 4},
	{"0.05e1", 3}, {"1e308", 309}, {"-1e308", 310}, {"1e-300", 302}, {"-1.5e-300", 304},
	{"1.7976931348623157e308", 309}, {"5e-324", 326}, {"4.9406564584124654e-324", 342},
	{"12345678901234567890", 20}, {"0.1", 3}, {"1E+2", 3}, {"1e0000300", 301},
	{"0.0e1000", 1}, {"0e-1000", 1002}, {"1.000000e3", 8}, {"9.99e-5", 9}, {"-12.5e1", 4},
}

func TestClientNumberGrowth(t *testing.T) {
	t.Parallel()
	for _, c := range storedLengths {
		growth, verdict := clientNumber([]byte(c.n))
		require.Equal(t, numberOK, verdict, c.n)
		require.Equal(t, max(0, c.len-len(c.n)), growth, c.n)
		require.Equal(t, c.len, len(positional(c.n)), c.n)
	}
}

// positional is the text PostgreSQL's numeric gives a JSON number, written independently
// of clientNumber: the digits with the point moved by the exponent, no leading zeros
// before the point, as many digits after it as the literal had minus the exponent.
func positional(n string) string {
	neg := strings.HasPrefix(n, "-")
	n = strings.TrimPrefix(n, "-")
	mant, exp := n, 0
	if i := strings.IndexAny(n, "eE"); i >= 0 {
		mant = n[:i]
		e, err := strconv.Atoi(strings.TrimPrefix(n[i+1:], "+"))
		if err != nil {
			panic(err)
		}
		exp = e
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := intPart + frac
	point := len(intPart) + exp // digits before the point
	var whole, fraction string
	switch {
	case point <= 0:
		whole, fraction = "0", strings.Repeat("0", -point)+digits
	case point >= len(digits):
		whole = digits + strings.Repeat("0", point-len(digits))
	default:
		whole, fraction = digits[:point], digits[point:]
	}
	whole = strings.TrimLeft(whole, "0")
	if whole == "" {
		whole = "0"
	}
	out := whole
	if fraction != "" {
		out += "." + fraction
	}
	if neg && strings.Trim(digits, "0") != "" {
		out = "-" + out
	}
	return out
}

// TestClientNumberMatchesReferences checks random numbers around the edges of the double
// range against strconv.ParseFloat (the verdict) and positional (the growth).
func TestClientNumberMatchesReferences(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	digits := func(n int, leadingZero bool) string {
		var b strings.Builder
		for i := range n {
			c := byte('0' + r.IntN(10))
			if i == 0 && !leadingZero && c == '0' {
				c = '1'
			}
			b.WriteByte(c)
		}
		return b.String()
	}
	for range 200_000 {
		var n string
		if r.IntN(2) == 0 {
			n = "-"
		}
		if r.IntN(3) == 0 {
			n += "0"
		} else {
			n += digits(1+r.IntN(20), false)
		}
		if r.IntN(2) == 0 {
			n += "." + digits(1+r.IntN(30), true)
		}
		if r.IntN(4) != 0 {
			n += []string{"e", "E", "e+", "e-", "E-"}[r.IntN(5)]
			e := []int{r.IntN(10), 290 + r.IntN(40), r.IntN(1100)}[r.IntN(3)]
			n += strconv.Itoa(e)
		}
		growth, verdict := clientNumber([]byte(n))
		f, err := strconv.ParseFloat(n, 64)
		zero := strings.Trim(strings.Map(func(c rune) rune {
			if c >= '0' && c <= '9' {
				return c
			}
			return -1
		}, strings.FieldsFunc(n, func(c rune) bool { return c == 'e' || c == 'E' })[0]), "0") == ""
		switch {
		case len(n) > maxNumberChars:
			require.Equal(t, numberTooLong, verdict, n)
		case err != nil || math.IsInf(f, 0):
			require.Equal(t, numberOverflows, verdict, n)
		case f == 0 && !zero:
			require.Equal(t, numberUnderflows, verdict, n)
		case !storableNumber([]byte(n)):
			require.Equal(t, numberExponent, verdict, n)
		default:
			require.Equal(t, numberOK, verdict, n)
			require.Equal(t, max(0, len(positional(n))-len(n)), growth, n)
		}
		if verdict == numberOK {
			require.True(t, storableNumber([]byte(n)), "a client's number is storable: %s", n)
		}
	}
}
