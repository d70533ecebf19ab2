package intake

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

func gz(t testing.TB, parts ...[]byte) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, p := range parts { // one member each
		w := gzip.NewWriter(&out)
		_, err := w.Write(p)
		require.NoError(t, err)
		require.NoError(t, w.Close())
	}
	return out.Bytes()
}

func TestGunzip(t *testing.T) {
	data := bytes.Repeat([]byte(`{"type":"event","name":"x"},`), 40_000) // 1.1 MB
	body := gz(t, data)

	b, g, err := gunzip(body, declaredISIZE(body), 4<<20, nil)
	require.NoError(t, err)
	require.Equal(t, data, b)
	require.Equal(t, sizeClass(len(data)+1), g.class, "sized by the declaration")
	require.Equal(t, bufClasses[g.class], cap(b), "not grown")
	g.release()

	// Two members: the declaration is the last member's only; the buffer grows.
	body2 := gz(t, data, []byte(`{"a":1}`))
	b, g, err = gunzip(body2, declaredISIZE(body2), 4<<20, nil)
	require.NoError(t, err)
	require.Equal(t, append(append([]byte{}, data...), `{"a":1}`...), b)
	g.release()

	// A false declaration (a huge ISIZE) is only a hint, bounded by the limit.
	lie := append([]byte{}, body...)
	binary.LittleEndian.PutUint32(lie[len(lie)-4:], 1<<31)
	_, _, err = gunzip(lie, declaredISIZE(lie), 4<<20, nil)
	require.ErrorIs(t, err, errGzip, "the trailer no longer matches: a checksum/size error")

	// Past the limit: refused having read at most limit+1 bytes.
	_, _, err = gunzip(body, declaredISIZE(body), len(data)-1, nil)
	require.ErrorIs(t, err, fasthttp.ErrBodyTooLarge)
	b, g, err = gunzip(body, declaredISIZE(body), len(data), nil)
	require.NoError(t, err, "exactly the limit is allowed")
	require.Len(t, b, len(data))
	g.release()

	// Malformed.
	_, _, err = gunzip([]byte("not gzip at all, not at all"), 0, 1<<20, nil)
	require.ErrorIs(t, err, errGzip)
	trunc := body[:len(body)/2]
	_, _, err = gunzip(trunc, 0, 4<<20, nil)
	require.ErrorIs(t, err, errGzip)
}

// A steady stream of large gzip bodies reuses its buffers and readers: the point of
// gunzip over fasthttp's BodyGunzipWithLimit (issue 16 item 4).
func TestGunzipReusesBuffers(t *testing.T) {
	data := bytes.Repeat([]byte(`{"type":"event","name":"x","payload":{"pad":"xxxxxxxxxxxxxxxx"}},`), 60_000) // ~3.8 MB
	body := gz(t, data)
	n := declaredISIZE(body)
	for range 3 { // warm the pools
		_, g, err := gunzip(body, n, 10<<20, nil)
		require.NoError(t, err)
		g.release()
	}
	avg := testing.AllocsPerRun(20, func() {
		b, g, err := gunzip(body, n, 10<<20, nil)
		if err != nil || len(b) != len(data) {
			t.Fatalf("gunzip: %v, %d bytes", err, len(b))
		}
		g.release()
	})
	require.Less(t, avg, 20.0, "a handful of small allocations per body, not a new buffer")
}

// declaredISIZE is what declaredSize reads for a gzip body.
func declaredISIZE(b []byte) int {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.Set("Content-Encoding", "gzip")
	req.SetBody(b)
	return declaredSize(req)
}

func BenchmarkGunzip(b *testing.B) {
	data := bytes.Repeat([]byte(`{"type":"event","name":"x","payload":{"pad":"xxxxxxxxxxxxxxxx"}},`), 150_000) // ~9.5 MB
	body := gz(b, data)
	n := declaredISIZE(body)
	b.Run("pooled", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			_, g, err := gunzip(body, n, 10<<20, nil)
			if err != nil {
				b.Fatal(err)
			}
			g.release()
		}
	})
	b.Run("fasthttp", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		req := fasthttp.AcquireRequest()
		defer fasthttp.ReleaseRequest(req)
		req.Header.Set("Content-Encoding", "gzip")
		req.SetBody(body)
		for b.Loop() {
			if _, err := req.BodyGunzipWithLimit(10 << 20); err != nil {
				b.Fatal(err)
			}
		}
	})
}
