package loadgen

import (
	"bytes"
	"io"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"
)

// fastDoer is a client.Doer on fasthttp: the same keep-alive HTTP/1.1 client the load
// generator used before it was built on pkg/client, which costs less CPU per request than
// net/http. The load generator shares the machine with what it measures, so every
// microsecond it spends is one the server does not get. It does not observe a request's
// context once sent (fasthttp cannot); deadlines come from the context or timeout.
type fastDoer struct {
	hc      *fasthttp.HostClient
	timeout time.Duration
}

func newFastDoer(host string, tls bool, conns int, timeout time.Duration) *fastDoer {
	return &fastDoer{timeout: timeout, hc: &fasthttp.HostClient{
		Addr:                          host,
		IsTLS:                         tls,
		MaxConns:                      conns,
		MaxConnWaitTimeout:            timeout,
		ReadTimeout:                   timeout,
		WriteTimeout:                  timeout,
		MaxIdemponentCallAttempts:     1, // pkg/client retries, with the same event ids
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
	}}
}

func (d *fastDoer) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		defer r.Body.Close()
	}
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(r.Method)
	req.SetRequestURI(r.URL.RequestURI())
	req.Header.SetHost(r.URL.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if r.Body != nil {
		if _, err := io.Copy(req.BodyWriter(), r.Body); err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(d.timeout)
	if dl, ok := r.Context().Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := d.hc.DoDeadline(req, resp, deadline); err != nil {
		return nil, err
	}
	var h http.Header // pkg/client reads Retry-After only
	if v := resp.Header.Peek("Retry-After"); len(v) > 0 {
		h = http.Header{"Retry-After": {string(v)}}
	}
	return &http.Response{
		StatusCode: resp.StatusCode(), Header: h, Request: r, ContentLength: int64(len(resp.Body())),
		Body: io.NopCloser(bytes.NewReader(bytes.Clone(resp.Body()))),
	}, nil
}

// CloseIdleConnections closes the keep-alive connections.
func (d *fastDoer) CloseIdleConnections() { d.hc.CloseIdleConnections() }
