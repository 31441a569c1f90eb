package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
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
// mix, and they survive restarts of the process. Entries are small (hundreds of bytes); the
// outputs they name live in the BlobStore, and a CompletenessCheckingActionCache turns entries
// whose outputs were evicted into misses.
//
// Durability: Put does not fsync. Writing an entry sits on the critical path of every executed
// action (the scheduler caches a result before it publishes it), and an fsync there cost about
// 2.4 ms per action. An entry lost to a machine crash (a process crash loses nothing: the page
// cache survives it) is only a cache miss: the action runs again. What must never happen is that
// a torn entry is served, and a crash between the rename and the kernel's write-back can leave a
// file that is empty, short or zero-filled under the final name. So every entry is framed: the
// magic entryMagic, the CRC-32C of the serialized ActionResult, then the ActionResult; Get
// serves an entry only when the magic and the checksum match, and treats anything else as a
// miss (and logs it). The magic starts with a zero byte, which no serialized ActionResult can
// start with (field number 0 is invalid), so entries written by earlier versions (bare
// ActionResults, fsynced) are still read.
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

// entryMagic starts every entry file written by Put; entryHeaderLen is the magic and the
// big-endian CRC-32C of the serialized ActionResult that follows it.
var entryMagic = []byte{0, 'b', 'f', 'a', 'c', 1}

const entryHeaderLen = 6 + 4

// castagnoli is the CRC-32C table of entry checksums.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encodeEntry returns the entry file of a serialized ActionResult: magic, checksum, payload.
func encodeEntry(payload []byte) []byte {
	b := make([]byte, entryHeaderLen, entryHeaderLen+len(payload))
	copy(b, entryMagic)
	binary.BigEndian.PutUint32(b[len(entryMagic):], crc32.Checksum(payload, castagnoli))
	return append(b, payload...)
}

// decodeEntry returns the serialized ActionResult in an entry file, or an error when the file is
// torn (empty, short, zero-filled, failing its checksum). A file without the magic whose first
// byte is not zero is an entry of an earlier version: a bare ActionResult.
func decodeEntry(b []byte) ([]byte, error) {
	if len(b) > 0 && b[0] != 0 {
		return b, nil
	}
	return decodeFramedEntry(b)
}

// decodeFramedEntry returns the serialized ActionResult in an entry written by encodeEntry, or an
// error when b is not one (empty, short, without the magic, failing its checksum). Unlike
// decodeEntry it accepts no bare ActionResult: the object store's entries were framed from the
// start.
func decodeFramedEntry(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, errors.New("empty entry")
	}
	if len(b) < entryHeaderLen || string(b[:len(entryMagic)]) != string(entryMagic) {
		return nil, errors.New("bad entry header")
	}
	payload := b[entryHeaderLen:]
	if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(b[len(entryMagic):]) {
		return nil, errors.New("entry checksum mismatch")
	}
	return payload, nil
}

// Get implements ActionCache. A torn or corrupt entry is a miss (NOT_FOUND), never served.
func (c *DiskActionCache) Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error) {
	b, err := os.ReadFile(c.path(c.key(instance, d)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found", d)
	} else if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to read action result for %s: %v", d, err)
	}
	payload, err := decodeEntry(b)
	result := &repb.ActionResult{}
	if err == nil {
		err = proto.Unmarshal(payload, result)
	}
	if err != nil {
		// A torn entry (a machine crash before write-back) is a miss, not a failed build.
		c.logger.Warn().Err(err).Str("action_digest", d.String()).Msg("Ignoring corrupt action cache entry")
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found (corrupt entry)", d)
	}
	return result, nil
}

// Put implements ActionCache. The entry is written to a temporary file and renamed into place
// without an fsync (see DiskActionCache for why that is safe).
func (c *DiskActionCache) Put(ctx context.Context, instance string, d digest.Digest, result *repb.ActionResult) error {
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(result)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "Failed to marshal action result for %s: %v", d, err)
	}
	key := c.key(instance, d)
	tmp, err := os.CreateTemp(c.tmpDir, key[:16]+"-*")
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	defer os.Remove(tmp.Name()) // No-op once renamed.
	if _, err := tmp.Write(encodeEntry(payload)); err != nil {
		tmp.Close()
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	if err := tmp.Close(); err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	final := c.path(key)
	err = os.Rename(tmp.Name(), final)
	if errors.Is(err, fs.ErrNotExist) { // the first entry of its shard directory
		if err = os.MkdirAll(filepath.Dir(final), 0o755); err == nil {
			err = os.Rename(tmp.Name(), final)
		}
	}
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to store action result for %s: %v", d, err)
	}
	return nil
}
