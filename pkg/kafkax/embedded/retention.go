package embedded

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Retention bounds what the embedded broker keeps, without ever dropping a record that
// one of Groups has not stored yet.
//
// Every Interval, each partition of Topics is trimmed (DeleteRecords) up to the lowest
// offset committed on it by Groups (a group that has committed nothing on a partition
// holds all of it), keeping the records younger than Age for other readers (kcat, a
// tail) unless the broker holds more than Bytes. What the groups have not committed is
// never trimmed: when the broker holds MaxBytes (the consumer is down or far behind),
// produce requests to Topics are refused with the retriable KAFKA_STORAGE_ERROR, so
// producers fail (the ingestor answers 503) instead of the broker growing without bound.
//
// Memory follows the retained bytes at the granularity of kfake's segments: a segment
// (3 MiB, in a 4 MiB slice) is freed once every record in it is trimmed, so the broker
// holds up to one more segment per partition than it retains.
type Retention struct {
	// Groups are the consumer groups that must commit a record before it may be trimmed;
	// none disables retention (the broker keeps everything).
	Groups []string
	// Topics are the topics trimmed and bounded (the events topic). Others (the DLQ,
	// which no group reads) are kept whole but count toward MaxBytes.
	Topics []string
	// Age is how long records the groups committed stay readable.
	Age time.Duration
	// Bytes: above this many retained bytes, committed records are trimmed even when
	// younger than Age. Below MaxBytes.
	Bytes int64
	// MaxBytes is the most the broker retains; past it produce requests to Topics are
	// refused until the groups catch up.
	MaxBytes int64
	// Interval between trims [1s].
	Interval time.Duration
}

func (r *Retention) validate() error {
	if len(r.Groups) == 0 {
		return nil
	}
	if r.Interval <= 0 {
		r.Interval = time.Second
	}
	switch {
	case len(r.Topics) == 0:
		return errors.New("embedded broker retention: no topics to trim")
	case r.Age < 0:
		return fmt.Errorf("embedded broker retention: the age must not be negative, got %s", r.Age)
	case r.MaxBytes <= 0:
		return fmt.Errorf("embedded broker retention: the byte bound must be positive, got %d", r.MaxBytes)
	case r.Bytes < 0 || r.Bytes >= r.MaxBytes:
		return fmt.Errorf("embedded broker retention: the retention bytes (%d) must be at least 0 and below the byte bound (%d)", r.Bytes, r.MaxBytes)
	}
	return nil
}

// hwmSample is a partition's high-water mark at an instant: every record below it was
// produced before then.
type hwmSample struct {
	at  time.Time
	hwm int64
}

type retention struct {
	c      *kfake.Cluster
	r      Retention
	all    []string // every topic of the broker, for the retained bytes
	logger *slog.Logger

	bounded   map[string]bool
	boundedID map[[16]byte]bool
	hist      map[string]map[int32][]hwmSample

	retained atomic.Int64 // as of the last measurement
	// produced counts the bytes of produce requests let through since the last
	// measurement.
	produced atomic.Int64
	armed    atomic.Bool
	gen      atomic.Int64
	used     atomic.Bool
	armedAt  time.Time
	refusing atomic.Bool

	trimmedRecords atomic.Int64
	refusedReqs    atomic.Int64
	trimmedC       prometheus.Counter
	refusedC       prometheus.Counter

	done chan struct{}
	wg   sync.WaitGroup
}

func startRetention(c *kfake.Cluster, o Options) *retention {
	r := &retention{
		c: c, r: o.Retention, all: o.Topics, logger: o.Logger,
		bounded: map[string]bool{}, boundedID: map[[16]byte]bool{},
		hist: map[string]map[int32][]hwmSample{}, done: make(chan struct{}),
	}
	for _, t := range r.r.Topics {
		r.bounded[t] = true
		if ti := c.TopicInfo(t); ti != nil {
			r.boundedID[ti.TopicID] = true
		}
	}
	reg := o.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry() // unexported: the counters still count
	}
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_ingest_broker_retained_bytes",
		Help: "Bytes of records the embedded broker retains (every topic), as of the last trim.",
	}, func() float64 { return float64(r.retained.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pulseboard_ingest_broker_retained_bytes_limit",
		Help: "The embedded broker's byte bound (KAFKA_EMBEDDED_MAX_BYTES); at it, produce requests are refused.",
	}, func() float64 { return float64(r.r.MaxBytes) })
	r.trimmedC = f.NewCounter(prometheus.CounterOpts{
		Name: "pulseboard_ingest_broker_trimmed_records_total",
		Help: "Records the embedded broker deleted after every consumer group had committed them.",
	})
	r.refusedC = f.NewCounter(prometheus.CounterOpts{
		Name: "pulseboard_ingest_broker_produce_refused_total",
		Help: "Produce requests the embedded broker refused because it held its byte bound.",
	})
	r.trim()
	r.wg.Add(1)
	go r.run()
	return r
}

func (r *retention) stop() {
	close(r.done)
	r.wg.Wait()
	r.armed.Store(false)
}

func (r *retention) run() {
	defer r.wg.Done()
	t := time.NewTicker(r.r.Interval)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
			r.trim()
		}
	}
}

// measure sums the bytes retained by every topic.
func (r *retention) measure() int64 {
	var total int64
	for _, t := range r.all {
		for _, pi := range r.c.PartitionInfos(t) {
			total += pi.NumBytes
		}
	}
	return total
}

// committed returns, per partition of topic, the lowest offset Groups committed, or no
// entry when some group has committed nothing there.
func committed(groups []*kfake.GroupInfo, topic string, partitions []*kfake.PartitionInfo) map[int32]int64 {
	out := map[int32]int64{}
outer:
	for _, pi := range partitions {
		low := pi.HighWatermark
		for _, g := range groups {
			if g == nil {
				continue outer
			}
			c, ok := g.Commits[topic][pi.Partition]
			if !ok || c.Offset < 0 {
				continue outer
			}
			low = min(low, c.Offset)
		}
		out[pi.Partition] = low
	}
	return out
}

// trim deletes what every group has committed (and is older than Age, unless the broker
// holds more than Bytes), measures what is left and arms or disarms the produce bound.
func (r *retention) trim() {
	now := time.Now()
	r.produced.Store(0) // counted again from now; the measurement below includes them
	before := r.measure()
	groups := make([]*kfake.GroupInfo, len(r.r.Groups))
	for i, g := range r.r.Groups {
		groups[i] = r.c.GroupInfo(g)
	}
	for _, t := range r.r.Topics {
		infos := r.c.PartitionInfos(t)
		low := committed(groups, t, infos)
		if r.hist[t] == nil {
			r.hist[t] = map[int32][]hwmSample{}
		}
		for _, pi := range infos {
			// The newest sample at least Age old: what is below its HWM is older than Age.
			h := append(r.hist[t][pi.Partition], hwmSample{at: now, hwm: pi.HighWatermark})
			old := int64(-1)
			k := -1
			for i := range h {
				if now.Sub(h[i].at) >= r.r.Age {
					old, k = h[i].hwm, i
				}
			}
			if k > 0 {
				h = append(h[:0], h[k:]...)
			}
			r.hist[t][pi.Partition] = h
			target, ok := low[pi.Partition]
			if !ok {
				continue // a group has not committed anything here: it needs all of it
			}
			if before <= r.r.Bytes {
				target = min(target, old)
			}
			if target <= pi.LogStartOffset {
				continue
			}
			if err := r.c.DeleteRecords(t, pi.Partition, target); err != nil {
				r.logger.Warn("embedded broker: trimming failed", "topic", t, "partition", pi.Partition, "to", target, "err", err)
				continue
			}
			n := target - pi.LogStartOffset
			r.trimmedRecords.Add(n)
			r.trimmedC.Add(float64(n))
		}
	}
	retained := r.measure()
	r.retained.Store(retained)
	if !r.armed.Load() || (r.used.Load() && now.Sub(r.armedAt) > time.Minute) {
		r.arm(now)
	}
	if r.refusing.Load() && retained < r.r.MaxBytes {
		r.refusing.Store(false)
		r.logger.Info("embedded broker: below its byte bound again; accepting produce requests",
			"retained_bytes", retained, "max_bytes", r.r.MaxBytes)
	}
}

// arm installs a fresh produce control, which counts the bytes produced since the last
// measurement and refuses from the first request past the bound. kfake keeps the last
// request a control has seen on each connection for as long as the control lives (closed
// connections included), so the control is replaced every minute: the old one drops
// itself on its next call.
func (r *retention) arm(now time.Time) {
	g := r.gen.Add(1)
	r.armedAt = now
	r.used.Store(false)
	r.armed.Store(true)
	r.c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if r.gen.Load() != g {
			r.c.DropControl()
			return nil, nil, false
		}
		r.used.Store(true)
		pr, ok := req.(*kmsg.ProduceRequest)
		if !ok {
			return nil, nil, false
		}
		var n int64
		bounded := false
		for i := range pr.Topics {
			t := &pr.Topics[i]
			if r.bounded[t.Topic] || r.boundedID[t.TopicID] {
				bounded = true
			}
			for j := range t.Partitions {
				n += int64(len(t.Partitions[j].Records))
			}
		}
		if !bounded {
			return nil, nil, false
		}
		if r.retained.Load()+r.produced.Add(n) < r.r.MaxBytes {
			return nil, nil, false
		}
		r.produced.Add(-n)
		r.c.KeepControl()
		r.refusedReqs.Add(1)
		r.refusedC.Inc()
		if r.refusing.CompareAndSwap(false, true) {
			r.logger.Warn("embedded broker: holding its byte bound (the consumer is down or far behind); refusing produce requests",
				"retained_bytes", r.retained.Load(), "max_bytes", r.r.MaxBytes)
		}
		if pr.Acks == 0 {
			return nil, nil, true // no response to an acks=0 request: the records are dropped unacknowledged
		}
		return refuse(pr), nil, true
	})
}

// refuse answers every partition of pr with KAFKA_STORAGE_ERROR, which producers retry.
func refuse(pr *kmsg.ProduceRequest) *kmsg.ProduceResponse {
	resp := pr.ResponseKind().(*kmsg.ProduceResponse)
	resp.SetVersion(pr.Version)
	msg := "the embedded broker holds its byte bound (KAFKA_EMBEDDED_MAX_BYTES): its consumers are behind"
	for _, rt := range pr.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = kerr.KafkaStorageError.Code
			sp.BaseOffset, sp.LogAppendTime, sp.LogStartOffset = -1, -1, -1
			if pr.Version >= 8 {
				sp.ErrorMessage = &msg
			}
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// RetainedBytes is what the broker retained at its last trim (0 without retention).
func (e *Broker) RetainedBytes() int64 {
	if e.ret == nil {
		return 0
	}
	return e.ret.retained.Load()
}

// TrimmedRecords counts the records retention deleted.
func (e *Broker) TrimmedRecords() int64 {
	if e.ret == nil {
		return 0
	}
	return e.ret.trimmedRecords.Load()
}

// RefusedProduces counts the produce requests refused at the byte bound.
func (e *Broker) RefusedProduces() int64 {
	if e.ret == nil {
		return 0
	}
	return e.ret.refusedReqs.Load()
}
