package intake

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// Gzip bodies are decompressed into pooled buffers sized from the body's declared size
// (its ISIZE trailer), with pooled readers. fasthttp's BodyGunzipWithLimit grows a fresh
// buffer by doubling for every request: a 9.5 MiB batch allocated about twice that, and
// in bench step 8 those buffers were 29 % of the all-in-one's allocations while one
// project flooded, and the garbage collection they caused (assists, stop-the-world
// pauses) was much of the neighbour's tail latency (issue 16 item 4).

// bufClasses are the capacities of the pooled buffers (decompressed bodies here, and the
// batch arenas): a body is decompressed into the smallest class that holds its declared
// size, and grows past it (append) only if the declaration was false or a later member
// adds more.
var bufClasses = [...]int{64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20}

var (
	gzipBufPools [len(bufClasses)]sync.Pool // *[]byte of that class's capacity
	gzipReaders  sync.Pool                  // *gzip.Reader
)

// gzipBuf is a decompressed body in a pooled buffer; release returns the buffer.
type gzipBuf struct {
	b     *[]byte
	class int // -1: not from a pool (larger than every class)
}

// release returns the buffer to its pool. The body must not be used afterwards.
func (g gzipBuf) release() {
	if g.b == nil || g.class < 0 || cap(*g.b) != bufClasses[g.class] {
		return // grown past its class (a false declaration): left to the collector
	}
	*g.b = (*g.b)[:0]
	gzipBufPools[g.class].Put(g.b)
}

// sizeClass is the index of the smallest class holding n bytes, or -1.
func sizeClass(n int) int {
	for i, c := range bufClasses {
		if n <= c {
			return i
		}
	}
	return -1
}

// getGzipBuf returns an empty buffer for a body declared as n bytes.
func getGzipBuf(n int) gzipBuf {
	c := sizeClass(n)
	if c < 0 {
		b := make([]byte, 0, n)
		return gzipBuf{b: &b, class: -1}
	}
	if p, ok := gzipBufPools[c].Get().(*[]byte); ok {
		return gzipBuf{b: p, class: c}
	}
	b := make([]byte, 0, bufClasses[c])
	return gzipBuf{b: &b, class: c}
}

// errGzip is any malformed gzip body (the caller answers 400).
var errGzip = errors.New("malformed gzip body")

// gunzip decompresses a gzip body of at most limit bytes into a pooled buffer sized by
// declared (a hint: the ISIZE trailer, untrusted). The result is valid until release.
// A body past limit gives fasthttp.ErrBodyTooLarge, having decompressed at most limit+1
// bytes; a malformed one errGzip.
//
// Every event.YieldBytes of output it yields through y (nil: a Yielder without pause).
func gunzip(body []byte, declared, limit int, y *event.Yielder) ([]byte, gzipBuf, error) {
	if y == nil {
		y = &event.Yielder{}
	}
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	src := bytes.NewReader(body)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(src)
	} else {
		err = zr.Reset(src)
	}
	if err != nil {
		return nil, gzipBuf{}, errGzip
	}
	defer gzipReaders.Put(zr)
	// A declared size past the limit is only a hint that the body is too large: read up
	// to the limit and let the count decide.
	g := getGzipBuf(min(max(declared, len(body)), limit) + 1)
	b := *g.b
	for {
		if len(b) == cap(b) {
			if len(b) > limit {
				break
			}
			// A false declaration or a later member: grow by doubling, bounded by the limit.
			nb := make([]byte, len(b), min(max(2*cap(b), 64<<10), limit+1))
			copy(nb, b)
			b = nb
		}
		// A slice at a time, yielding between them (event.Yielder): a 10 MiB body is
		// milliseconds of one core.
		n, rerr := zr.Read(b[len(b):min(cap(b), len(b)+event.YieldBytes)])
		b = b[:len(b)+n]
		y.Add(n)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			*g.b = b[:0]
			g.release()
			return nil, gzipBuf{}, errGzip
		}
	}
	*g.b = b
	if len(b) > limit {
		g.release()
		return nil, gzipBuf{}, fasthttp.ErrBodyTooLarge
	}
	return b, g, nil
}
