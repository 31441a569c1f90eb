package storage

import (
	"bytes"
	"context"
	"io"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// Defaults of ObjectBlobStoreOptions.
const (
	defaultExistenceConcurrency = 64
	defaultMaxCachedBlobs       = 1 << 20
)

// ObjectBlobStoreOptions configures an ObjectBlobStore.
type ObjectBlobStoreOptions struct {
	// ExistenceCacheTTL is how long a blob the object store confirmed present is taken as
	// present without asking again (0: always ask). Absence is never cached.
	ExistenceCacheTTL time.Duration
	// MaxCachedBlobs bounds the existence cache (1,048,576 entries, about 150 MiB, when zero),
	// which also remembers, past ExistenceCacheTTL, the object age of blobs it has seen, so
	// that reads served from the local tier know when the object needs a refresh.
	MaxCachedBlobs int
	// RefreshAge is the object age from which a blob that is used is refreshed in the bucket,
	// restarting the lifecycle rule's count (0: never refresh). It must be well below the
	// bucket's expiration age.
	RefreshAge time.Duration
	// Concurrency bounds the existence checks one FindMissing sends at once (64 when zero).
	Concurrency int
	// SpoolDir holds content being verified before upload (os.TempDir() when empty).
	SpoolDir string
	// Clock is the source of time for the existence cache and object ages (clock.System when nil).
	Clock clock.Clock
	// Logger receives warnings about corrupt objects and failed refreshes.
	Logger zerolog.Logger
	// Registerer, unless nil, registers the buildfleet_object_store_* metrics.
	Registerer prometheus.Registerer
}

// ObjectBlobStore is a BlobStore in an object store bucket (ObjectBucket: S3 or GCS).
//
// Key layout, under the bucket's prefix: each blob is one object "cas/HASH" (HASH the
// lower-case hex SHA-256), its size the blob's; the empty blob is implicit. Action results live
// beside them under "ac/" (ObjectActionCache). Objects are written once (a conditional put) and
// only after their content has been verified against the digest.
//
// FindMissing checks existence with up to Concurrency requests in flight and caches blobs found
// present for ExistenceCacheTTL. A present blob whose object is older than RefreshAge is
// refreshed (S3: copied onto itself; GCS: custom time moved), so that a bucket lifecycle rule
// expiring objects some time after RefreshAge deletes only blobs nobody has used since.
//
// Whole-blob reads are verified while they stream: a blob whose bytes do not match its digest
// ends its read with DATA_LOSS, is logged, and is deleted so that the next upload replaces it.
// Ranged reads are checked by size only; TieredBlobStore serves verified bytes in all cases.
type ObjectBlobStore struct {
	bucket  ObjectBucket
	opts    ObjectBlobStoreOptions
	cache   *existenceCache
	bg      *backgroundRefresher
	logger  zerolog.Logger
	metrics *objectStoreMetrics
}

// NewObjectBlobStore returns a BlobStore in bucket.
func NewObjectBlobStore(bucket ObjectBucket, opts ObjectBlobStoreOptions) *ObjectBlobStore {
	if opts.MaxCachedBlobs <= 0 {
		opts.MaxCachedBlobs = defaultMaxCachedBlobs
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = defaultExistenceConcurrency
	}
	if opts.SpoolDir == "" {
		opts.SpoolDir = os.TempDir()
	}
	if opts.Clock == nil {
		opts.Clock = clock.System
	}
	return &ObjectBlobStore{
		bucket:  bucket,
		opts:    opts,
		cache:   newExistenceCache(opts.ExistenceCacheTTL, opts.MaxCachedBlobs),
		bg:      newBackgroundRefresher(),
		logger:  opts.Logger.With().Str("component", "object_blob_store").Str("bucket", bucket.String()).Logger(),
		metrics: newObjectStoreMetrics(opts.Registerer),
	}
}

// blobKey returns the object key of blob d.
func blobKey(d digest.Digest) string { return "cas/" + d.Hash }

// checkRead validates a read of d from offset, at most limit bytes.
func checkRead(d digest.Digest, offset, limit int64) error {
	if offset < 0 || offset > d.Size {
		return status.Errorf(codes.OutOfRange, "Failed to read blob %s: read offset %d is outside the blob", d, offset)
	}
	if limit < 0 {
		return status.Errorf(codes.InvalidArgument, "Failed to read blob %s: negative read limit %d", d, limit)
	}
	return nil
}

// Get implements BlobStore.
func (s *ObjectBlobStore) Get(ctx context.Context, d digest.Digest, offset, limit int64) (io.ReadCloser, error) {
	if err := checkRead(d, offset, limit); err != nil {
		return nil, err
	}
	if d.IsEmpty() {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	if offset == d.Size {
		// Nothing to read, but the blob must exist.
		if missing, err := s.FindMissing(ctx, []digest.Digest{d}); err != nil {
			return nil, err
		} else if len(missing) > 0 {
			return nil, status.Errorf(codes.NotFound, "Blob %s not found", d)
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	if offset == 0 && (limit == 0 || limit >= d.Size) {
		r, err := s.open(ctx, d)
		if err != nil {
			return nil, err
		}
		return &verifiedReadCloser{r: r, v: newVerifyingWriter(io.Discard, d), onCorrupt: func(err error) {
			s.discardCorrupt(context.WithoutCancel(ctx), d, err)
		}}, nil
	}
	if limit == 0 || limit > d.Size-offset {
		limit = d.Size - offset
	}
	r, info, err := s.bucket.Get(ctx, blobKey(d), offset, limit)
	if status.Code(err) == codes.OutOfRange {
		// The range is inside the digest's size: the object is shorter than the blob.
		return nil, s.discardCorrupt(ctx, d, err)
	} else if err != nil {
		return nil, s.readError(err, d)
	}
	if info.Size != d.Size {
		r.Close()
		return nil, s.discardCorrupt(ctx, d, status.Errorf(codes.DataLoss, "object has %d bytes", info.Size))
	}
	return r, nil
}

// open opens the whole object of d (d not empty) without verifying its content, checking its
// size and noting it as present.
func (s *ObjectBlobStore) open(ctx context.Context, d digest.Digest) (io.ReadCloser, error) {
	r, info, err := s.bucket.Get(ctx, blobKey(d), 0, 0)
	if err != nil {
		return nil, s.readError(err, d)
	}
	if info.Size != d.Size {
		r.Close()
		return nil, s.discardCorrupt(ctx, d, status.Errorf(codes.DataLoss, "object has %d bytes", info.Size))
	}
	if !info.Time.IsZero() {
		s.cache.put(d, info.Time, s.opts.Clock.Now())
		s.used(ctx, d, info.Time)
	}
	return r, nil
}

func (s *ObjectBlobStore) readError(err error, d digest.Digest) error {
	if status.Code(err) == codes.NotFound {
		s.cache.remove(d)
		return status.Errorf(codes.NotFound, "Blob %s not found", d)
	}
	return rpcstatus.WrapCode(err, codes.Unavailable, "Failed to read blob %s", d)
}

// discardCorrupt logs that the object of d does not hold d's content, deletes it so that the
// next upload can replace it, and returns NOT_FOUND: a corrupt object is a miss.
func (s *ObjectBlobStore) discardCorrupt(ctx context.Context, d digest.Digest, cause error) error {
	s.logger.Warn().Err(cause).Str("digest", d.String()).Msg("Corrupt object in the object store: treating it as missing and deleting it")
	s.metrics.corrupt.Inc()
	s.cache.remove(d)
	if err := s.bucket.Delete(ctx, blobKey(d)); err != nil {
		s.logger.Warn().Err(err).Str("digest", d.String()).Msg("Failed to delete corrupt object")
	}
	return status.Errorf(codes.NotFound, "Blob %s not found (the stored object was corrupt)", d)
}

// FindMissing implements BlobStore.
func (s *ObjectBlobStore) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	missing := make([]bool, len(ds))
	first := make(map[digest.Digest]int, len(ds)) // Each digest is checked once.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Concurrency)
	for i, d := range ds {
		if d.IsEmpty() {
			continue
		}
		if _, dup := first[d]; dup {
			continue
		}
		first[d] = i
		if t, ok := s.cache.get(d, s.opts.Clock.Now()); ok {
			s.metrics.existenceChecks.WithLabelValues("cached").Inc()
			s.used(ctx, d, t)
			continue
		}
		g.Go(func() error {
			present, err := s.stat(gctx, d)
			missing[i] = !present
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Unavailable, "Failed to find missing blobs")
	}
	var out []digest.Digest
	for i, d := range ds {
		if j, ok := first[d]; ok && missing[j] {
			out = append(out, ds[i])
		}
	}
	return out, nil
}

// stat asks the object store whether d is present (with the right size), refreshing it when
// it is old.
func (s *ObjectBlobStore) stat(ctx context.Context, d digest.Digest) (bool, error) {
	info, err := s.bucket.Stat(ctx, blobKey(d))
	if status.Code(err) == codes.NotFound {
		s.metrics.existenceChecks.WithLabelValues("missing").Inc()
		return false, nil
	} else if err != nil {
		return false, err
	}
	if info.Size != d.Size {
		// A truncated or otherwise wrong object under the blob's key: deleted, so that the
		// next upload stores the right bytes (write-once would otherwise keep it for good).
		s.metrics.existenceChecks.WithLabelValues("missing").Inc()
		s.discardCorrupt(ctx, d, status.Errorf(codes.DataLoss, "object has %d bytes, the digest says %d", info.Size, d.Size))
		return false, nil
	}
	s.metrics.existenceChecks.WithLabelValues("present").Inc()
	s.cache.put(d, info.Time, s.opts.Clock.Now())
	s.used(ctx, d, info.Time)
	return true, nil
}

// exists reports whether d is present, from the existence cache when it can.
func (s *ObjectBlobStore) exists(ctx context.Context, d digest.Digest) (bool, error) {
	if t, ok := s.cache.get(d, s.opts.Clock.Now()); ok {
		s.metrics.existenceChecks.WithLabelValues("cached").Inc()
		s.used(ctx, d, t)
		return true, nil
	}
	return s.stat(ctx, d)
}

// used refreshes the object of d when its lifecycle time is RefreshAge or more in the past.
// A failed refresh is logged, not returned: the blob is there, and the next use tries again.
func (s *ObjectBlobStore) used(ctx context.Context, d digest.Digest, objectTime time.Time) {
	now := s.opts.Clock.Now()
	if s.opts.RefreshAge <= 0 || now.Sub(objectTime) < s.opts.RefreshAge {
		return
	}
	if err := s.bucket.Refresh(ctx, blobKey(d)); err != nil {
		if status.Code(err) == codes.NotFound {
			s.cache.remove(d)
			return
		}
		s.logger.Warn().Err(err).Str("digest", d.String()).Msg("Failed to refresh blob in the object store")
		return
	}
	s.metrics.refreshes.Inc()
	s.logger.Debug().Str("digest", d.String()).Time("object_time", objectTime).Msg("Refreshed blob in the object store")
	s.cache.put(d, now, now)
}

// usedLocally notes that d was served without asking the object store (from the local tier,
// which holds only blobs the bucket had when they entered it). When the object's lifecycle time
// as last seen (existence cache, kept past its TTL) is RefreshAge or more in the past, or not
// known (a local tier kept across a restart), the object is checked and refreshed if old, in
// the background: a read never waits for the bucket, and a blob read again and again costs one
// bucket request per RefreshAge.
func (s *ObjectBlobStore) usedLocally(d digest.Digest) {
	if s.opts.RefreshAge <= 0 || d.IsEmpty() {
		return
	}
	objectTime, known := s.cache.objectTime(d)
	if known && s.opts.Clock.Now().Sub(objectTime) < s.opts.RefreshAge {
		return
	}
	s.bg.start(d, func(ctx context.Context) {
		if known {
			s.used(ctx, d, objectTime)
			return
		}
		present, err := s.stat(ctx, d)
		if err != nil {
			s.logger.Warn().Err(err).Str("digest", d.String()).Msg("Failed to check the age of a blob served from the local tier")
		} else if !present {
			s.logger.Warn().Str("digest", d.String()).Msg("Blob served from the local tier is missing from the object store")
		}
	})
}

// Put implements BlobStore. The content is spooled to a file in SpoolDir and verified before
// any of it is uploaded.
func (s *ObjectBlobStore) Put(ctx context.Context, d digest.Digest, r io.Reader) error {
	if d.IsEmpty() {
		var one [1]byte
		if n, _ := io.ReadFull(r, one[:]); n > 0 {
			return status.Errorf(codes.InvalidArgument, "Failed to store blob %s: content is longer than the digest's size", d)
		}
		return nil
	}
	if present, err := s.exists(ctx, d); err != nil {
		return rpcstatus.WrapCode(err, codes.Unavailable, "Failed to store blob %s", d)
	} else if present {
		return nil
	}
	f, err := spoolVerified(ctx, s.opts.SpoolDir, d, r)
	if err != nil {
		return err
	}
	defer f.Close()
	return s.upload(ctx, d, f)
}

// upload writes the verified content of d, read from r (rewound before each attempt), to the
// object store unless the blob is there already. An object found under the key (the write-once
// put refused) counts as the blob only if its size is right; a wrong one is corrupt: it is
// logged, counted, deleted and replaced by one more put. A nil error means the bucket holds an
// object of d's size under d's key.
func (s *ObjectBlobStore) upload(ctx context.Context, d digest.Digest, r io.ReadSeeker) error {
	for attempt := 0; ; attempt++ {
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return status.Errorf(codes.Internal, "Failed to store blob %s: %v", d, err)
		}
		created, err := s.bucket.Create(ctx, blobKey(d), r, d.Size)
		if err != nil {
			return rpcstatus.WrapCode(err, codes.Unavailable, "Failed to store blob %s", d)
		}
		now := s.opts.Clock.Now()
		if created {
			s.metrics.uploads.Inc()
			s.metrics.uploadBytes.Add(float64(d.Size))
			s.cache.put(d, now, now)
			return nil
		}
		// Another object is there: a concurrent writer's, or a wrong one.
		info, err := s.bucket.Stat(ctx, blobKey(d))
		switch {
		case err == nil && info.Size == d.Size:
			s.cache.put(d, info.Time, now)
			return nil
		case status.Code(err) == codes.NotFound:
			// Deleted since the put was refused; put again.
		case err != nil:
			return rpcstatus.WrapCode(err, codes.Unavailable, "Failed to store blob %s: checking the object already there", d)
		default:
			s.discardCorrupt(ctx, d, status.Errorf(codes.DataLoss, "object has %d bytes, the digest says %d", info.Size, d.Size))
		}
		if attempt == 2 {
			return status.Errorf(codes.Unavailable, "Failed to store blob %s: the object store keeps refusing the write and holds no object of the blob's size", d)
		}
	}
}

// spoolVerified copies r into an unlinked temporary file in dir through a verifyingWriter and
// returns the file, rewound, once its content matches d.
func spoolVerified(ctx context.Context, dir string, d digest.Digest, r io.Reader) (*os.File, error) {
	f, err := os.CreateTemp(dir, d.Hash[:16]+"-*")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to store blob %s: %v", d, err)
	}
	os.Remove(f.Name()) // The open descriptor keeps the content until it is closed.
	v := newVerifyingWriter(f, d)
	bufp := copyBuffers.Get().(*[]byte)
	_, err = io.CopyBuffer(v, &contextReader{ctx: ctx, r: r}, *bufp)
	copyBuffers.Put(bufp)
	if err == nil {
		err = v.Verify()
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, status.FromContextError(ctxErr).Err()
		}
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to store blob %s", d)
	}
	return f, nil
}

// Probe checks that the bucket is there and that the credentials may use it (see
// ObjectBucket.Probe): nil, FAILED_PRECONDITION for a missing bucket, PERMISSION_DENIED or
// UNAUTHENTICATED for refused or absent credentials, UNAVAILABLE when the object store cannot
// be reached.
func (s *ObjectBlobStore) Probe(ctx context.Context) error {
	return rpcstatus.WrapCode(s.bucket.Probe(ctx), codes.Unavailable, "Failed to probe object store %s", s.bucket)
}
