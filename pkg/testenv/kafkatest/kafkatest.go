// Package kafkatest gives a test a Kafka cluster, one of three kinds:
//   - by default a fresh embedded broker (franz-go's kfake) per test on a free loopback
//     port;
//   - with PULSEBOARD_TEST_KAFKA=<version> (make test's real-broker tier), a real Apache
//     Kafka broker of that version (realkafka), shared by the tests of the test binary;
//   - with KAFKA_BROKERS set, that cluster.
//
// On a shared or external cluster the topics' names are unique to the test.
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
	"github.com/pulseboard/pulseboard/pkg/kafkax/embedded"
	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

// Cluster is what a test needs to talk to Kafka.
type Cluster struct {
	Brokers  []string
	Topic    string
	DLQTopic string
	// Embedded is the in-process broker (nil on a real cluster).
	Embedded *embedded.Broker
	// Real is the real broker of the real-broker tier (nil otherwise).
	Real *realkafka.Cluster
}

// RealVersion is the Kafka version of the real-broker tier this test binary runs in, ""
// when it runs against the embedded broker or an external cluster.
func RealVersion() string { return strings.TrimSpace(os.Getenv("PULSEBOARD_TEST_KAFKA")) }

// SharedBrokers returns the brokers of a real or external cluster and true, or nil and
// false when tests run against per-test embedded brokers.
func SharedBrokers(t testing.TB) ([]string, bool) {
	t.Helper()
	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		return strings.Split(b, ","), true
	}
	if v := RealVersion(); v != "" {
		return realkafka.Shared(t, v).Brokers(), true
	}
	return nil, false
}

// New returns a cluster with the events and dead-letter topics created.
func New(t testing.TB, partitions int) *Cluster {
	t.Helper()
	if brokers, ok := SharedBrokers(t); ok {
		suffix := UniqueSuffix()
		c := &Cluster{Brokers: brokers, Topic: "pbtest.events." + suffix, DLQTopic: "pbtest.events.dlq." + suffix}
		if v := RealVersion(); v != "" && os.Getenv("KAFKA_BROKERS") == "" {
			c.Real = realkafka.Shared(t, v)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := kafkax.EnsureTopics(ctx, c.Brokers, kafkax.Topic{Name: c.Topic, Partitions: partitions}, kafkax.Topic{Name: c.DLQTopic, Partitions: 1}); err != nil {
			t.Fatalf("kafkatest: %v", err)
		}
		return c
	}
	c := &Cluster{Topic: "pulseboard.events", DLQTopic: "pulseboard.events.dlq"}
	e, err := embedded.Start(embedded.Options{Port: 0, Topics: []string{c.Topic, c.DLQTopic}, Partitions: partitions})
	if err != nil {
		t.Fatalf("kafkatest: %v", err)
	}
	t.Cleanup(e.Close)
	c.Brokers = e.Addrs()
	c.Embedded = e
	return c
}

// UniqueSuffix is a random suffix for topic and group names on a shared cluster.
func UniqueSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
