package client_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/pulseboard/pulseboard/pkg/client"
)

func Example() {
	// A stand-in for the ingestor that accepts every batch.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"success":true,"data":{"accepted":2,"rejected":0,"results":[]}}`))
	}))
	defer srv.Close()

	c, err := client.New(client.Options{
		Endpoint:      srv.URL, // e.g. http://127.0.0.1:3001
		APIKey:        "pb_live_…",
		FlushInterval: 500 * time.Millisecond,
		Gzip:          true,
	})
	if err != nil {
		panic(err)
	}
	_ = c.Enqueue(client.Event{Type: client.TypeEvent, Name: "signup", Payload: map[string]any{"plan": "pro"}})
	_ = c.Enqueue(client.Event{Type: client.TypeMetric, Name: "latency_ms", Payload: map[string]any{"value": 42}})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil { // flushes what is queued
		fmt.Println("close:", err)
	}
	s := c.Stats()
	fmt.Printf("enqueued=%d sent=%d failed=%d\n", s.Enqueued, s.Sent, s.Failed)
	// Output: enqueued=2 sent=2 failed=0
}
