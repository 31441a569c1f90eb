// Package storage holds buildfleet's content-addressable storage and action cache behind small
// interfaces, the embedded disk backend, the object store backends (S3 and GCS, with the disk
// store as a local tier in front), and the REAPI gRPC services built on them (CAS, ByteStream,
// ActionCache, Capabilities).
//
// Object store key layout, under the bucket's prefix (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX):
//
//	PREFIX/cas/HASH   the blob whose SHA-256 is HASH (lower-case hex); its size is the blob's
//	PREFIX/ac/KEY     a serialized ActionResult, framed: the magic 00 62 66 61 63 01, the
//	                  big-endian CRC-32C of the serialized ActionResult, the ActionResult; KEY
//	                  is the hex SHA-256 of the instance name's length (8 bytes, big-endian),
//	                  the instance name and "HASH/SIZE" of the action digest
//
// Blobs are written once and only after their content was verified; action results are
// replaced by newer ones. Objects age out by the bucket's lifecycle rule (S3: expiration days
// after the last modification; GCS: days since custom time) unless they are used: an object
// used when it is older than the refresh age is refreshed (copied onto itself on S3, its custom
// time moved forward on GCS).
package storage

import (
	"context"
	"io"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// BlobStore is a content-addressable store of blobs keyed by their SHA-256 digest. It is shared
// by every instance name: content addressing makes that safe.
//
// Errors carry gRPC status codes: NOT_FOUND for an absent blob, INVALID_ARGUMENT for content
// that does not match its digest, RESOURCE_EXHAUSTED when the store cannot make room.
type BlobStore interface {
	// Get opens the blob d for reading from offset, at most limit bytes (limit 0 means to the
	// end). The empty blob is always present.
	Get(ctx context.Context, d digest.Digest, offset, limit int64) (io.ReadCloser, error)
	// Put stores the content read from r as blob d. The content is hashed and counted while
	// it is written; unless it matches d exactly nothing is stored. Concurrent Puts of the same
	// blob are safe. Storing a blob that is already present refreshes it.
	Put(ctx context.Context, d digest.Digest, r io.Reader) error
	// FindMissing returns the digests of ds that are not stored, in the order given. Present
	// blobs are refreshed (they count as used for eviction).
	FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error)
}
