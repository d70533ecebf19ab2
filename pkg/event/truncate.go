package event

import (
	"sort"
	"strconv"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// An event over Limits.MaxEventBytes is usually one long string: a stack trace, a
// message, a response body. Refusing the whole event loses the error that mattered most
// (the reference backend took events up to 1 MiB), so the ingestor shortens the longest
// strings of its payload and context until it fits, ending each shortened string with a
// marker that says how much was cut, and refuses (413) only an event that cannot be made
// to fit that way (issue 17 item 4).

// TruncatedMarker starts the marker that ends a shortened string: the string's first
// bytes, then "...[truncated N bytes]" (ASCII, so it is the same length however the
// string is encoded).
const TruncatedMarker = "...[truncated "

// markerLen is the length of the marker for n cut bytes.
func markerLen(n int) int { return len(TruncatedMarker) + len(strconv.Itoa(n)) + len(" bytes]") }

// minKept is the fewest bytes a shortened string keeps before its marker, so that what
// is kept still says what the string was about.
const minKept = 64

// Fit shortens the longest strings of ev's payload and context, all of them to the same
// encoded length, so that the event's encoding, size bytes now, shrinks by at least
// size-limit bytes. It reports how many strings it shortened, or ok false when even
// shortening every string to minKept bytes could not free enough (the event then stays
// as it was). ev's Payload and Context are replaced by new slices; numbers and keys are
// untouched, so NumberGrowth is unchanged. Lengths are measured on the encoding, escapes
// included, and each marker is counted, so one pass frees what was asked; the caller
// encodes the event again and checks it again all the same.
func (d *Decoder) Fit(ev *Event, size, limit int) (shortened int, ok bool) {
	need := size - limit
	if need <= 0 {
		return 0, true
	}
	var parsers [2]fastjson.Parser
	var trees []*fastjson.Value
	for _, doc := range [][]byte{ev.Payload, ev.Context} {
		if len(doc) == 0 {
			continue
		}
		v, err := parsers[len(trees)].ParseBytes(doc)
		if err != nil { // canonical JSON from Build: cannot happen
			return 0, false
		}
		trees = append(trees, v)
	}
	var strs []*stringSlot
	for _, v := range trees {
		collectStrings(v, nil, -1, nil, &strs)
	}
	if len(strs) == 0 {
		return 0, false
	}
	// Lengths are of the encoding (escapes included), which is what the limit counts.
	for _, st := range strs {
		st.enc = encodedLen(st.s)
	}
	// The encoded length every longer string is cut to: the largest that frees enough.
	sort.Slice(strs, func(i, j int) bool { return strs[i].enc > strs[j].enc })
	freed := func(keep int) int {
		n := 0
		for _, st := range strs {
			cut := st.enc - keep
			if cut <= 0 {
				break
			}
			n += cut - markerLen(cut)
		}
		return n
	}
	if freed(minKept) < need {
		return 0, false
	}
	lo, hi := minKept, strs[0].enc // freed(lo) >= need; find the largest such keep
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if freed(mid) >= need {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	var a fastjson.Arena
	for _, st := range strs {
		if st.enc <= lo {
			break
		}
		kept := prefixWithin(st.s, lo)
		cut := len(st.s) - kept
		st.set(a.NewString(string(st.s[:kept]) + TruncatedMarker + strconv.Itoa(cut) + " bytes]"))
		shortened++
	}
	growth := d.growth
	defer func() { d.growth = growth }()
	out := make([][]byte, len(trees))
	for i, v := range trees {
		b, err := d.appendValue(nil, v, 1, "", false)
		if err != nil {
			return 0, false
		}
		out[i] = b
	}
	i := 0
	if len(ev.Payload) > 0 {
		ev.Payload, i = out[0], 1
	}
	if len(ev.Context) > 0 {
		ev.Context = out[i]
	}
	return shortened, true
}

// stringSlot is a string value in a tree and how to replace it.
type stringSlot struct {
	s      []byte
	enc    int // encoded length, quotes excluded
	parent *fastjson.Value
	key    []byte // in an object
	index  int    // in an array, when key is nil
}

func (st *stringSlot) set(v *fastjson.Value) {
	if st.key != nil {
		st.parent.Set(string(st.key), v)
		return
	}
	st.parent.SetArrayItem(st.index, v)
}

// encodedLen is the length of s's canonical encoding without its quotes.
func encodedLen(s []byte) int { return len(appendString(nil, s)) - 2 }

// prefixWithin is the length of the longest prefix of s, ending at a rune boundary, whose
// encoding is at most max bytes.
func prefixWithin(s []byte, max int) int {
	lo, hi := 0, min(len(s), max) // an encoding is never shorter than its text
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		k := mid
		for k > 0 && k < len(s) && !utf8.RuneStart(s[k]) {
			k--
		}
		if encodedLen(s[:k]) <= max {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	for lo > 0 && lo < len(s) && !utf8.RuneStart(s[lo]) {
		lo--
	}
	return lo
}

func collectStrings(v, parent *fastjson.Value, index int, key []byte, out *[]*stringSlot) {
	switch v.Type() {
	case fastjson.TypeString:
		if parent == nil {
			return
		}
		s, _ := v.StringBytes()
		*out = append(*out, &stringSlot{s: s, parent: parent, key: key, index: index})
	case fastjson.TypeObject:
		o, _ := v.Object()
		o.Visit(func(k []byte, f *fastjson.Value) {
			collectStrings(f, v, -1, append([]byte(nil), k...), out)
		})
	case fastjson.TypeArray:
		arr, _ := v.Array()
		for i, f := range arr {
			collectStrings(f, v, i, nil, out)
		}
	}
}
