package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/kafkax"
)

const (
	testTopic = "ret.events"
	testDLQ   = "ret.events.dlq"
)

func startRetained(t *testing.T, r Retention, o Options) *Broker {
	t.Helper()
	o.Port = 0
	o.Topics = []string{testTopic, testDLQ}
	if o.Partitions == 0 {
		o.Partitions = 3
	}
	r.Topics = []string{testTopic}
	if r.Interval == 0 {
		r.Interval = 100 * time.Millisecond
	}
	o.Retention = r
	b, err := Start(o)
	require.NoError(t, err)
	t.Cleanup(b.Close)
	return b
}

func newTestWriter(t *testing.T, b *Broker) *kafka.Writer {
	t.Helper()
	o := kafkax.DefaultWriterOptions()
	o.WriteTimeout = 3 * time.Second
	w, err := kafkax.NewWriter(b.Addrs(), testTopic, o)
	require.NoError(t, err)
	w.Balancer = &kafka.RoundRobin{}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// consume reads with group g and commits each batch, calling seen for each message, until
// ctx ends.
func consume(ctx context.Context, b *Broker, g string, seen func(kafka.Message)) error {
	r := kafkax.NewReader(b.Addrs(), testTopic, kafkax.ReaderOptions{GroupID: g, MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		seen(m)
		if err := r.CommitMessages(ctx, m); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Sustained produce and consume of many times the byte bound: the broker trims what both
// groups committed, so what it retains stays below the bound, nothing is refused, every
// record reaches both groups, and the heap stays flat.
func TestRetentionKeepsTheBrokerBoundedUnderSustainedTraffic(t *testing.T) {
	const maxBytes = 8 << 20
	b := startRetained(t, Retention{Groups: []string{"g-consumer", "g-alerter"}, Age: 0, Bytes: 1 << 20, MaxBytes: maxBytes},
		Options{SegmentBytes: 256 << 10})
	w := newTestWriter(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	counts := map[string]*atomic.Int64{"g-consumer": {}, "g-alerter": {}}
	errc := make(chan error, 2)
	for g, n := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- consume(ctx, b, g, func(kafka.Message) { n.Add(1) })
		}()
	}
	payload := strings.Repeat("x", 1000)
	const total = 64 << 10 // 64 Ki records of ~1 KB: 8 times the bound
	var maxRetained int64
	var heaps []uint64
	for i := 0; i < total; i += 512 {
		msgs := make([]kafka.Message, 512)
		for j := range msgs {
			msgs[j] = kafka.Message{Key: []byte(strconv.Itoa(i + j)), Value: []byte(payload)}
		}
		require.NoError(t, w.WriteMessages(ctx, msgs...))
		// The groups keep up (at most ~2 MB behind): this test is about trimming, the
		// next one about a group that falls behind.
		require.Eventually(t, func() bool {
			return min(counts["g-consumer"].Load(), counts["g-alerter"].Load()) >= int64(i+512-2048)
		}, 60*time.Second, 5*time.Millisecond)
		maxRetained = max(maxRetained, b.RetainedBytes())
		if i%(8<<10) == 0 {
			heaps = append(heaps, heapAfterGC())
		}
	}
	require.Eventually(t, func() bool {
		return counts["g-consumer"].Load() >= total && counts["g-alerter"].Load() >= total
	}, 60*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return b.RetainedBytes() < 2<<20 }, 10*time.Second, 50*time.Millisecond,
		"once both groups caught up the broker trims down to (nearly) nothing; retained %d", b.RetainedBytes())
	cancel()
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
	require.Less(t, maxRetained, int64(maxBytes), "retained bytes stay below the bound")
	require.Zero(t, b.RefusedProduces())
	require.GreaterOrEqual(t, b.TrimmedRecords(), int64(total*9/10))
	heaps = append(heaps, heapAfterGC())
	t.Logf("retained at most %d bytes; heap after GC (MiB): %v", maxRetained, mib(heaps))
	// Flat: the last heap is within 16 MiB of the first (64 MiB went through).
	require.Less(t, heaps[len(heaps)-1], heaps[1]+16<<20, "heap after GC grew: %v MiB", mib(heaps))
}

func mib(xs []uint64) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprintf("%.1f", float64(x)/(1<<20))
	}
	return out
}

// With a group that has not stored anything, nothing is trimmed: at the byte bound the
// broker refuses produce requests (retriable KAFKA_STORAGE_ERROR, so the producer's
// write fails), and once the group reads and commits, it has every acknowledged record
// and produce works again.
func TestRetentionRefusesProduceAtTheBoundAndLosesNothing(t *testing.T) {
	const maxBytes = 4 << 20
	b := startRetained(t, Retention{Groups: []string{"g-consumer"}, Age: 0, Bytes: 1 << 20, MaxBytes: maxBytes}, Options{})
	w := newTestWriter(t, b)
	ctx := context.Background()
	payload := strings.Repeat("y", 1000)
	acked := map[string]bool{}
	var refused error
	for i := 0; i < 20000 && refused == nil; i += 100 {
		msgs := make([]kafka.Message, 100)
		for j := range msgs {
			msgs[j] = kafka.Message{Key: []byte(strconv.Itoa(i + j)), Value: []byte(payload)}
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			refused = err
			break
		}
		for _, m := range msgs {
			acked[string(m.Key)] = true
		}
	}
	require.Error(t, refused, "the broker never refused although nothing consumed")
	var we kafka.WriteErrors
	if errors.As(refused, &we) {
		for _, e := range we {
			if e != nil {
				require.ErrorIs(t, e, kafka.KafkaStorageError)
			}
		}
	} else {
		require.ErrorIs(t, refused, kafka.KafkaStorageError)
	}
	require.Positive(t, b.RefusedProduces())
	require.Less(t, b.RetainedBytes(), int64(maxBytes+1<<20), "retained %d", b.RetainedBytes())
	require.NotEmpty(t, acked)
	require.Zero(t, b.TrimmedRecords(), "nothing the group has not committed is trimmed")

	// The group catches up: every acknowledged record is there.
	cctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	got := map[string]bool{}
	done := make(chan error, 1)
	go func() {
		done <- consume(cctx, b, "g-consumer", func(m kafka.Message) {
			mu.Lock()
			got[string(m.Key)] = true
			mu.Unlock()
		})
	}()
	// (The refused write may have been stored on some partitions: got can hold records
	// that were never acknowledged, so wait for each acknowledged one, not for a count.)
	missing := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for k := range acked {
			if !got[k] {
				out = append(out, k)
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return len(missing()) == 0 }, 30*time.Second, 50*time.Millisecond,
		"acknowledged records not consumed")
	require.Empty(t, missing(), "acknowledged records lost")
	// Trimmed, produce works again.
	require.Eventually(t, func() bool { return b.RetainedBytes() < maxBytes/2 }, 10*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		return w.WriteMessages(ctx, kafka.Message{Key: []byte("after"), Value: []byte(payload)}) == nil
	}, 10*time.Second, 100*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
}

// Committed records younger than Age stay readable (below Bytes), and a partition a
// group has committed nothing on is never trimmed.
func TestRetentionKeepsTheAgeWindowAndUncommittedPartitions(t *testing.T) {
	b := startRetained(t, Retention{Groups: []string{"g-consumer"}, Age: time.Hour, Bytes: 32 << 20, MaxBytes: 64 << 20}, Options{Partitions: 1})
	w := newTestWriter(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 10 {
		require.NoError(t, w.WriteMessages(ctx, kafka.Message{Key: []byte(strconv.Itoa(i)), Value: []byte("v")}))
	}
	var n atomic.Int64
	done := make(chan error, 1)
	go func() { done <- consume(ctx, b, "g-consumer", func(kafka.Message) { n.Add(1) }) }()
	require.Eventually(t, func() bool { return n.Load() == 10 }, 30*time.Second, 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // several trims
	require.Zero(t, b.TrimmedRecords(), "records younger than the age are kept")
	pi := b.Cluster().PartitionInfo(testTopic, 0)
	require.Zero(t, pi.LogStartOffset)
	cancel()
	require.NoError(t, <-done)

	// Age 0, but the second group never committed: nothing trimmed either.
	b2 := startRetained(t, Retention{Groups: []string{"g-consumer", "g-never"}, Age: 0, Bytes: 1 << 20, MaxBytes: 64 << 20}, Options{Partitions: 1})
	w2 := newTestWriter(t, b2)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	for i := range 10 {
		require.NoError(t, w2.WriteMessages(ctx2, kafka.Message{Key: []byte(strconv.Itoa(i)), Value: []byte("v")}))
	}
	var n2 atomic.Int64
	done2 := make(chan error, 1)
	go func() { done2 <- consume(ctx2, b2, "g-consumer", func(kafka.Message) { n2.Add(1) }) }()
	require.Eventually(t, func() bool { return n2.Load() == 10 }, 30*time.Second, 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	require.Zero(t, b2.TrimmedRecords())
	cancel2()
	require.NoError(t, <-done2)
}

// Persisted (DataDir), trimming deletes the segment files that hold only trimmed records.
func TestRetentionTrimsPersistedSegmentFiles(t *testing.T) {
	dir := t.TempDir()
	b := startRetained(t, Retention{Groups: []string{"g-consumer"}, Age: 0, Bytes: 0, MaxBytes: 64 << 20},
		Options{Partitions: 1, DataDir: dir, SegmentBytes: 16 << 10})
	w := newTestWriter(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	payload := strings.Repeat("z", 1000)
	for i := 0; i < 2000; i += 50 {
		msgs := make([]kafka.Message, 50)
		for j := range msgs {
			msgs[j] = kafka.Message{Key: []byte(strconv.Itoa(i + j)), Value: []byte(payload)}
		}
		require.NoError(t, w.WriteMessages(ctx, msgs...))
	}
	segs := func() int {
		n := 0
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.Contains(p, testTopic+"-0") && strings.HasSuffix(p, ".dat") &&
				!strings.Contains(p, testDLQ) {
				n++
			}
			return nil
		})
		return n
	}
	before := segs()
	require.Greater(t, before, 20, "the 2 MB written fill many 16 KiB segments")
	var n atomic.Int64
	done := make(chan error, 1)
	go func() { done <- consume(ctx, b, "g-consumer", func(kafka.Message) { n.Add(1) }) }()
	require.Eventually(t, func() bool { return n.Load() == 2000 }, 30*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return segs() <= 2 }, 10*time.Second, 50*time.Millisecond,
		"segment files left: %d of %d", segs(), before)
	cancel()
	require.NoError(t, <-done)
}
