package consumer

import "time"

// SetLastStore makes s behave as after a store that took d: a batch holding every
// message fetched stays open that long (BatchWait at most).
func SetLastStore(s *Service, d time.Duration) { s.lastStore.Store(int64(d)) }

// BatchAhead reports whether a fetched and decoded batch waits for the processor.
func BatchAhead(s *Service) bool { return s.ahead.Load() }
