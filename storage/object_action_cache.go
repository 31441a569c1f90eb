package storage

import (
	"context"
	"io"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// maxActionResultSize bounds the ActionResult of an action cache object read into memory.
const maxActionResultSize = 16 << 20

// ObjectActionCache is an ActionCache in an object store bucket. Each entry is one object
// "ac/KEY" under the bucket's prefix holding the serialized ActionResult, framed as
// DiskActionCache frames its files (a magic, the CRC-32C of the serialized ActionResult, then
// the ActionResult), where KEY is the hex SHA-256 of the length-prefixed instance name and the
// action digest (the same key as DiskActionCache's file names), so instance names never see
// each other's entries. A Put replaces the entry (one PUT: readers see the old object or the
// new one). An entry whose frame or checksum does not match (bytes changed in the bucket, a
// partial or foreign object, an unframed entry), or that does not parse, is a miss: it is
// logged and its object deleted, so that the next Put replaces it. An entry read when its
// object is refreshAge or more old is
// refreshed in the bucket, like blobs; wrap the cache in a CompletenessCheckingActionCache so
// results whose outputs are gone are misses.
type ObjectActionCache struct {
	bucket     ObjectBucket
	refreshAge time.Duration
	clock      clock.Clock
	logger     zerolog.Logger
}

// NewObjectActionCache returns an ActionCache in bucket. refreshAge 0 never refreshes; clk nil
// is clock.System.
func NewObjectActionCache(bucket ObjectBucket, refreshAge time.Duration, clk clock.Clock, logger zerolog.Logger) *ObjectActionCache {
	if clk == nil {
		clk = clock.System
	}
	return &ObjectActionCache{
		bucket:     bucket,
		refreshAge: refreshAge,
		clock:      clk,
		logger:     logger.With().Str("component", "object_action_cache").Str("bucket", bucket.String()).Logger(),
	}
}

func actionKey(instance string, d digest.Digest) string { return "ac/" + actionCacheKey(instance, d) }

// Get implements ActionCache.
func (c *ObjectActionCache) Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error) {
	key := actionKey(instance, d)
	r, info, err := c.bucket.Get(ctx, key, 0, 0)
	if status.Code(err) == codes.NotFound {
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found", d)
	} else if err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Unavailable, "Failed to read action result for %s", d)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxActionResultSize+entryHeaderLen+1))
	r.Close()
	if err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Unavailable, "Failed to read action result for %s", d)
	}
	result := &repb.ActionResult{}
	if len(b) > maxActionResultSize+entryHeaderLen {
		err = status.Errorf(codes.DataLoss, "entry is larger than %d bytes", maxActionResultSize)
	} else if b, err = decodeFramedEntry(b); err == nil {
		err = proto.Unmarshal(b, result)
	}
	if err != nil {
		c.logger.Warn().Err(err).Str("action_digest", d.String()).Str("instance_name", instance).Msg("Ignoring corrupt action cache entry and deleting it")
		if err := c.bucket.Delete(context.WithoutCancel(ctx), key); err != nil {
			c.logger.Warn().Err(err).Str("action_digest", d.String()).Msg("Failed to delete corrupt action cache entry")
		}
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found (corrupt entry)", d)
	}
	if c.refreshAge > 0 && !info.Time.IsZero() && c.clock.Now().Sub(info.Time) >= c.refreshAge {
		if err := c.bucket.Refresh(ctx, key); err != nil {
			c.logger.Warn().Err(err).Str("action_digest", d.String()).Msg("Failed to refresh action cache entry")
		}
	}
	return result, nil
}

// Put implements ActionCache.
func (c *ObjectActionCache) Put(ctx context.Context, instance string, d digest.Digest, result *repb.ActionResult) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(result)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "Failed to marshal action result for %s: %v", d, err)
	}
	if err := c.bucket.Replace(ctx, actionKey(instance, d), encodeEntry(b)); err != nil {
		return rpcstatus.WrapCode(err, codes.Unavailable, "Failed to store action result for %s", d)
	}
	return nil
}
