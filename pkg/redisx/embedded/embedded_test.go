package embedded

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// silentURL is a redis:// URL on a loopback port nothing listens on.
func silentURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return "redis://" + addr
}

// REDIS_URL unset and nothing at the default address: the all-in-one gets an embedded
// server on the loopback interface, and the close function stops it.
func TestFallsBackToAnEmbeddedServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, srv, closeFn, err := openOrStart(ctx, "", silentURL(t), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if srv == nil || srv.Addr() != rdb.Options().Addr {
		t.Fatalf("the embedded server is not returned: %v", srv)
	}
	if addr := rdb.Options().Addr; !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("the embedded Redis listens on %s, want the loopback interface", addr)
	}
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET k = %q, %v", v, err)
	}
	closeFn()
}

// An explicitly configured Redis that does not answer is an error, never a fallback.
func TestExplicitURLNeverFallsBack(t *testing.T) {
	t.Parallel()
	_, _, _, err := openOrStart(context.Background(), silentURL(t), silentURL(t), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "connecting to Redis") {
		t.Fatalf("err = %v, want a connection error", err)
	}
	if _, _, err := OpenOrStart(context.Background(), "http://not-redis", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a malformed REDIS_URL was accepted")
	}
}

// Out of file descriptors, the embedded server keeps trying to accept (miniredis's own
// loop returned on the first error and never listened again) and serves the waiting
// client once descriptors are free. Runs in a child process with RLIMIT_NOFILE lowered.
func TestEmbeddedServerSurvivesDescriptorExhaustion(t *testing.T) {
	t.Parallel()
	if os.Getenv("REDIS_EMFILE_CHILD") == "" {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, "-test.run", "^TestEmbeddedServerSurvivesDescriptorExhaustion$", "-test.v")
		cmd.Env = append(os.Environ(), "REDIS_EMFILE_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "child: PONG after EMFILE") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: 64, Max: 64}); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	srv, err := Start(slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var hogs []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		hogs = append(hogs, f)
	}
	_ = hogs[len(hogs)-1].Close() // one descriptor for the client's socket
	hogs = hogs[:len(hogs)-1]
	conn, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		seen := strings.Contains(logs.String(), "too many open files")
		mu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never hit EMFILE")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, f := range hogs {
		_ = f.Close()
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "+PONG\r\n" {
		t.Fatalf("PING = %q, %v", line, err)
	}
	fmt.Println("child: PONG after EMFILE")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
