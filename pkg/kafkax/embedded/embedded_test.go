package embedded

import (
	"strings"
	"testing"
)

// The embedded broker listens on the loopback interface only, on any free port with 0.
func TestStartListensOnLoopback(t *testing.T) {
	t.Parallel()
	b, err := Start(Options{Port: 0, Topics: []string{"pulseboard.events", "pulseboard.events.dlq"}, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	addrs := b.Addrs()
	if len(addrs) != 1 {
		t.Fatalf("addrs = %v, want one broker", addrs)
	}
	if !strings.HasPrefix(addrs[0], "127.0.0.1:") || strings.HasSuffix(addrs[0], ":0") {
		t.Fatalf("the broker listens on %s, want 127.0.0.1 and a real port", addrs[0])
	}
}
