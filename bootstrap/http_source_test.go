package bootstrap_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/bootstrap"
)

// stallTimeout is the HTTPSource timeout in these tests: small, so that a stalled server fails
// an attempt quickly.
const stallTimeout = 100 * time.Millisecond

// stallingServer answers with the first n bytes of body (no response at all when n < 0) and then
// stalls until the request ends or the test does.
func stallingServer(t *testing.T, n int, body string) *httptest.Server {
	t.Helper()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n >= 0 {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, body[:n])
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })
	return srv
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// A server that accepts and never answers fails the attempt after the timeout with a StallError
// that is retried (not permanent), instead of hanging the bootstrapper.
func TestHTTPSourceTimesOutWaitingForResponse(t *testing.T) {
	srv := stallingServer(t, -1, "")
	src := &bootstrap.HTTPSource{Timeout: stallTimeout}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err := src.Open(ctx, mustParse(t, srv.URL+"/worker"))
	var stall *bootstrap.StallError
	if !errors.As(err, &stall) || bootstrap.IsPermanent(err) || ctx.Err() != nil {
		t.Fatalf("Open of a server that never answers = %v (ctx %v); want a retryable StallError", err, ctx.Err())
	}
	if !strings.Contains(err.Error(), srv.URL+"/worker") {
		t.Errorf("error %q does not name the URL", err)
	}
}

// A body that stops arriving half-way fails the read with a StallError; one that trickles in
// slower than the timeout in total, but with progress inside every timeout, succeeds.
func TestHTTPSourceTimesOutStalledBody(t *testing.T) {
	body := strings.Repeat("w", 1000)
	srv := stallingServer(t, 10, body)
	src := &bootstrap.HTTPSource{Timeout: stallTimeout}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, size, err := src.Open(ctx, mustParse(t, srv.URL+"/worker"))
	if err != nil || size != int64(len(body)) {
		t.Fatalf("Open = %d, %v; want the headers of a %d-byte body", size, err, len(body))
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	var stall *bootstrap.StallError
	if !errors.As(err, &stall) || len(got) != 10 || ctx.Err() != nil {
		t.Fatalf("reading a stalled body: %d bytes, %v; want 10 bytes then a StallError", len(got), err)
	}

	// Progress resets the timer: 6 chunks 40ms apart (240ms in all, more than the timeout).
	trickle := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "6")
		for i := 0; i < 6; i++ {
			io.WriteString(w, "x")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(stallTimeout * 2 / 5):
			case <-r.Context().Done():
				return
			}
		}
	}))
	defer trickle.Close()
	rc, _, err = src.Open(ctx, mustParse(t, trickle.URL))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || string(got) != "xxxxxx" {
		t.Fatalf("reading a slow but steady body: %q, %v", got, err)
	}
}

// loopbackOnlyTransport dials loopback addresses only and records every other address it was
// asked for, so that a test never sends a packet off the machine.
type loopbackOnlyTransport struct {
	mu      sync.Mutex
	refused []string
}

func (l *loopbackOnlyTransport) transport(base *http.Transport) *http.Transport {
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			l.mu.Lock()
			l.refused = append(l.refused, addr)
			l.mu.Unlock()
			return nil, fmt.Errorf("test dialer: refusing non-loopback %s", addr)
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	return base
}

func (l *loopbackOnlyTransport) dialed() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.refused...)
}

func redirectingServer(t *testing.T, tls bool, to func() string) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/worker" {
			io.WriteString(w, "worker bytes")
			return
		}
		http.Redirect(w, r, to(), http.StatusFound)
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv
}

// A loopback http URL that redirects to plain http on another host is refused before anything
// dials that host, permanently, with an error naming the refused URL; --allow-insecure-http
// lets the policy pass it (to the test dialer, which refuses it in turn).
func TestHTTPSourceRefusesRedirectToRemotePlainHTTP(t *testing.T) {
	const target = "http://10.255.255.1/worker"
	srv := redirectingServer(t, false, func() string { return target })
	dial := &loopbackOnlyTransport{}
	src := &bootstrap.HTTPSource{Client: &http.Client{Transport: dial.transport(nil)}, Timeout: 5 * time.Second}
	_, _, err := src.Open(context.Background(), mustParse(t, srv.URL+"/start"))
	var redirect *bootstrap.RedirectError
	if !errors.As(err, &redirect) || !bootstrap.IsPermanent(err) || !strings.Contains(err.Error(), target) {
		t.Fatalf("redirect to %s: %v; want a permanent RedirectError naming it", target, err)
	}
	if d := dial.dialed(); len(d) != 0 {
		t.Fatalf("the refused redirect was dialed: %v", d)
	}

	insecure := &bootstrap.HTTPSource{Client: &http.Client{Transport: dial.transport(nil)}, Timeout: 5 * time.Second, AllowInsecureHTTP: true}
	_, _, err = insecure.Open(context.Background(), mustParse(t, srv.URL+"/start"))
	if errors.As(err, &redirect) || len(dial.dialed()) != 1 {
		t.Fatalf("with AllowInsecureHTTP: %v, dialed %v; want the redirect followed (to the test dialer's refusal)", err, dial.dialed())
	}
}

// Redirects between loopback http URLs are followed; https redirecting to plain http (even on
// loopback) is refused unless AllowInsecureHTTP.
func TestHTTPSourceRedirectPolicy(t *testing.T) {
	plain := redirectingServer(t, false, func() string { return "/worker" })
	dial := &loopbackOnlyTransport{}
	src := &bootstrap.HTTPSource{Client: &http.Client{Transport: dial.transport(nil)}, Timeout: 5 * time.Second}
	rc, _, err := src.Open(context.Background(), mustParse(t, plain.URL+"/start"))
	if err != nil {
		t.Fatalf("loopback http → loopback http: %v", err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "worker bytes" {
		t.Fatalf("followed redirect served %q", b)
	}

	secure := redirectingServer(t, true, func() string { return plain.URL + "/worker" })
	tlsTransport := secure.Client().Transport.(*http.Transport).Clone()
	for _, allow := range []bool{false, true} {
		src := &bootstrap.HTTPSource{Client: &http.Client{Transport: dial.transport(tlsTransport.Clone())}, Timeout: 5 * time.Second, AllowInsecureHTTP: allow}
		rc, _, err := src.Open(context.Background(), mustParse(t, secure.URL+"/start"))
		var redirect *bootstrap.RedirectError
		if !allow {
			if !errors.As(err, &redirect) || !strings.Contains(err.Error(), plain.URL+"/worker") || !strings.Contains(err.Error(), "downgraded") {
				t.Errorf("https → http: %v; want a RedirectError naming %s/worker", err, plain.URL)
			}
			continue
		}
		if err != nil {
			t.Fatalf("https → http with AllowInsecureHTTP: %v", err)
		}
		rc.Close()
	}
	if d := dial.dialed(); len(d) != 0 {
		t.Fatalf("dialed non-loopback addresses: %v", d)
	}
}
