package storage

import (
	"context"
	"io"
)

// ObjectBucket is the narrow view of an object store (an S3 or GCS bucket under a key prefix)
// that ObjectBlobStore and ObjectActionCache are built on. Keys are relative to the prefix.
//
// Errors carry gRPC status codes: NOT_FOUND for an absent object, UNAVAILABLE when the object
// store cannot be reached or does not answer in time, PERMISSION_DENIED when it refuses the
// credentials, the context's code when the caller gave up.
type ObjectBucket interface {
	// Stat returns the size and lifecycle time of the object at key.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// Get opens the object at key for reading from offset, at most length bytes (0: to the
	// end), and returns its info.
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error)
	// Create stores size bytes read from r at key unless an object exists there already
	// (write-once: a conditional put that the object store checks). It reports whether this
	// call created the object; when one existed, it is left as it was.
	Create(ctx context.Context, key string, r io.Reader, size int64) (created bool, err error)
	// Replace stores data at key, replacing any object there.
	Replace(ctx context.Context, key string, data []byte) error
	// Refresh restarts the lifecycle age of the object at key (NOT_FOUND if it is gone).
	Refresh(ctx context.Context, key string) error
	// Delete removes the object at key; an absent object is not an error.
	Delete(ctx context.Context, key string) error
	// Probe checks that the bucket exists and that the credentials may use it: nil, or
	// FAILED_PRECONDITION for a missing bucket, PERMISSION_DENIED or UNAUTHENTICATED for
	// refused or absent credentials, UNAVAILABLE when the object store cannot be reached.
	Probe(ctx context.Context) error
	// String names the bucket and prefix for logs, e.g. "s3://bucket/prefix".
	String() string
}

// probeKey is a key Probe reads that never holds an object: the empty blob is never stored.
const probeKey = "cas/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
