package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// touchGranularity bounds how often a blob's file time is rewritten when the blob is used.
// File times carry the least-recently-used order across restarts; finer precision than this is
// not worth a system call on every hit.
const touchGranularity = time.Minute

// copyBufferSize is the size of the buffers used to stream blobs into the store.
const copyBufferSize = 256 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// DiskBlobStore is a BlobStore that keeps each blob in its own file under
// DIR/cas/{hash[:2]}/{hash}, bounded in total size by evicting the least recently used blobs.
//
// Writes go to a temporary file under DIR/tmp (same file system) while the content is hashed
// and counted; the file is renamed into place only when size and SHA-256 match, so a reader
// never sees a partial or wrong blob. The index of sizes and use order lives in memory and is
// rebuilt from the directory at start-up (order from file modification times), so the store
// survives restarts. One process at a time may open a directory.
//
// Durability: by default a blob is not fsynced before it is renamed into place (WithFsync
// turns that on). A crash of the process loses nothing (the page cache holds the bytes); a crash
// of the machine may leave recently written blob files short or with wrong bytes. Such a blob is
// never served: Close syncs the file system and writes DIR/CLEAN, and a store opened without
// that marker (after a crash) treats every blob as unverified. An unverified blob is hashed
// before it is first served or reported present (Get, Path, FindMissing, Put), and a background
// pass hashes the rest; a blob whose content does not match its name is removed and is missing
// from then on, so clients upload it again.
type DiskBlobStore struct {
	casDir  string
	tmpDir  string
	maxSize int64
	clock   clock.Clock
	logger  zerolog.Logger
	metrics *blobStoreMetrics
	dir     string
	lock    *os.File // Holds an exclusive flock on DIR/LOCK while open.
	// fsync syncs each blob's file before it is renamed into place.
	fsync bool
	// stopVerify ends the background verification of blobs after an unclean shutdown;
	// verifyDone is closed when it has ended.
	stopVerify chan struct{}
	verifyDone chan struct{}
	// freeSpace reports the bytes available to unprivileged writers on the file system
	// holding a path (statfs by default).
	freeSpace func(path string) (int64, error)

	mu     sync.Mutex
	index  *blobIndex
	closed bool
}

// DiskBlobStoreOption configures a DiskBlobStore.
type DiskBlobStoreOption func(*DiskBlobStore)

// WithBlobStoreClock sets the clock used to stamp blob use times (clock.System by default).
func WithBlobStoreClock(c clock.Clock) DiskBlobStoreOption {
	return func(s *DiskBlobStore) { s.clock = c }
}

// WithFsync decides whether each blob's file is fsynced before it is renamed into place (off by
// default). Off, a machine crash may lose blobs written shortly before it; they are detected
// and removed at the next start (see DiskBlobStore), never served with wrong bytes.
func WithFsync(on bool) DiskBlobStoreOption {
	return func(s *DiskBlobStore) { s.fsync = on }
}

// WithFreeSpace sets the function that reports the bytes available on the file system holding
// a path (statfs by default), e.g. to simulate a small disk in tests.
func WithFreeSpace(f func(path string) (int64, error)) DiskBlobStoreOption {
	return func(s *DiskBlobStore) { s.freeSpace = f }
}

// statfsFree returns the bytes available to unprivileged writers on path's file system.
func statfsFree(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// NewDiskBlobStore opens (creating if needed) a disk blob store in dir holding at most maxSize
// bytes of blobs. It removes temporary files left by a previous process, indexes the blobs
// present, and evicts the least recently used ones if they exceed maxSize. Metrics are
// registered with reg unless it is nil.
func NewDiskBlobStore(dir string, maxSize int64, logger zerolog.Logger, reg prometheus.Registerer, opts ...DiskBlobStoreOption) (*DiskBlobStore, error) {
	if maxSize <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "Invalid blob store size bound %d: must be positive", maxSize)
	}
	s := &DiskBlobStore{
		dir:       dir,
		casDir:    filepath.Join(dir, "cas"),
		tmpDir:    filepath.Join(dir, "tmp"),
		maxSize:   maxSize,
		clock:     clock.System,
		freeSpace: statfsFree,
		logger:    logger.With().Str("component", "disk_blob_store").Str("dir", dir).Logger(),
		metrics:   newBlobStoreMetrics(reg),
		index:     newBlobIndex(),
	}
	for _, o := range opts {
		o(s)
	}
	for _, d := range []string{dir, s.casDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to create blob store directory: %v", err)
		}
	}
	lock, err := lockDirectory(dir)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.open(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// lockDirectory takes an exclusive lock on dir/LOCK so that two processes never share a store.
func lockDirectory(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to open lock file of storage directory %s: %v", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, status.Errorf(codes.FailedPrecondition, "Storage directory %s is in use by another process: %v", dir, err)
	}
	return f, nil
}

// cleanMarker is the file Close writes once every blob is on disk; its absence at start-up
// means the previous process did not close the store (it or the machine crashed).
const cleanMarker = "CLEAN"

// takeCleanMarker reports whether the previous process closed the store cleanly, and removes
// the marker durably so that a crash of this process is detected at the next start.
func (s *DiskBlobStore) takeCleanMarker() (bool, error) {
	err := os.Remove(filepath.Join(s.dir, cleanMarker))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, status.Errorf(codes.Internal, "Failed to remove the clean-shutdown marker: %v", err)
	}
	if err := syncDir(s.dir); err != nil {
		return false, status.Errorf(codes.Internal, "Failed to sync the blob store directory: %v", err)
	}
	return true, nil
}

// syncDir fsyncs the directory dir, making the creation and removal of its entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// open cleans temporary files and indexes existing blobs.
func (s *DiskBlobStore) open() error {
	clean, err := s.takeCleanMarker()
	if err != nil {
		return err
	}
	stale, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to list temporary files: %v", err)
	}
	for _, e := range stale {
		if err := os.RemoveAll(filepath.Join(s.tmpDir, e.Name())); err != nil {
			return status.Errorf(codes.Internal, "Failed to remove stale temporary file: %v", err)
		}
	}
	if len(stale) > 0 {
		s.logger.Info().Int("count", len(stale)).Msg("Removed stale temporary files")
	}
	var found []*blobEntry
	for i := 0; i < 256; i++ {
		shard := filepath.Join(s.casDir, fmt.Sprintf("%02x", i))
		entries, err := os.ReadDir(shard)
		if errors.Is(err, fs.ErrNotExist) {
			continue // Shard directories are created on first use.
		} else if err != nil {
			return status.Errorf(codes.Internal, "Failed to list shard directory: %v", err)
		}
		for _, e := range entries {
			name := e.Name()
			if _, err := digest.New(name, 0); err != nil || name[:2] != filepath.Base(shard) || !e.Type().IsRegular() {
				s.logger.Warn().Str("file", filepath.Join(shard, name)).Msg("Ignoring unexpected file in blob store")
				continue
			}
			if name == digest.Empty.Hash {
				continue
			}
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return status.Errorf(codes.Internal, "Failed to stat blob %s: %v", name, err)
			}
			found = append(found, &blobEntry{hash: name, size: info.Size(), persisted: info.ModTime(), unverified: !clean})
		}
	}
	// Newest first, each appended behind the previous: the oldest ends at the back.
	sort.Slice(found, func(i, j int) bool { return found[i].persisted.After(found[j].persisted) })
	for _, e := range found {
		s.index.addOldest(e)
	}
	// The empty blob always exists; keep a real file for callers of Path.
	if _, err := os.Stat(s.path(digest.Empty.Hash)); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(s.path(digest.Empty.Hash)), 0o755); err != nil {
			return status.Errorf(codes.Internal, "Failed to create the empty blob: %v", err)
		}
		if err := os.WriteFile(s.path(digest.Empty.Hash), nil, 0o444); err != nil {
			return status.Errorf(codes.Internal, "Failed to create the empty blob: %v", err)
		}
	}
	s.mu.Lock()
	s.makeRoom(0)
	s.updateGauges()
	s.mu.Unlock()
	s.logger.Info().Int("blobs", s.index.len()).Int64("bytes", s.index.total).Int64("max_bytes", s.maxSize).Bool("fsync", s.fsync).Msg("Opened blob store")
	if !clean && len(found) > 0 {
		s.logger.Warn().Int("blobs", len(found)).Msg("Blob store was not closed cleanly: verifying every blob before it is served")
		s.stopVerify, s.verifyDone = make(chan struct{}), make(chan struct{})
		go s.verifyAll(found)
	}
	return nil
}

// verifyAll hashes the unverified blobs of found, newest first (the likeliest to have been
// cut short by a crash), until all are verified or the store is closed.
func (s *DiskBlobStore) verifyAll(found []*blobEntry) {
	defer close(s.verifyDone)
	for _, e := range found {
		select {
		case <-s.stopVerify:
			return
		default:
		}
		s.verify(e)
	}
	s.logger.Info().Int("blobs", len(found)).Msg("Verified the blobs found after an unclean shutdown")
}

// verify hashes the file of the unverified entry e and reports whether its content matches its
// name. A match marks the entry verified; a mismatch (or a vanished file) removes the blob from
// the index and the disk. Called without the lock; concurrent calls for one entry are harmless.
func (s *DiskBlobStore) verify(e *blobEntry) bool {
	s.mu.Lock()
	if cur, ok := s.index.get(e.hash); !ok || cur != e {
		s.mu.Unlock()
		return false // Evicted or dropped meanwhile.
	}
	if !e.unverified {
		s.mu.Unlock()
		return true
	}
	f, err := os.Open(s.path(e.hash)) // Under the lock, so that eviction cannot race the open.
	s.mu.Unlock()
	ok := false
	if err == nil {
		h := sha256.New()
		bufp := copyBuffers.Get().(*[]byte)
		n, cerr := io.CopyBuffer(h, f, *bufp)
		copyBuffers.Put(bufp)
		f.Close()
		ok = cerr == nil && n == e.size && hex.EncodeToString(h.Sum(nil)) == e.hash
		if cerr != nil {
			s.logger.Warn().Err(cerr).Str("hash", e.hash).Msg("Failed to read blob to verify it")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, present := s.index.get(e.hash); !present || cur != e {
		return false
	}
	if ok {
		e.unverified = false
		return true
	}
	s.index.remove(e.hash)
	if err := os.Remove(s.path(e.hash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logger.Warn().Err(err).Str("hash", e.hash).Msg("Failed to remove corrupt blob")
	}
	s.metrics.corrupt.Inc()
	s.updateGauges()
	s.logger.Warn().Str("hash", e.hash).Int64("size", e.size).Msg("Removed a blob whose content does not match its digest (cut short by a crash)")
	return false
}

// Close stops the background verification, syncs the store's file system so that every blob
// is on disk, writes the clean-shutdown marker DIR/CLEAN, and releases the directory lock. The
// store must not be used afterwards.
func (s *DiskBlobStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.stopVerify != nil {
		close(s.stopVerify)
		<-s.verifyDone
		if s.anyUnverified() {
			// Blobs left unverified must be verified at the next start too: no marker.
			return s.lock.Close()
		}
	}
	if err := s.markClean(); err != nil {
		s.logger.Warn().Err(err).Msg("Failed to mark the blob store closed cleanly: its blobs are verified at the next start")
	}
	return s.lock.Close() // Closing the descriptor releases the flock.
}

// anyUnverified reports whether some blob found after an unclean shutdown is still unverified.
func (s *DiskBlobStore) anyUnverified() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, el := range s.index.entries {
		if el.Value.(*blobEntry).unverified {
			return true
		}
	}
	return false
}

// markClean syncs the file system holding the store and writes the clean-shutdown marker.
func (s *DiskBlobStore) markClean() error {
	if err := unix.Syncfs(int(s.lock.Fd())); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(s.dir, cleanMarker))
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(s.dir)
}

// Usage returns the number of blobs stored and their total size.
func (s *DiskBlobStore) Usage() (blobs int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index.len(), s.index.total
}

// MaxSize returns the size bound of the store in bytes.
func (s *DiskBlobStore) MaxSize() int64 { return s.maxSize }

func (s *DiskBlobStore) path(hash string) string {
	return filepath.Join(s.casDir, hash[:2], hash)
}

// Path returns the path of the file holding blob d and marks the blob as used, or NOT_FOUND.
// The file is read-only by convention: callers (such as a worker's file cache that hardlinks
// inputs) must never modify it. The blob may be evicted at any time after Path returns, so a
// caller must handle the file vanishing (and can hold it by hardlinking or opening it).
func (s *DiskBlobStore) Path(d digest.Digest) (string, error) {
	if d.IsEmpty() {
		return s.path(d.Hash), nil
	}
	if !s.verified(d) {
		return "", status.Errorf(codes.NotFound, "Blob %s not found", d)
	}
	s.mu.Lock()
	e, ok := s.index.touch(d.Hash)
	if !ok || e.size != d.Size {
		s.mu.Unlock()
		return "", status.Errorf(codes.NotFound, "Blob %s not found", d)
	}
	touch := s.staleLocked(e, s.clock.Now())
	s.mu.Unlock()
	s.persistUse(touch)
	return s.path(d.Hash), nil
}

// verified reports whether blob d is absent or verified, verifying it first if it was found
// unverified at start-up: false means it was unverified and turned out corrupt (now removed).
func (s *DiskBlobStore) verified(d digest.Digest) bool {
	s.mu.Lock()
	e, ok := s.index.get(d.Hash)
	pending := ok && e.unverified
	s.mu.Unlock()
	return !pending || s.verify(e)
}

// staleLocked returns the entry's path and the time now to persist when the entry's file time
// is stale by touchGranularity at now, or nil.
func (s *DiskBlobStore) staleLocked(e *blobEntry, now time.Time) *pendingTouch {
	if now.Sub(e.persisted) < touchGranularity {
		return nil
	}
	e.persisted = now
	return &pendingTouch{path: s.path(e.hash), at: now}
}

// pendingTouch is a file time update decided under the lock and applied outside it.
type pendingTouch struct {
	path string
	at   time.Time
}

func (s *DiskBlobStore) persistUse(touches ...*pendingTouch) {
	for _, t := range touches {
		if t == nil {
			continue
		}
		// The blob may have been evicted meanwhile; nothing to persist then.
		if err := os.Chtimes(t.path, t.at, t.at); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.logger.Warn().Err(err).Str("file", t.path).Msg("Failed to record blob use time")
		}
	}
}

// Get implements BlobStore. It returns the open file itself when the whole blob is read, so
// callers stream from disk.
func (s *DiskBlobStore) Get(ctx context.Context, d digest.Digest, offset, limit int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, status.Errorf(codes.OutOfRange, "Failed to read blob %s: negative read offset %d", d, offset)
	}
	if limit < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "Failed to read blob %s: negative read limit %d", d, limit)
	}
	if offset > d.Size {
		return nil, status.Errorf(codes.OutOfRange, "Failed to read blob %s: read offset %d is beyond the end of the blob", d, offset)
	}
	if d.IsEmpty() {
		s.metrics.hits.WithLabelValues("get").Inc()
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	s.verified(d)
	s.mu.Lock()
	e, ok := s.index.touch(d.Hash)
	if !ok || e.size != d.Size || e.unverified {
		s.mu.Unlock()
		s.metrics.misses.WithLabelValues("get").Inc()
		return nil, status.Errorf(codes.NotFound, "Blob %s not found", d)
	}
	// Open under the lock so that eviction cannot remove the file in between; once open, the
	// file stays readable even if it is evicted.
	f, err := os.Open(s.path(d.Hash))
	touch := s.staleLocked(e, s.clock.Now())
	s.mu.Unlock()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to open blob %s: %v", d, err)
	}
	s.metrics.hits.WithLabelValues("get").Inc()
	s.persistUse(touch)
	remaining := d.Size - offset
	if offset == 0 && (limit == 0 || limit >= remaining) {
		return f, nil
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, status.Errorf(codes.Internal, "Failed to seek in blob %s: %v", d, err)
	}
	if limit == 0 || limit > remaining {
		limit = remaining
	}
	return &sectionReadCloser{Reader: io.LimitReader(f, limit), Closer: f}, nil
}

// sectionReadCloser reads a section of an open file and closes the file.
type sectionReadCloser struct {
	io.Reader
	io.Closer
}

// FindMissing implements BlobStore. Blobs found unverified at start-up are verified first.
func (s *DiskBlobStore) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	missing := make([]digest.Digest, 0, len(ds)) // Most digests a client asks about are missing.
	var touches []*pendingTouch
	var unverified []*blobEntry
	now := s.clock.Now() // Once per call: FindMissing of 10,000 digests is on the hot path.
	s.mu.Lock()
	for _, d := range ds {
		if d.IsEmpty() {
			continue
		}
		e, ok := s.index.touch(d.Hash)
		if ok && e.unverified {
			unverified = append(unverified, e) // Even of another size: a crash may have cut it.
		}
		if !ok || e.size != d.Size {
			missing = append(missing, d)
			continue
		}
		if t := s.staleLocked(e, now); t != nil {
			touches = append(touches, t)
		}
	}
	s.mu.Unlock()
	if len(unverified) > 0 {
		corrupt := map[string]bool{}
		for _, e := range unverified {
			if !s.verify(e) {
				corrupt[e.hash] = true
			}
		}
		if len(corrupt) > 0 {
			// Rebuild the answer in the order given.
			missing = missing[:0]
			s.mu.Lock()
			for _, d := range ds {
				if e, ok := s.index.get(d.Hash); !d.IsEmpty() && (!ok || e.size != d.Size || corrupt[d.Hash]) {
					missing = append(missing, d)
				}
			}
			s.mu.Unlock()
		}
	}
	s.metrics.hits.WithLabelValues("find_missing").Add(float64(len(ds) - len(missing)))
	s.metrics.misses.WithLabelValues("find_missing").Add(float64(len(missing)))
	s.persistUse(touches...)
	return missing, nil
}

// Put implements BlobStore. A blob already present is refreshed without reading r.
func (s *DiskBlobStore) Put(ctx context.Context, d digest.Digest, r io.Reader) error {
	f, err := s.put(ctx, d, r, false)
	if f != nil {
		f.Close()
	}
	return err
}

// putOpen is Put that also returns the stored blob open for reading from its start, so that
// a caller can pass the verified content on even if the blob is evicted meanwhile.
func (s *DiskBlobStore) putOpen(ctx context.Context, d digest.Digest, r io.Reader) (*os.File, error) {
	return s.put(ctx, d, r, true)
}

func (s *DiskBlobStore) put(ctx context.Context, d digest.Digest, r io.Reader, open bool) (*os.File, error) {
	if d.Size > s.maxSize {
		return nil, status.Errorf(codes.ResourceExhausted, "Failed to store blob %s: its %d bytes exceed the storage size bound of %d bytes", d, d.Size, s.maxSize)
	}
	if d.IsEmpty() {
		var one [1]byte
		if n, _ := io.ReadFull(r, one[:]); n > 0 {
			return nil, status.Errorf(codes.InvalidArgument, "Failed to store blob %s: content is longer than the digest's size", d)
		}
		if open {
			return s.openPresent(d)
		}
		return nil, nil
	}
	if !open && s.refresh(d) {
		return nil, nil
	}
	if open {
		if f, err := s.openPresent(d); err == nil {
			return f, nil
		}
	}
	w, err := s.newBlobWriter(d)
	if err != nil {
		return nil, err
	}
	bufp := copyBuffers.Get().(*[]byte)
	_, err = io.CopyBuffer(w, &contextReader{ctx: ctx, r: io.LimitReader(r, d.Size+1)}, *bufp)
	copyBuffers.Put(bufp)
	if err != nil && !w.tooLong {
		w.abort()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, status.FromContextError(ctxErr).Err()
		}
		if isDiskFull(err) {
			s.MakeRoom(d.Size)
			return nil, diskError(err, d, "writing")
		}
		return nil, rpcstatus.WrapCode(err, codes.Unavailable, "Failed to store blob %s: reading content", d)
	}
	return w.commit(open)
}

// openPresent opens the whole of blob d if the store holds it, marking it used.
func (s *DiskBlobStore) openPresent(d digest.Digest) (*os.File, error) {
	if d.IsEmpty() {
		f, err := os.Open(s.path(d.Hash))
		if err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to open blob %s: %v", d, err)
		}
		return f, nil
	}
	r, err := s.Get(context.Background(), d, 0, 0)
	if err != nil {
		return nil, err
	}
	return r.(*os.File), nil
}

// refresh marks d as used and reports whether it is present.
func (s *DiskBlobStore) refresh(d digest.Digest) bool {
	s.verified(d)
	s.mu.Lock()
	e, ok := s.index.touch(d.Hash)
	if !ok || e.size != d.Size || e.unverified {
		s.mu.Unlock()
		return false
	}
	touch := s.staleLocked(e, s.clock.Now())
	s.mu.Unlock()
	s.persistUse(touch)
	return true
}

// commit renames the verified temporary file into place, evicting as needed.
func (s *DiskBlobStore) commit(d digest.Digest, tmp string, now time.Time, committed *bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return status.Errorf(codes.Unavailable, "Failed to store blob %s: the blob store is closed", d)
	}
	if e, ok := s.index.touch(d.Hash); ok && e.size == d.Size && !e.unverified {
		return nil // A concurrent writer committed the same blob; ours is removed by the caller.
	} else if ok {
		// A file of another size or not verified since a crash: ours, verified, replaces it.
		s.index.remove(d.Hash)
	}
	s.makeRoom(d.Size)
	final := s.path(d.Hash)
	err := os.Rename(tmp, final)
	if errors.Is(err, fs.ErrNotExist) {
		// First blob of its shard.
		if err = os.MkdirAll(filepath.Dir(final), 0o755); err == nil {
			err = os.Rename(tmp, final)
		}
	}
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to store blob %s: %v", d, err)
	}
	*committed = true
	s.index.add(&blobEntry{hash: d.Hash, size: d.Size, persisted: now})
	s.metrics.writtenBytes.Add(float64(d.Size))
	s.updateGauges()
	return nil
}

// diskError reports a failed file operation on blob d: a full disk is RESOURCE_EXHAUSTED (the
// client should not retry at once as if the server were briefly unavailable), anything else
// INTERNAL.
func diskError(err error, d digest.Digest, what string) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return status.Errorf(codes.ResourceExhausted, "Failed to store blob %s: %s: the server's disk is full: %v", d, what, err)
	}
	return status.Errorf(codes.Internal, "Failed to store blob %s: %s: %v", d, what, err)
}

// ensureFree evicts least recently used blobs when the file system has less than size bytes
// available, whatever the configured size bound: a disk shared with other data, or smaller
// than the bound, fills before the bound is reached. A blob that could not fit even with every
// stored blob evicted is RESOURCE_EXHAUSTED at once, and nothing is evicted for it: emptying
// the cache would not help, and a client declaring a huge size must not be able to flush it.
func (s *DiskBlobStore) ensureFree(d digest.Digest) error {
	avail, err := s.freeSpace(s.tmpDir)
	if err != nil || avail >= d.Size {
		return nil
	}
	s.mu.Lock()
	stored := s.index.total
	s.mu.Unlock()
	if avail+stored < d.Size {
		return status.Errorf(codes.ResourceExhausted, "Failed to store blob %s: its %d bytes do not fit on the server's disk (%d bytes free, %d bytes of cached blobs that could be evicted)", d, d.Size, avail, stored)
	}
	freed := s.MakeRoom(d.Size)
	s.logger.Warn().Int64("available", avail).Int64("needed", d.Size).Int64("evicted_bytes", freed).
		Msg("File system short of space; evicted least recently used blobs")
	return nil
}

// MakeRoom evicts least recently used blobs until the file system holding the store has at
// least n bytes available, and returns the bytes evicted. It evicts nothing when that cannot be
// reached even by evicting every blob. Uploads call it when the disk is full.
func (s *DiskBlobStore) MakeRoom(n int64) int64 {
	avail, err := s.freeSpace(s.tmpDir)
	if err != nil {
		avail = 0
	}
	if avail >= n {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	need := n - avail
	if need > s.index.total {
		return 0
	}
	before := s.index.total
	s.evictToLocked(before - need)
	return before - s.index.total
}

// makeRoom evicts least recently used blobs until size more bytes fit. Files are removed under
// the lock so that a concurrent commit of the same hash cannot be undone by a late removal.
func (s *DiskBlobStore) makeRoom(size int64) {
	s.evictToLocked(s.maxSize - size)
}

// evictToLocked evicts least recently used blobs until at most total bytes are stored.
func (s *DiskBlobStore) evictToLocked(total int64) {
	for s.index.total > total {
		e, ok := s.index.oldest()
		if !ok {
			return
		}
		s.index.remove(e.hash)
		if err := os.Remove(s.path(e.hash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.logger.Warn().Err(err).Str("hash", e.hash).Msg("Failed to remove evicted blob")
		}
		s.metrics.evictions.Inc()
		s.metrics.evictedBytes.Add(float64(e.size))
		s.logger.Debug().Str("digest", digest.Digest{Hash: e.hash, Size: e.size}.String()).Msg("Evicted blob")
	}
	s.updateGauges()
}

func (s *DiskBlobStore) updateGauges() {
	s.metrics.bytes.Set(float64(s.index.total))
	s.metrics.blobs.Set(float64(s.index.len()))
}

// contextReader stops reading once its context is done.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
