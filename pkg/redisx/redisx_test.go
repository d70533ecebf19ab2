package redisx

import (
	"context"
	"log/slog"
	"net"
	"testing"
)

// A service that keeps working without Redis must be able to start without it (F14):
// Connect returns a client for a Redis that does not answer, and only a malformed URL
// is an error.
func TestConnectDoesNotRequireAnAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	rdb, err := Connect(context.Background(), "redis://"+addr, slog.New(slog.DiscardHandler), "testing")
	if err != nil || rdb == nil {
		t.Fatalf("Connect to a silent Redis: %v, %v; want a client", rdb, err)
	}
	_ = rdb.Close()
	if _, err := Connect(context.Background(), "http://not-redis", slog.New(slog.DiscardHandler), "testing"); err == nil {
		t.Fatal("Connect accepted a malformed REDIS_URL")
	}
}
