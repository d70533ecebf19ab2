package failpoint

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// kind is what a failpoint does when it fires.
type kind uint8

const (
	kindKill kind = iota + 1
	kindSleep
	kindOn
)

// action is one parsed "name=action" entry.
type action struct {
	kind  kind
	sleep time.Duration
	// at is the 1-based hit the action fires on; 0 means every hit (sleep) or the first
	// (kill).
	at int64
}

func (a action) String() string {
	s := ""
	switch a.kind {
	case kindKill:
		s = "kill"
	case kindSleep:
		s = "sleep(" + a.sleep.String() + ")"
	case kindOn:
		return "on"
	}
	if a.at > 0 {
		s += "@" + strconv.FormatInt(a.at, 10)
	}
	return s
}

// fires reports whether the action acts on hit number n (1-based).
func (a action) fires(n int64) bool {
	switch {
	case a.kind == kindOn:
		return false
	case a.at > 0:
		return n == a.at
	case a.kind == kindKill:
		return n == 1
	}
	return true
}

// parse reads a PULSEBOARD_FAILPOINTS value (see the package doc).
func parse(spec string) (map[string]action, error) {
	out := map[string]action{}
	for entry := range strings.SplitSeq(spec, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, act, ok := strings.Cut(entry, "=")
		name, act = strings.TrimSpace(name), strings.TrimSpace(act)
		if !ok || name == "" || act == "" {
			return nil, fmt.Errorf("failpoint entry %q: want name=action", entry)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("failpoint %s: set twice", name)
		}
		a, err := parseAction(act)
		if err != nil {
			return nil, fmt.Errorf("failpoint %s: %w", name, err)
		}
		out[name] = a
	}
	return out, nil
}

func parseAction(s string) (action, error) {
	var a action
	body, at, hasAt := strings.Cut(s, "@")
	if hasAt {
		n, err := strconv.ParseInt(at, 10, 64)
		if err != nil || n < 1 {
			return a, fmt.Errorf("action %q: the hit after @ must be a positive integer", s)
		}
		a.at = n
	}
	switch {
	case body == "kill":
		a.kind = kindKill
	case body == "on":
		if hasAt {
			return a, fmt.Errorf("action %q: on takes no @N", s)
		}
		a.kind = kindOn
	case strings.HasPrefix(body, "sleep(") && strings.HasSuffix(body, ")"):
		d, err := time.ParseDuration(body[len("sleep(") : len(body)-1])
		if err != nil || d <= 0 {
			return a, fmt.Errorf("action %q: sleep needs a positive duration", s)
		}
		a.kind, a.sleep = kindSleep, d
	default:
		return a, fmt.Errorf("unknown action %q (kill, kill@N, sleep(D), sleep(D)@N, on)", s)
	}
	return a, nil
}
