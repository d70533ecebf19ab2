//go:build failpoints

package consumer

import (
	"context"

	"github.com/segmentio/kafka-go"

	"github.com/pulseboard/pulseboard/pkg/failpoint"
)

// unsafeCommitBeforeStore is the negative control of the fault tests (docs/reliability.md,
// "Fault tests": "prove the harness can fail"). With the switch
// consumer/unsafe-commit-before-store on, the consumer commits a batch's offsets as soon
// as it is fetched, before storing it, the way kafka-go's ReadMessage would (K10); a
// crash before the store then loses the batch, and the fault tests must report that
// loss. It exists only in binaries built with the failpoints tag.
func (s *Service) unsafeCommitBeforeStore(ctx context.Context, r messageReader, batch []kafka.Message) {
	if failpoint.Enabled("consumer/unsafe-commit-before-store") {
		s.logger.Warn("UNSAFE: committing offsets before storing (failpoint consumer/unsafe-commit-before-store)")
		s.commit(ctx, r, batch)
	}
}
