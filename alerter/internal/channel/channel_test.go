package channel

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRefusedAddresses(t *testing.T) {
	refused := []string{
		"127.0.0.1", "127.5.5.5", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "fd00::1",
		"169.254.169.254", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "100.64.0.1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "255.255.255.255", "198.18.0.1",
	}
	for _, a := range refused {
		if !Refused(netip.MustParseAddr(a)) {
			t.Errorf("%s is not refused", a)
		}
	}
	for _, a := range []string{"1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::101:101"} {
		if Refused(netip.MustParseAddr(a)) {
			t.Errorf("%s is refused", a)
		}
	}
}

// The guard runs at dial time, on the resolved address: a host name that resolves to
// loopback is refused just like the literal address (no DNS check that a rebinding
// answer could pass first).
func TestGuardRefusesNamesResolvingToLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer srv.Close()
	h := NewHTTP(2*time.Second, false)
	defer h.CloseIdleConnections()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	for _, u := range []string{srv.URL + "/x", "http://localhost:" + port + "/x"} {
		_, err := h.Post(context.Background(), u, []byte("{}"), http.Header{})
		var refused *RefusedError
		if !errors.As(err, &refused) {
			t.Fatalf("%s: %v, want a refusal", u, err)
		}
		if perm, _, _ := Classify(err); !perm {
			t.Fatalf("%s: a refusal must be permanent", u)
		}
	}
	allowed := NewHTTP(2*time.Second, true)
	defer allowed.CloseIdleConnections()
	if st, err := allowed.Post(context.Background(), srv.URL+"/x", []byte("{}"), http.Header{}); err != nil || st != 200 {
		t.Fatalf("allowed: %d %v", st, err)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	var hit bool
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hit = true }))
	defer target.Close()
	srv := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	defer srv.Close()
	h := NewHTTP(2*time.Second, true)
	defer h.CloseIdleConnections()
	st, err := h.Post(context.Background(), srv.URL, []byte("{}"), http.Header{})
	if perm, _, _ := Classify(err); err == nil || !perm || st != http.StatusTemporaryRedirect {
		t.Fatalf("got %d, %v: want a permanent failure with 307", st, err)
	}
	if hit {
		t.Fatal("the redirect was followed")
	}
}

func TestClassifyAnswers(t *testing.T) {
	for _, c := range []struct {
		status     int
		retryAfter string
		perm       bool
		wait       time.Duration
	}{
		{500, "", false, 0}, {502, "", false, 0}, {408, "", false, 0}, {429, "7", false, 7 * time.Second},
		{503, "120", false, 2 * time.Minute}, {429, "soon", false, 0}, {400, "", true, 0}, {401, "", true, 0},
		{404, "", true, 0}, {410, "", true, 0},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if c.retryAfter != "" {
				w.Header().Set("Retry-After", c.retryAfter)
			}
			w.WriteHeader(c.status)
		}))
		h := NewHTTP(2*time.Second, true)
		st, err := h.Post(context.Background(), srv.URL, []byte("{}"), http.Header{})
		perm, wait, est := Classify(err)
		if err == nil || st != c.status || est != c.status || perm != c.perm || wait != c.wait {
			t.Errorf("%d %q: got %d perm=%v wait=%s err=%v", c.status, c.retryAfter, st, perm, wait, err)
		}
		h.CloseIdleConnections()
		srv.Close()
	}
}

func TestSlackEscape(t *testing.T) {
	got := SlackEscape("<!channel> & <@U1|x> @here\n<https://e.example|y>")
	want := "&lt;!channel&gt; &amp; &lt;@\u2060U1|x&gt; @\u2060here &lt;https://e.example|y&gt;"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestSignIsHMACOfTimestampDotBody(t *testing.T) {
	// Reference value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
	got := Sign([]byte("key"), []byte(`{"a":1}`), time.Unix(1700000000, 0))
	if want := "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if Sign([]byte("other"), []byte(`{"a":1}`), time.Unix(1700000000, 0)) == got {
		t.Fatal("the key does not change the signature")
	}
}
