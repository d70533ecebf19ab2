//go:build !failpoints

package producer

import "github.com/segmentio/kafka-go"

// unsafeAcks returns acks unchanged: the unsafe acks=1 mode of the negative control
// exists only in failpoints builds.
func unsafeAcks(acks kafka.RequiredAcks) kafka.RequiredAcks { return acks }
