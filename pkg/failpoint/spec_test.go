package failpoint

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	got, err := parse(" consumer/after-db-commit=kill@3; consumer/unsafe=on ;x=sleep(250ms)@2;y=sleep(1s);z=kill;")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]action{
		"consumer/after-db-commit": {kind: kindKill, at: 3},
		"consumer/unsafe":          {kind: kindOn},
		"x":                        {kind: kindSleep, sleep: 250 * time.Millisecond, at: 2},
		"y":                        {kind: kindSleep, sleep: time.Second},
		"z":                        {kind: kindKill},
	}
	if len(got) != len(want) {
		t.Fatalf("parsed %v, want %v", got, want)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: got %+v, want %+v", name, got[name], w)
		}
	}
	if s := got["consumer/after-db-commit"].String(); s != "kill@3" {
		t.Errorf("String() = %q", s)
	}
	if s := got["x"].String(); s != "sleep(250ms)@2" {
		t.Errorf("String() = %q", s)
	}
}

func TestParseRejectsTypos(t *testing.T) {
	for _, spec := range []string{
		"consumer/after-db-commit", "=kill", "a=", "a=kil", "a=kill@0", "a=kill@x", "a=on@2",
		"a=sleep(0s)", "a=sleep(2)", "a=sleep(1s", "a=kill;a=on",
	} {
		if _, err := parse(spec); err == nil {
			t.Errorf("parse(%q) accepted a malformed specification", spec)
		}
	}
	if m, err := parse(""); err != nil || len(m) != 0 {
		t.Errorf("parse(\"\") = %v, %v; want nothing", m, err)
	}
}

func TestFires(t *testing.T) {
	cases := []struct {
		a    action
		hits []bool // hits 1..len
	}{
		{action{kind: kindKill}, []bool{true, false, false}},
		{action{kind: kindKill, at: 2}, []bool{false, true, false}},
		{action{kind: kindSleep, sleep: time.Millisecond}, []bool{true, true, true}},
		{action{kind: kindSleep, sleep: time.Millisecond, at: 3}, []bool{false, false, true}},
		{action{kind: kindOn}, []bool{false, false}},
	}
	for _, c := range cases {
		for i, want := range c.hits {
			if got := c.a.fires(int64(i + 1)); got != want {
				t.Errorf("%s: fires(%d) = %v, want %v", c.a, i+1, got, want)
			}
		}
	}
}
