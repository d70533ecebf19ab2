package event

import (
	"math"
	"strconv"

	"github.com/valyala/fastjson"
)

// Numbers in events.
//
// A client's number must be an IEEE-754 double, which is what JavaScript (the
// dashboard) reads: finite (1e1000 and -1e400 are ±Infinity there) and not a non-zero
// value that rounds to 0 (1e-400). Precision is not required: 12345678901234567890
// is accepted and read, rounded, as 12345678901234567000, as JSON.parse reads it.
// Numbers are also at most maxNumberChars long and their exponent within ±1000, which
// PostgreSQL's numeric stores.
//
// PostgreSQL writes jsonb numbers out in positional notation: 1e300 comes back as 301
// digits and 1e-300 as 302 characters. So that reading events back stays bounded by
// the size of what was accepted (6 events of 9,000 × 1e1000 once answered 54 MB), the
// growth of every number is counted (Decoder.NumberGrowth) and the ingestor bounds the
// event's encoding plus that growth by Limits.MaxEventBytes.
//
// Kafka messages (DecodeMessage) are only held to what PostgreSQL stores: the consumer
// must never dead-letter an event an ingestor accepted, older ones included.

// maxNumberChars bounds the text of a number.
const maxNumberChars = 128

// storableNumber reports whether a JSON number (already syntax-checked) fits PostgreSQL's
// numeric, which jsonb uses: bounded length and a decimal exponent within ±1000.
func storableNumber(n []byte) bool {
	if len(n) > maxNumberChars {
		return false
	}
	for i, c := range n {
		if c != 'e' && c != 'E' {
			continue
		}
		exp := 0
		for _, c := range n[i+1:] {
			if c == '-' || c == '+' {
				continue
			}
			exp = exp*10 + int(c-'0')
			if exp > 1000 {
				return false
			}
		}
		return true
	}
	return true
}

// Why a client's number is refused.
const (
	numberOK = iota
	numberTooLong
	numberOverflows  // ±Infinity as a double, or beyond numeric's exponent
	numberUnderflows // a non-zero value that is 0 as a double
	numberExponent   // 0 with an exponent beyond ±1000
)

// clientNumber checks a JSON number (already syntax-checked) from a client and returns
// how many bytes longer PostgreSQL writes it out (0 when it does not grow).
func clientNumber(n []byte) (growth int, verdict int) {
	if len(n) > maxNumberChars {
		return 0, numberTooLong
	}
	i, neg := 0, n[0] == '-'
	if neg {
		i++
	}
	intStart := i
	for i < len(n) && n[i] >= '0' && n[i] <= '9' {
		i++
	}
	intLen := i - intStart
	fracStart, fracLen := i, 0
	if i < len(n) && n[i] == '.' {
		i++
		fracStart = i
		for i < len(n) && n[i] >= '0' && n[i] <= '9' {
			i++
		}
		fracLen = i - fracStart
	}
	exp := 0
	if i < len(n) { // 'e' or 'E', then a sign and digits
		i++
		expNeg := n[i] == '-'
		if expNeg || n[i] == '+' {
			i++
		}
		for ; i < len(n); i++ {
			exp = min(exp*10+int(n[i]-'0'), 1_000_000) // saturated: 1e99999999999999999999
		}
		if expNeg {
			exp = -exp
		}
	}
	// The value is in [10^(mag-1), 10^mag). JSON has no leading zeros: the integer
	// part is "0" or starts with a non-zero digit.
	mag, zero := 0, false
	if n[intStart] != '0' {
		mag = intLen + exp
	} else {
		k := 0
		for k < fracLen && n[fracStart+k] == '0' {
			k++
		}
		if k == fracLen {
			zero = true
		} else {
			mag = exp - k
		}
	}
	// PostgreSQL's numeric text: a sign for a negative non-zero value, the integer part
	// ("0" at least), and the scale's digits after a point; the scale is the literal's
	// fraction digits minus its exponent.
	if zero && (exp > 1000 || exp < -1000) {
		return 0, numberExponent // storableNumber's bound; 0 itself is a double
	}
	rendered := 1
	if !zero {
		// Between 1e-322 and 1e308 every value is a finite, non-zero double; around the
		// edges the parser decides (the largest double is 1.797…e308, the smallest
		// positive 4.9e-324, and half of it rounds to 0).
		if mag > 308 || mag < -322 {
			f, err := strconv.ParseFloat(string(n), 64)
			switch {
			case err != nil || math.IsInf(f, 0):
				return 0, numberOverflows
			case f == 0:
				return 0, numberUnderflows
			}
		}
		rendered = max(1, mag)
		if neg {
			rendered++
		}
	}
	if scale := fracLen - exp; scale > 0 {
		rendered += 1 + scale
	}
	return max(0, rendered-len(n)), numberOK
}

// numberMessage is the validation message for a number clientNumber refused with verdict.
func numberMessage(path string, n []byte, verdict int) string {
	lit := shortText(n)
	switch verdict {
	case numberTooLong:
		return path + " must be a number of at most " + itoa(maxNumberChars) + " characters"
	case numberExponent:
		return path + " must be a number with an exponent within ±1000"
	case numberUnderflows:
		return path + " must be a number JavaScript can read (an IEEE-754 double): " + lit + " is too small and would read as 0"
	default:
		return path + " must be a number JavaScript can read (an IEEE-754 double): " + lit + " is beyond ±1.7976931348623157e308"
	}
}

// badNumber finds the first number of v that clientNumber refuses, in the order
// appendValue walks, and returns the message naming it (path is v's). Cold: only after
// appendValue refused a number.
func badNumber(v *fastjson.Value, path string) (string, bool) {
	switch v.Type() {
	case fastjson.TypeObject:
		obj, _ := v.Object()
		var msg string
		found := false
		obj.Visit(func(k []byte, f *fastjson.Value) {
			if !found {
				msg, found = badNumber(f, string(appendPointerSegment([]byte(path+"/"), k)))
			}
		})
		return msg, found
	case fastjson.TypeArray:
		arr, _ := v.Array()
		for i, f := range arr {
			if msg, found := badNumber(f, path+"/"+itoa(i)); found {
				return msg, true
			}
		}
	case fastjson.TypeNumber:
		n := v.MarshalTo(nil)
		if _, verdict := clientNumber(n); verdict != numberOK {
			return numberMessage(path, n, verdict), true
		}
	}
	return "", false
}
