//go:build !failpoints

package consumer

import (
	"context"

	"github.com/segmentio/kafka-go"
)

// unsafeCommitBeforeStore does nothing: the unsafe negative-control mode exists only in
// binaries built with the failpoints tag (see unsafe_failpoints.go).
func (s *Service) unsafeCommitBeforeStore(context.Context, messageReader, []kafka.Message) {}
