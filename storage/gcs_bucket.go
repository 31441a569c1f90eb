package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// defaultGCSChunkSize is the size of the chunks of a resumable GCS upload; smaller objects go
// in one request.
const defaultGCSChunkSize = 16 << 20

// GCSBucketConfig configures a GCSBucket.
type GCSBucketConfig struct {
	// Bucket and Prefix name where the objects live.
	Bucket, Prefix string
	// Timeout bounds how long one request waits for the server (plus transfer time at 1 MiB/s
	// for requests that carry data); 0 means no bound.
	Timeout time.Duration
	// ClientOptions are passed to storage.NewClient (credentials come from Application
	// Default Credentials otherwise; STORAGE_EMULATOR_HOST points the client at an emulator
	// such as fake-gcs-server, without credentials).
	ClientOptions []option.ClientOption
	// Clock stamps objects' custom time (clock.System when nil).
	Clock clock.Clock
}

// GCSBucket is an ObjectBucket on Google Cloud Storage, through cloud.google.com/go/storage.
// Create writes with a does-not-exist precondition (ifGenerationMatch=0), so the first object
// written to a key stays. Every object carries a custom time, set when it is written and moved
// forward by Refresh (a metadata update, no copy); the bucket's lifecycle rule deletes objects
// by days since custom time.
type GCSBucket struct {
	client *storage.Client
	bucket *storage.BucketHandle
	loc    ObjectStoreURL
	cfg    GCSBucketConfig
}

// NewGCSBucket returns a GCSBucket for cfg. It sends no request.
func NewGCSBucket(ctx context.Context, cfg GCSBucketConfig) (*GCSBucket, error) {
	if cfg.Bucket == "" {
		return nil, status.Error(codes.InvalidArgument, "GCS bucket name is empty")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	client, err := storage.NewClient(ctx, cfg.ClientOptions...)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Failed to create the GCS client: %v", err)
	}
	return &GCSBucket{
		client: client,
		bucket: client.Bucket(cfg.Bucket),
		loc:    ObjectStoreURL{Scheme: "gs", Bucket: cfg.Bucket, Prefix: strings.Trim(cfg.Prefix, "/")},
		cfg:    cfg,
	}, nil
}

// Close releases the client's connections.
func (b *GCSBucket) Close() error { return b.client.Close() }

// String implements ObjectBucket.
func (b *GCSBucket) String() string { return b.loc.String() }

func (b *GCSBucket) object(key string) *storage.ObjectHandle {
	return b.bucket.Object(b.loc.key(key))
}

// Stat implements ObjectBucket.
func (b *GCSBucket) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	defer cancel()
	attrs, err := b.object(key).Attrs(rctx)
	if err != nil {
		return ObjectInfo{}, requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to stat %s/%s", b, key))
	}
	t := attrs.CustomTime
	if t.IsZero() {
		t = attrs.Created
	}
	return ObjectInfo{Size: attrs.Size, Time: t}, nil
}

// Get implements ObjectBucket. The info's time is the object's last update (which a Refresh
// moves too).
func (b *GCSBucket) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error) {
	if length == 0 {
		length = -1
	}
	r, info, err := openWithTimeout(ctx, b.cfg.Timeout, func(ctx context.Context) (io.ReadCloser, ObjectInfo, error) {
		r, err := b.object(key).NewRangeReader(ctx, offset, length)
		if err != nil {
			return nil, ObjectInfo{}, err
		}
		return &gcsReader{r}, ObjectInfo{Size: r.Attrs.Size, Time: r.Attrs.LastModified}, nil
	})
	if err != nil {
		return nil, ObjectInfo{}, requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to read %s/%s", b, key))
	}
	return r, info, nil
}

// gcsReader turns the client library's checksum failures at the end of a read (the object's
// bytes do not match the CRC32C or MD5 GCS keeps for it) into DATA_LOSS, so that callers treat
// the object as corrupt rather than the object store as unavailable.
type gcsReader struct{ *storage.Reader }

func (r *gcsReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if err != nil && err != io.EOF && isGCSChecksumError(err) {
		err = status.Errorf(codes.DataLoss, "object content does not match its checksum: %v", err)
	}
	return n, err
}

// isGCSChecksumError reports whether err is the client library's checksum mismatch on a read
// ("storage: bad CRC on read: ...", "storage: bad md5 ..."), which it returns as plain errors.
func isGCSChecksumError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "storage: bad CRC") || strings.Contains(msg, "storage: bad md5")
}

// Probe implements ObjectBucket: it reads the bucket's attributes, so that a missing bucket is
// FAILED_PRECONDITION and refused credentials PERMISSION_DENIED. Credentials that may use
// objects but not read bucket metadata (roles/storage.objectUser lacks storage.buckets.get)
// get PERMISSION_DENIED there; the probe then reads a key that never exists instead.
func (b *GCSBucket) Probe(ctx context.Context) error {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	defer cancel()
	_, err := b.bucket.Attrs(rctx)
	err = requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to read the attributes of bucket %s", b.loc.Bucket))
	if status.Code(err) != codes.PermissionDenied {
		return err
	}
	r, _, err := b.Get(ctx, probeKey, 0, 0)
	if err == nil {
		r.Close()
		return nil
	}
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

// Create implements ObjectBucket.
func (b *GCSBucket) Create(ctx context.Context, key string, r io.Reader, size int64) (bool, error) {
	err := b.write(ctx, b.object(key).If(storage.Conditions{DoesNotExist: true}), r, size)
	if err == nil {
		return true, nil
	}
	var gerr *googleapi.Error
	if errors.As(err, &gerr) && gerr.Code == http.StatusPreconditionFailed {
		return false, nil // Written before: the first object stays.
	}
	return false, requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to write %s/%s", b, key))
}

// Replace implements ObjectBucket.
func (b *GCSBucket) Replace(ctx context.Context, key string, data []byte) error {
	err := b.write(ctx, b.object(key), bytes.NewReader(data), int64(len(data)))
	return requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to write %s/%s", b, key))
}

// write uploads size bytes from r to o with the custom time set to now.
func (b *GCSBucket) write(ctx context.Context, o *storage.ObjectHandle, r io.Reader, size int64) error {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, size)
	defer cancel()
	w := o.NewWriter(rctx)
	w.CustomTime = b.cfg.Clock.Now().UTC()
	w.ChunkSize = defaultGCSChunkSize
	if size < defaultGCSChunkSize {
		w.ChunkSize = 0 // One request, no resumable session.
	}
	if _, err := io.Copy(w, r); err != nil {
		cancel() // Abandons the upload; Close then reports the cancellation.
		w.Close()
		return err
	}
	return w.Close()
}

// Refresh implements ObjectBucket.
func (b *GCSBucket) Refresh(ctx context.Context, key string) error {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	defer cancel()
	_, err := b.object(key).Update(rctx, storage.ObjectAttrsToUpdate{CustomTime: b.cfg.Clock.Now().UTC()})
	return requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to refresh %s/%s", b, key))
}

// Delete implements ObjectBucket.
func (b *GCSBucket) Delete(ctx context.Context, key string) error {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	defer cancel()
	err := b.object(key).Delete(rctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return nil
	}
	return requestError(ctx, err, classifyGCSError, fmt.Sprintf("Failed to delete %s/%s", b, key))
}

// classifyGCSError maps GCS's answers to gRPC codes.
func classifyGCSError(err error) (codes.Code, bool) {
	if errors.Is(err, storage.ErrObjectNotExist) {
		return codes.NotFound, true
	}
	if errors.Is(err, storage.ErrBucketNotExist) {
		return codes.FailedPrecondition, true
	}
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		switch c := gerr.Code; {
		case c == http.StatusNotFound:
			return codes.NotFound, true
		case c == http.StatusForbidden || c == http.StatusUnauthorized:
			return codes.PermissionDenied, true
		case c == http.StatusRequestedRangeNotSatisfiable:
			return codes.OutOfRange, true
		case c >= 400 && c < 500 && c != http.StatusTooManyRequests && c != http.StatusRequestTimeout:
			return codes.Internal, true
		}
	}
	return codes.Unavailable, false
}
