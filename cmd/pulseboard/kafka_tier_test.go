package main_test

import (
	"strings"
	"testing"

	"github.com/pulseboard/pulseboard/pkg/testenv/kafkatest"
)

// testKafka is where a test's services find Kafka. In the embedded tier (the default) the
// all-in-one starts its own embedded broker, or the test starts `pulseboard broker`, and
// the names are the defaults. In the real-broker tier (PULSEBOARD_TEST_KAFKA=<version>,
// `make test-real-kafka`) every test uses the shared real Apache Kafka broker with topic
// and consumer group names of its own.
type testKafka struct {
	// real: brokers is a real (shared) cluster; no embedded broker is started.
	real                bool
	brokers             string
	topic, dlq          string
	group, alerterGroup string
}

func kafkaFor(t *testing.T) testKafka {
	t.Helper()
	k := testKafka{topic: "pulseboard.events", dlq: "pulseboard.events.dlq", group: "pulseboard-consumer", alerterGroup: "pulseboard-alerter"}
	brokers, ok := kafkatest.SharedBrokers(t)
	if !ok {
		return k
	}
	s := kafkatest.UniqueSuffix()
	k.real, k.brokers = true, strings.Join(brokers, ",")
	k.topic, k.dlq = "pbtest.events."+s, "pbtest.events.dlq."+s
	k.group, k.alerterGroup = "pbtest-consumer-"+s, "pbtest-alerter-"+s
	return k
}

// env is the services' Kafka environment on a real cluster (nothing in the embedded tier,
// where each caller sets KAFKA_BROKERS itself).
func (k testKafka) env() []string {
	if !k.real {
		return nil
	}
	return []string{
		"KAFKA_BROKERS=" + k.brokers, "KAFKA_TOPIC=" + k.topic, "KAFKA_DLQ_TOPIC=" + k.dlq,
		"CONSUMER_GROUP=" + k.group, "ALERTER_GROUP=" + k.alerterGroup,
	}
}

// groupName maps a default group name to this test's.
func (k testKafka) groupName(def string) string {
	switch def {
	case "pulseboard-consumer":
		return k.group
	case "pulseboard-alerter":
		return k.alerterGroup
	}
	return def
}
