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
		Endpoint:      srv.URL, // e.g. http://127.0.0.1:3002
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

// A producer that must not lose events waits for room in the queue instead of dropping,
// with several requests in flight.
func ExampleClient_EnqueueWait() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()

	c, err := client.New(client.Options{
		Endpoint:    srv.URL,
		APIKey:      "pb_live_…",
		QueueSize:   100, // small: EnqueueWait blocks rather than buffer much
		Concurrency: 4,   // requests in flight at once
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 1000 {
		if err := c.EnqueueWait(ctx, client.Event{Type: client.TypeMetric, Name: "tick", Payload: map[string]any{"i": i}}); err != nil {
			fmt.Println("enqueue:", err)
			break
		}
	}
	if err := c.Close(ctx); err != nil {
		fmt.Println("close:", err)
	}
	s := c.Stats()
	fmt.Printf("sent=%d dropped=%d\n", s.Sent, s.Dropped)
	// Output: sent=1000 dropped=0
}
