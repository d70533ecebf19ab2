//go:build failpoints

package producer

import (
	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/failpoint"
)

// unsafeAcks is the negative control of the real-Kafka fault tier (make chaos, KR6). With
// the switch ingestor/unsafe-acks-1 on, the producer asks only the partition leader to
// acknowledge (acks=1) instead of every in-sync replica, so killing a leader whose
// followers have not copied its latest writes loses acknowledged events, and the
// verifier must say so. It exists only in binaries built with the failpoints tag.
func unsafeAcks(acks kafka.RequiredAcks) kafka.RequiredAcks {
	if failpoint.Enabled("ingestor/unsafe-acks-1") {
		return kafka.RequireOne
	}
	return acks
}
