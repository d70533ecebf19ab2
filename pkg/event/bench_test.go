package event

import (
	"testing"
)

// benchBody is a typical single event from the JavaScript SDK (about 400 bytes).
var benchBody = []byte(`{"apiKey":"pk_live_8f2a6c1e","type":"event","name":"page_view",` +
	`"payload":{"path":"/pricing","referrer":"https://www.google.com/","title":"Pricing \u2014 PulseBoard",` +
	`"viewport":{"w":1440,"h":900},"durationMs":1234.5,"tags":["web","en-GB"],"consent":true},` +
	`"context":{"sdk":"pulseboard-js/2.3.1","userAgent":"Mozilla/5.0 (Macintosh)"},` +
	`"timestamp":"2024-06-01T12:34:56.789+02:00","eventId":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b"}`)

// benchDirty is benchBody with strings that need sanitising.
var benchDirty = []byte(`{"apiKey":"pk_live_8f2a6c1e","type":"event","name":"page\u0000view",` +
	`"payload":{"path":"/pricing\ud800","referrer":"https://www.google.com/` + "\xC3\x28" + `","title":"Pricing \u2014 PulseBoard",` +
	`"viewport":{"w":1440,"h":900},"durationMs":1234.5,"tags":["web","en-GB` + "\xFF" + `"],"consent":true},` +
	`"context":{"sdk":"pulseboard-js/2.3.1","userAgent":"Mozilla/5.0 (Macintosh)\udc00"},` +
	`"timestamp":"2024-06-01T12:34:56.789+02:00","eventId":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b"}`)

func BenchmarkDecodeBuild(b *testing.B) {
	d := NewDecoder(DefaultLimits())
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		v, _, perr := d.Parse(benchBody)
		if perr != nil {
			b.Fatal(perr)
		}
		ev, err := d.Build(v, "body", testProject, testNow)
		if err != nil {
			b.Fatal(err)
		}
		buf = ev.AppendJSON(buf[:0])
	}
}

func BenchmarkDecodeBuildParallel(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	b.RunParallel(func(pb *testing.PB) {
		d := NewDecoder(DefaultLimits()) // a Decoder is not safe for concurrent use
		buf := make([]byte, 0, 1024)
		for pb.Next() {
			v, _, perr := d.Parse(benchBody)
			if perr != nil {
				b.Error(perr)
				return
			}
			ev, err := d.Build(v, "body", testProject, testNow)
			if err != nil {
				b.Error(err)
				return
			}
			buf = ev.AppendJSON(buf[:0])
		}
	})
}

func BenchmarkSanitize(b *testing.B) {
	for _, bc := range []struct {
		name string
		in   []byte
	}{{"clean", benchBody}, {"dirty", benchDirty}} {
		b.Run(bc.name, func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				buf, _ = Sanitize(buf[:0], bc.in)
			}
		})
	}
}

func BenchmarkDecodeMessage(b *testing.B) {
	d := NewDecoder(DefaultLimits())
	msg := benchMessage(b, d)
	for b.Loop() {
		if _, err := d.DecodeMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// benchMessage is benchBody as the ingestor writes it to Kafka; it starts a benchmark
// of reading it.
func benchMessage(b *testing.B, d *Decoder) []byte {
	ev := benchEvent(b, d)
	msg := ev.AppendJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	return msg
}
