package event

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Benchmarks of the ingest hot path stage by stage, on the shapes the load generator
// sends: single events (benchBody) and a 100-event batch array.

// benchBatch is a 100-event batch like `pulseboard loadgen -mode batch` sends (≈ 250
// bytes per event, client event ids).
var benchBatch = func() []byte {
	var b strings.Builder
	b.WriteByte('[')
	payload := strings.Repeat("x", 140)
	for j := range 100 {
		if j > 0 {
			b.WriteByte(',')
		}
		typ := "event"
		if j%10 == 0 {
			typ = "error"
		}
		id := uuid.NewSHA1(uuid.NameSpaceOID, []byte{byte(j)})
		fmt.Fprintf(&b, `{"eventId":"%s","type":"%s","name":"load.%d","payload":{"worker":%d,"seq":%d,"j":%d,"data":%q}}`,
			id, typ, j%8, 3, 12345, j, payload)
	}
	b.WriteByte(']')
	return []byte(b.String())
}()

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct {
		name string
		in   []byte
	}{{"clean", benchBody}, {"dirty", benchDirty}, {"batch100", benchBatch}} {
		b.Run(bc.name, func(b *testing.B) {
			d := NewDecoder(DefaultLimits())
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				if _, _, perr := d.Parse(bc.in); perr != nil {
					b.Fatal(perr)
				}
			}
		})
	}
}

// benchEvent is benchBody decoded (its Payload and Context alias d).
func benchEvent(b *testing.B, d *Decoder) Event {
	v, _, perr := d.Parse(benchBody)
	if perr != nil {
		b.Fatal(perr)
	}
	ev, err := d.Build(v, "body", testProject, testNow)
	if err != nil {
		b.Fatal(err)
	}
	return ev
}

func BenchmarkAppendJSON(b *testing.B) {
	ev := benchEvent(b, NewDecoder(DefaultLimits()))
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = ev.AppendJSON(buf[:0])
	}
}

// BenchmarkEncoderAppendJSON is AppendJSON for the events of one request, which share
// project and receive time (the ingestor's batch path).
func BenchmarkEncoderAppendJSON(b *testing.B) {
	ev := benchEvent(b, NewDecoder(DefaultLimits()))
	ev.ReceivedAt = ev.Timestamp.Add(time.Second)
	buf := make([]byte, 0, 1024)
	var enc Encoder
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.AppendJSON(buf[:0], &ev)
	}
}

// BenchmarkDecodeBuildBatch100 is the per-request decode work of a 100-event batch:
// parse once, then build and encode every event (events/s = 100 × 1/op).
func BenchmarkDecodeBuildBatch100(b *testing.B) {
	d := NewDecoder(DefaultLimits())
	buf := make([]byte, 0, 64<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBatch)))
	for b.Loop() {
		v, _, perr := d.Parse(benchBatch)
		if perr != nil {
			b.Fatal(perr)
		}
		arr, _ := v.Array()
		buf = buf[:0]
		for _, e := range arr {
			ev, err := d.Build(e, "events/0", testProject, testNow)
			if err != nil {
				b.Fatal(err)
			}
			buf = ev.AppendJSON(buf)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRawBatch100 is BenchmarkDecodeBuildBatch100 through the raw path (SplitBatch +
// BuildRaw), which the ingestor takes for canonical input such as this.
func BenchmarkRawBatch100(b *testing.B) {
	d := NewDecoder(DefaultLimits())
	buf := make([]byte, 0, 64<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBatch)))
	for b.Loop() {
		elems, ok := d.SplitBatch(benchBatch)
		if !ok {
			b.Fatal("SplitBatch declined")
		}
		buf = buf[:0]
		for _, e := range elems {
			ev, _, _, ok := d.BuildRaw(e, testNow)
			if !ok {
				b.Fatal("BuildRaw declined")
			}
			ev.ProjectID = testProject
			buf = ev.AppendJSON(buf)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "events/s")
}
