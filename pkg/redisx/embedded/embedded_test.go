package embedded

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
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
	rdb, closeFn, err := openOrStart(ctx, "", silentURL(t), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
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
	_, _, err := openOrStart(context.Background(), silentURL(t), silentURL(t), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "connecting to Redis") {
		t.Fatalf("err = %v, want a connection error", err)
	}
	if _, _, err := OpenOrStart(context.Background(), "http://not-redis", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a malformed REDIS_URL was accepted")
	}
}
