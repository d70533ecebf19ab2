// Package kafkatest gives a test a Kafka-protocol cluster: by default a fresh embedded
// broker (franz-go's kfake) per test on a free loopback port; with KAFKA_BROKERS set, the
// real cluster, with topic names unique to the test.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

// Cluster is what a test needs to talk to Kafka.
type Cluster struct {
	Brokers  []string
	Topic    string
	DLQTopic string
	// Embedded is the in-process broker (nil on a real cluster).
	Embedded *kafkax.Embedded
}

// New returns a cluster with the events and dead-letter topics created.
func New(t testing.TB, partitions int) *Cluster {
	t.Helper()
	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		suffix := randomHex(4)
		c := &Cluster{Brokers: strings.Split(b, ","), Topic: "pbtest.events." + suffix, DLQTopic: "pbtest.events.dlq." + suffix}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := kafkax.EnsureTopics(ctx, c.Brokers, kafkax.Topic{Name: c.Topic, Partitions: partitions}, kafkax.Topic{Name: c.DLQTopic, Partitions: 1}); err != nil {
			t.Fatalf("kafkatest: %v", err)
		}
		return c
	}
	c := &Cluster{Topic: "pulseboard.events", DLQTopic: "pulseboard.events.dlq"}
	e, err := kafkax.StartEmbedded(kafkax.EmbeddedOptions{Port: 0, Topics: []string{c.Topic, c.DLQTopic}, Partitions: partitions})
	if err != nil {
		t.Fatalf("kafkatest: %v", err)
	}
	t.Cleanup(e.Close)
	c.Brokers = e.Addrs()
	c.Embedded = e
	return c
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
