package storage

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// TieredBlobStore is a BlobStore in an object store (ObjectBlobStore, the copy that outlives
// machines) with a DiskBlobStore in front of it as a bounded local tier.
//
//   - Get serves from the local tier. On a miss it downloads the whole blob from the object
//     store into the local tier, where it is hashed while it is written and kept only if it
//     matches its digest; a corrupt object is a logged miss (NOT_FOUND), never served.
//     Concurrent misses of one blob share one download. Blobs larger than the local tier are
//     verified into an unlinked spool file and served from there.
//   - Put verifies the content into the local tier, then uploads it from there to the object
//     store (unless the object store has an object of the blob's size already, which is taken
//     as the blob) before it returns. Either way the verified bytes stay in the local tier, so
//     reads serve them even if the bucket's copy was changed behind our back; such a copy is
//     found, deleted and reported missing when it is next read from the bucket. A ByteStream
//     write is answered without its content only when the local tier holds the blob too
//     (presentForWrite). When the upload fails, the blob is dropped from the local tier again, so
//     that Get never serves a blob FindMissing reports missing.
//   - A read served by the local tier refreshes the bucket's object when it may be older than
//     the refresh age, in the background (ObjectBlobStore.usedLocally).
//   - FindMissing asks the object store (with its existence cache); the local tier is a cache
//     and decides nothing about presence.
//
// The local tier keeps its least-recently-used order and size bound; evicting from it never
// loses a blob.
type TieredBlobStore struct {
	local    *DiskBlobStore
	remote   *ObjectBlobStore
	spoolDir string
	fills    singleflight.Group
	logger   zerolog.Logger
}

// NewTieredBlobStore puts local in front of remote. Blobs too large for local are spooled to
// spoolDir (os.TempDir() when empty) while they are verified.
func NewTieredBlobStore(local *DiskBlobStore, remote *ObjectBlobStore, spoolDir string, logger zerolog.Logger) *TieredBlobStore {
	if spoolDir == "" {
		spoolDir = os.TempDir()
	}
	return &TieredBlobStore{
		local:    local,
		remote:   remote,
		spoolDir: spoolDir,
		logger:   logger.With().Str("component", "tiered_blob_store").Logger(),
	}
}

// Get implements BlobStore.
func (t *TieredBlobStore) Get(ctx context.Context, d digest.Digest, offset, limit int64) (io.ReadCloser, error) {
	if err := checkRead(d, offset, limit); err != nil {
		return nil, err
	}
	if d.Size > t.local.MaxSize() {
		return t.getSpooled(ctx, d, offset, limit)
	}
	for attempt := 0; ; attempt++ {
		r, err := t.local.Get(ctx, d, offset, limit)
		if err == nil {
			t.remote.usedLocally(d)
		}
		if status.Code(err) != codes.NotFound || attempt == 2 {
			return r, err
		}
		if err := t.fill(ctx, d); err != nil {
			return nil, err
		}
		// Filled; read it from the local tier (again, should it have been evicted at once).
	}
}

// fillTimeout bounds a download into the local tier, plus 1 s per MiB of the blob: a fill
// outlives the caller that started it (others may wait for it) but never hangs for good.
const fillTimeout = time.Minute

// fill downloads d from the object store into the local tier, sharing the download with
// concurrent callers. The download goes on if this caller gives up while others wait.
func (t *TieredBlobStore) fill(ctx context.Context, d digest.Digest) error {
	ch := t.fills.DoChan(d.String(), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fillTimeout+time.Duration(d.Size/minTransferRate)*time.Second)
		defer cancel()
		r, err := t.remote.open(fctx, d)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		err = t.local.Put(fctx, d, r)
		if c := status.Code(err); c == codes.InvalidArgument || c == codes.DataLoss {
			return nil, t.remote.discardCorrupt(fctx, d, err)
		}
		if err != nil {
			return nil, rpcstatus.WrapCode(err, codes.Unavailable, "Failed to fetch blob %s from the object store", d)
		}
		t.remote.metrics.fills.Inc()
		t.remote.metrics.fillBytes.Add(float64(d.Size))
		return nil, nil
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// getSpooled serves a blob larger than the local tier from a verified, unlinked spool file.
func (t *TieredBlobStore) getSpooled(ctx context.Context, d digest.Digest, offset, limit int64) (io.ReadCloser, error) {
	r, err := t.remote.open(ctx, d)
	if err != nil {
		return nil, err
	}
	f, err := spoolVerified(ctx, t.spoolDir, d, r)
	r.Close()
	if c := status.Code(err); c == codes.InvalidArgument || c == codes.DataLoss {
		return nil, t.remote.discardCorrupt(ctx, d, err)
	}
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, status.Errorf(codes.Internal, "Failed to seek in blob %s: %v", d, err)
	}
	if limit == 0 || limit > d.Size-offset {
		limit = d.Size - offset
	}
	return &sectionReadCloser{Reader: io.LimitReader(f, limit), Closer: f}, nil
}

// FindMissing implements BlobStore.
func (t *TieredBlobStore) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	return t.remote.FindMissing(ctx, ds)
}

// presentForWrite reports whether a write of d may be answered without its content: when the
// local tier holds d (verified bytes) and the bucket has it. A blob only the bucket has is
// received and verified into the local tier (Put), so that reads through this scheduler serve
// the client's bytes even if the bucket's copy was changed behind its back; a blob too large
// for the local tier has nowhere to be kept, and the bucket's answer stands.
func (t *TieredBlobStore) presentForWrite(ctx context.Context, d digest.Digest) (bool, error) {
	if d.IsEmpty() {
		return true, nil
	}
	if d.Size <= t.local.MaxSize() {
		if missing, err := t.local.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) > 0 {
			return false, err
		}
	}
	missing, err := t.remote.FindMissing(ctx, []digest.Digest{d})
	return err == nil && len(missing) == 0, err
}

// Put implements BlobStore. The content is verified into the local tier (when it fits) before
// the object store is asked about the blob, so an upload of a blob the bucket has already leaves
// the client's verified bytes in the local tier.
func (t *TieredBlobStore) Put(ctx context.Context, d digest.Digest, r io.Reader) error {
	if d.Size > t.local.MaxSize() {
		return t.remote.Put(ctx, d, r)
	}
	f, err := t.local.putOpen(ctx, d, r)
	if err != nil {
		return err
	}
	defer f.Close()
	if d.IsEmpty() {
		return nil
	}
	present, err := t.remote.exists(ctx, d)
	if err == nil && !present {
		err = t.remote.upload(ctx, d, f)
	}
	if err != nil {
		// Not in the bucket: the local tier must not serve it either (reads and
		// FindMissing agree). The client retries the write.
		t.local.drop(d)
		return rpcstatus.WrapCode(err, codes.Unavailable, "Failed to store blob %s", d)
	}
	return nil
}
