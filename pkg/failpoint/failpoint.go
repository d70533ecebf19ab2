//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Compiled reports whether failpoints are compiled into this binary.
const Compiled = true

type point struct {
	action
	hits atomic.Int64
}

var (
	loadOnce sync.Once
	points   map[string]*point
)

func load() {
	loadOnce.Do(func() {
		acts, err := parse(os.Getenv(EnvVar))
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", EnvVar, err)
			os.Exit(2)
		}
		points = make(map[string]*point, len(acts))
		for name, a := range acts {
			points[name] = &point{action: a}
		}
	})
}

// Hit marks the failpoint name and performs its configured action, if any.
func Hit(name string) {
	load()
	p := points[name]
	if p == nil {
		return
	}
	n := p.hits.Add(1)
	if !p.fires(n) {
		return
	}
	// One unbuffered write, so the line is out before the process dies.
	fmt.Fprintf(os.Stderr, "failpoint %s: %s (hit %d)\n", name, p.action, n)
	switch p.kind {
	case kindKill:
		self, err := os.FindProcess(os.Getpid())
		if err == nil {
			err = self.Kill()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "failpoint %s: killing myself: %v\n", name, err)
			os.Exit(137)
		}
		select {} // SIGKILL is on its way; do nothing more.
	case kindSleep:
		time.Sleep(p.sleep)
	}
}

// Enabled reports whether the switch name is on.
func Enabled(name string) bool {
	load()
	p := points[name]
	return p != nil && p.kind == kindOn
}
