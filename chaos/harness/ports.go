package harness

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	portsMu sync.Mutex
	given   = map[int]bool{}
)

// Port returns a loopback TCP port that is free now, for a process that must keep its
// port across restarts (a broker, Redis, an ingestor behind a fixed client endpoint).
//
// Ports are drawn below the kernel's ephemeral range (net.ipv4.ip_local_port_range),
// where neither outgoing connections nor port-0 listeners (every other test's
// "free port") are ever placed, so a port stays free while its process is down. This
// avoids the race of bind-:0-then-close helpers. A port is never handed out twice in one
// test binary.
func Port(t testing.TB) int {
	t.Helper()
	lo := ephemeralLow()
	const floor = 10000
	if lo-floor < 1000 {
		t.Fatalf("harness: the ephemeral port range starts at %d; no room below it for fixed ports", lo)
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		p := floor + rand.IntN(lo-floor)
		if given[p] || !free(p) {
			continue
		}
		given[p] = true
		return p
	}
	t.Fatalf("harness: no free port found between %d and %d", floor, lo)
	return 0
}

func free(port int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768 by default).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
}

// Addr formats a loopback host:port.
func Addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
