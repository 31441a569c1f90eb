package bootstrap

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// HTTPSource fetches http:// and https:// URLs with an http.Client.
type HTTPSource struct {
	// Client sends the requests; http.DefaultClient when nil.
	Client *http.Client
	// UserAgent is sent with every request when set.
	UserAgent string
}

// Open sends a GET for u. A 4xx status other than 408 and 429 is permanent; 5xx, 408, 429
// and transport errors are retried by the caller.
func (s *HTTPSource) Open(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, Permanent(err)
	}
	if s.UserAgent != "" {
		req.Header.Set("User-Agent", s.UserAgent)
	}
	client := s.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		err := fmt.Errorf("GET %s: %s", redact(u), resp.Status)
		switch {
		case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests,
			resp.StatusCode >= 500:
			return nil, 0, err
		}
		return nil, 0, Permanent(err)
	}
	return resp.Body, resp.ContentLength, nil
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
