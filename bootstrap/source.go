package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
)

// Source opens the worker binary at a URL for reading from its first byte.
type Source interface {
	// Open returns the object's content and its size in bytes (-1 when unknown). Errors
	// that retrying cannot cure are wrapped with Permanent.
	Open(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error)
}

// PermanentError marks a download error that retrying will not cure (a 404, a bad request).
type PermanentError struct{ Err error }

// Error returns the wrapped error's message.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that the retry loop gives up at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with Permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// SchemeSource picks a Source by URL scheme. The s3 and gs sources are created on first use,
// so that machines fetching over https never load cloud credentials.
type SchemeSource struct {
	// HTTP serves http:// and https:// URLs.
	HTTP Source
	// NewS3 creates the s3:// source on first use.
	NewS3 func(ctx context.Context) (Source, error)
	// NewGCS creates the gs:// source on first use.
	NewGCS func(ctx context.Context) (Source, error)

	mu  sync.Mutex
	s3  Source
	gcs Source
}

// Open dispatches to the Source for u's scheme.
func (s *SchemeSource) Open(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	src, err := s.sourceFor(ctx, u.Scheme)
	if err != nil {
		return nil, 0, err
	}
	return src.Open(ctx, u)
}

func (s *SchemeSource) sourceFor(ctx context.Context, scheme string) (Source, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lazy := func(cached *Source, make func(context.Context) (Source, error), what string) (Source, error) {
		if *cached != nil {
			return *cached, nil
		}
		if make == nil {
			return nil, Permanent(fmt.Errorf("%s:// URLs are not supported by this build", what))
		}
		src, err := make(ctx)
		if err != nil {
			return nil, fmt.Errorf("setting up %s:// client: %w", what, err)
		}
		*cached = src
		return src, nil
	}
	switch scheme {
	case "http", "https":
		if s.HTTP == nil {
			return nil, Permanent(fmt.Errorf("http(s) URLs are not supported by this build"))
		}
		return s.HTTP, nil
	case "s3":
		return lazy(&s.s3, s.NewS3, "s3")
	case "gs":
		return lazy(&s.gcs, s.NewGCS, "gs")
	}
	return nil, Permanent(fmt.Errorf("unsupported URL scheme %q", scheme))
}
