package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"cloud.google.com/go/storage"
)

// GCSObjectReader is the one operation of the Cloud Storage client that GCSSource uses.
type GCSObjectReader interface {
	// NewReader opens bucket/object and returns its content and size.
	NewReader(ctx context.Context, bucket, object string) (io.ReadCloser, int64, error)
}

// GCSSource fetches gs://BUCKET/OBJECT URLs.
type GCSSource struct {
	// Client reads objects.
	Client GCSObjectReader
}

// NewGCSSource creates a GCSSource with Application Default Credentials (on GCE, the VM's
// service account from the metadata server).
func NewGCSSource(ctx context.Context) (Source, error) {
	client, err := storage.NewClient(ctx)
	if err != nil {
		return nil, err
	}
	return &GCSSource{Client: storageClientReader{client}}, nil
}

// Open reads the object. A missing bucket or object is permanent.
func (s *GCSSource) Open(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	bucket, object := u.Host, strings.TrimPrefix(u.Path, "/")
	rc, size, err := s.Client.NewReader(ctx, bucket, object)
	if err != nil {
		err = fmt.Errorf("gcs read gs://%s/%s: %w", bucket, object, err)
		if errors.Is(err, storage.ErrObjectNotExist) || errors.Is(err, storage.ErrBucketNotExist) {
			return nil, 0, Permanent(err)
		}
		return nil, 0, err
	}
	return rc, size, nil
}

// storageClientReader adapts *storage.Client to GCSObjectReader.
type storageClientReader struct{ c *storage.Client }

func (r storageClientReader) NewReader(ctx context.Context, bucket, object string) (io.ReadCloser, int64, error) {
	rd, err := r.c.Bucket(bucket).Object(object).NewReader(ctx)
	if err != nil {
		return nil, 0, err
	}
	return rd, rd.Attrs.Size, nil
}
