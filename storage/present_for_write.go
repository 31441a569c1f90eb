package storage

import (
	"context"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// presentForWriter is a BlobStore that decides for itself whether a write of a blob it reports
// present may be answered without the content. TieredBlobStore is one: its FindMissing trusts an
// object of the right size in the bucket, and only the client's bytes, verified into the local
// tier, make a read of the blob safe from a bucket copy changed behind its back.
type presentForWriter interface {
	// presentForWrite reports whether a write of d may be answered at once, without its
	// content.
	presentForWrite(ctx context.Context, d digest.Digest) (bool, error)
}

// presentForWrite reports whether cas may answer a write of d without its content: the store's
// own answer when it has one (presentForWriter), else whether FindMissing reports d present.
func presentForWrite(ctx context.Context, cas BlobStore, d digest.Digest) (bool, error) {
	if p, ok := cas.(presentForWriter); ok {
		return p.presentForWrite(ctx, d)
	}
	missing, err := cas.FindMissing(ctx, []digest.Digest{d})
	return err == nil && len(missing) == 0, err
}
