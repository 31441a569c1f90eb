package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// DiskActionCache is an ActionCache that keeps each entry as a serialized ActionResult in its
// own file under DIR/ac/{key[:2]}/{key}, where key is the SHA-256 of the instance name and the
// action digest, so instance names never see each other's entries. Entries are written to a
// temporary file and renamed into place, so a reader sees the old entry or the new one, never a
// mix, and they survive restarts. Entries are small (hundreds of bytes); the outputs they name
// live in the BlobStore, and a CompletenessCheckingActionCache turns entries whose outputs were
// evicted into misses.
type DiskActionCache struct {
	acDir  string
	tmpDir string
	logger zerolog.Logger
}

// NewDiskActionCache opens (creating if needed) a disk action cache in dir and removes
// temporary files left by a previous process. Give it a directory of its own (for example
// DATA/ac next to DATA/cas for the DiskBlobStore).
func NewDiskActionCache(dir string, logger zerolog.Logger) (*DiskActionCache, error) {
	c := &DiskActionCache{
		acDir:  filepath.Join(dir, "ac"),
		tmpDir: filepath.Join(dir, "tmp"),
		logger: logger.With().Str("component", "disk_action_cache").Str("dir", dir).Logger(),
	}
	for _, d := range []string{c.acDir, c.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to create action cache directory: %v", err)
		}
	}
	stale, err := os.ReadDir(c.tmpDir)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to list action cache temporary files: %v", err)
	}
	for _, e := range stale {
		if err := os.RemoveAll(filepath.Join(c.tmpDir, e.Name())); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to remove stale temporary file: %v", err)
		}
	}
	return c, nil
}

// key returns the file name of the entry for action d in instance. The instance name is
// length-prefixed so that no two (instance, digest) pairs share a key.
func (c *DiskActionCache) key(instance string, d digest.Digest) string {
	return actionCacheKey(instance, d)
}

// actionCacheKey returns the hex SHA-256 of the length-prefixed instance name and the action
// digest, the key of an action cache entry on disk and in an object store.
func actionCacheKey(instance string, d digest.Digest) string {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(instance)))
	h.Write(n[:])
	h.Write([]byte(instance))
	h.Write([]byte(d.String()))
	return hex.EncodeToString(h.Sum(nil))
}

func (c *DiskActionCache) path(key string) string {
	return filepath.Join(c.acDir, key[:2], key)
}

// Get implements ActionCache.
func (c *DiskActionCache) Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error) {
	b, err := os.ReadFile(c.path(c.key(instance, d)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found", d)
	} else if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to read action result for %s: %v", d, err)
	}
	result := &repb.ActionResult{}
	if err := proto.Unmarshal(b, result); err != nil {
		// A corrupt entry (which atomic writes should prevent) is a miss, not a failed build.
		c.logger.Warn().Err(err).Str("action_digest", d.String()).Msg("Ignoring corrupt action cache entry")
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found (corrupt entry)", d)
	}
	return result, nil
}

// Put implements ActionCache.
func (c *DiskActionCache) Put(ctx context.Context, instance string, d digest.Digest, result *repb.ActionResult) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(result)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "Failed to marshal action result for %s: %v", d, err)
	}
	key := c.key(instance, d)
	tmp, err := os.CreateTemp(c.tmpDir, key[:16]+"-*")
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	defer os.Remove(tmp.Name()) // No-op once renamed.
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return status.Errorf(codes.Internal, "Failed to sync action result for %s: %v", d, err)
	}
	if err := tmp.Close(); err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	final := c.path(key)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	return nil
}
