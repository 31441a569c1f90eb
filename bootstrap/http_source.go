package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// DefaultDownloadTimeout is how long one download attempt waits for a connection, for the
// response headers, or for the next bytes of the body before it fails and is retried.
const DefaultDownloadTimeout = 60 * time.Second

// maxRedirects is how many redirects a download follows, as net/http does by default.
const maxRedirects = 10

// HTTPSource fetches http:// and https:// URLs with an http.Client. Every redirect hop is
// checked as the first URL is (see ParseWorkerURL): plain http only to a loopback host, and
// never after https, unless AllowInsecureHTTP is set.
type HTTPSource struct {
	// Client sends the requests. When nil, a client whose transport times out connecting, the
	// TLS handshake and the response headers after Timeout is used. Its CheckRedirect is
	// always replaced by the redirect policy above.
	Client *http.Client
	// UserAgent is sent with every request when set.
	UserAgent string
	// Timeout fails an attempt that makes no progress for this long: no connection, no
	// response headers, or no new bytes of the body. DefaultDownloadTimeout when zero.
	Timeout time.Duration
	// AllowInsecureHTTP permits redirects to http:// URLs of non-loopback hosts and from
	// https:// to http://.
	AllowInsecureHTTP bool

	once   sync.Once
	client *http.Client
}

// StallError is the error of a download attempt that made no progress for its timeout. It is
// not permanent: the attempt is retried.
type StallError struct {
	// URL is the download (redacted).
	URL string
	// Timeout is how long it waited.
	Timeout time.Duration
}

// Error names the URL and the timeout.
func (e *StallError) Error() string {
	return fmt.Sprintf("GET %s: no progress for %s (--download-timeout)", e.URL, e.Timeout)
}

// RedirectError is the permanent error of a redirect that the plain-http policy refuses; the
// refused URL is never connected to.
type RedirectError struct {
	// From is the URL that redirected, To the refused target (both redacted).
	From, To string
	// Reason says why.
	Reason string
}

// Error names both URLs and the reason.
func (e *RedirectError) Error() string {
	return fmt.Sprintf("refusing redirect from %s to %s: %s", e.From, e.To, e.Reason)
}

func (s *HTTPSource) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return DefaultDownloadTimeout
}

func (s *HTTPSource) httpClient() *http.Client {
	s.once.Do(func() {
		var c http.Client
		if s.Client != nil {
			c = *s.Client
		}
		if c.Transport == nil {
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.DialContext = (&net.Dialer{Timeout: s.timeout(), KeepAlive: 30 * time.Second}).DialContext
			t.TLSHandshakeTimeout = s.timeout()
			t.ResponseHeaderTimeout = s.timeout()
			c.Transport = t
		}
		c.CheckRedirect = RedirectPolicy(s.AllowInsecureHTTP)
		s.client = &c
	})
	return s.client
}

// RedirectPolicy returns an http.Client CheckRedirect that applies the bootstrapper's URL
// policy to every hop: https always; http only to a loopback host and only while no earlier
// hop was https, unless allowInsecure. The error is a *RedirectError naming the refused URL.
func RedirectPolicy(allowInsecure bool) func(req *http.Request, via []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		from := redact(via[len(via)-1].URL)
		refuse := func(reason string) error {
			return &RedirectError{From: from, To: redact(req.URL), Reason: reason}
		}
		if len(via) >= maxRedirects {
			return refuse(fmt.Sprintf("stopped after %d redirects", maxRedirects))
		}
		switch req.URL.Scheme {
		case "https":
			return nil
		case "http":
		default:
			return refuse(fmt.Sprintf("unsupported scheme %q", req.URL.Scheme))
		}
		if allowInsecure {
			return nil
		}
		if !isLoopback(req.URL.Hostname()) {
			return refuse("plain http is only allowed for loopback hosts; use https or pass --allow-insecure-http")
		}
		for _, r := range via {
			if r.URL.Scheme == "https" {
				return refuse("https must not be downgraded to plain http; pass --allow-insecure-http to allow it")
			}
		}
		return nil
	}
}

// Open sends a GET for u. A 4xx status other than 408 and 429 and a refused redirect are
// permanent; 5xx, 408, 429, transport errors and stalls (no progress for Timeout, also while
// the body is read) are retried by the caller.
func (s *HTTPSource) Open(parent context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	ctx, cancel := context.WithCancelCause(parent)
	stall := &StallError{URL: redact(u), Timeout: s.timeout()}
	timer := time.AfterFunc(stall.Timeout, func() { cancel(stall) })
	fail := func(err error) (io.ReadCloser, int64, error) {
		timer.Stop()
		// The stall timer and the transport's own timeouts (dial, TLS handshake, response
		// headers: the same duration) race; either one is the same stall.
		var timeout net.Error
		if errors.Is(context.Cause(ctx), stall) || (parent.Err() == nil && errors.As(err, &timeout) && timeout.Timeout()) {
			err = stall
		}
		cancel(nil)
		return nil, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fail(Permanent(err))
	}
	if s.UserAgent != "" {
		req.Header.Set("User-Agent", s.UserAgent)
	}
	resp, err := s.httpClient().Do(req)
	if err != nil {
		var redirect *RedirectError
		if errors.As(err, &redirect) {
			return fail(Permanent(redirect))
		}
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		err := fmt.Errorf("GET %s: %s", redact(u), resp.Status)
		switch {
		case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests,
			resp.StatusCode >= 500:
			return fail(err)
		}
		return fail(Permanent(err))
	}
	timer.Reset(stall.Timeout)
	return &stallReader{body: resp.Body, ctx: ctx, cancel: cancel, timer: timer, stall: stall}, resp.ContentLength, nil
}

// stallReader restarts the stall timer whenever the body yields bytes and reports a fired
// timer as the StallError.
type stallReader struct {
	body   io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	stall  *StallError
}

func (r *stallReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if n > 0 {
		r.timer.Reset(r.stall.Timeout)
	}
	if err != nil && err != io.EOF && errors.Is(context.Cause(r.ctx), r.stall) {
		err = r.stall
	}
	return n, err
}

func (r *stallReader) Close() error {
	r.timer.Stop()
	err := r.body.Close()
	r.cancel(nil)
	return err
}

// redact drops credentials and query strings (presigned URLs carry signatures) from u.
func redact(u *url.URL) string {
	c := *u
	c.User = nil
	if c.RawQuery != "" {
		c.RawQuery = "REDACTED"
	}
	return c.String()
}
