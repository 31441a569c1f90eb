package storage

import (
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// upload is one ByteStream upload. Into a DiskBlobStore, an uncompressed upload appends the
// bytes each request carries straight to the store's temporary file for the blob, hashing them
// on the way (a blobWriter); finish_write verifies the digest and renames the file into place,
// with no second copy. Otherwise (compressed data, object stores) the bytes are appended to a
// spool file, which finish_write hands to the store's Put. While no stream feeds it (the client
// dropped the stream), an upload is parked: nothing but this small struct (and the SHA-256
// state) and the file's bytes on disk, so a later stream can resume it where it stopped.
type upload struct {
	name      string
	resource  digest.ResourceName
	path      string
	committed atomic.Int64  // Bytes of the stream accepted so far (in the spool file).
	owner     chan struct{} // Holds one token while a Write stream feeds the upload.

	// w, when set, is the store's own temporary file of the blob; path and f are then unused.
	w *blobWriter
	// f is the spool file, open for appending while a stream owns the upload.
	f *os.File
	// room, when set, evicts stored blobs to free n bytes on a full disk (see roomMaker).
	room func(n int64) int64

	// Guarded by uploadRegistry.mu.
	owned    bool
	lastUsed time.Time
	parkSeq  uint64 // Order of parking: breaks ties of lastUsed (a coarse or fake clock).
	gone     bool
}

// write appends data to the spool file. A full disk is RESOURCE_EXHAUSTED.
func (u *upload) write(data []byte) error {
	if u.w != nil {
		n, err := u.w.Write(data)
		if isDiskFull(err) && u.room != nil && u.room(u.resource.Digest.Size+int64(len(data))) > 0 {
			var m int
			m, err = u.w.Write(data[n:])
			n += m
		}
		return u.writeError(err)
	}
	if u.f == nil {
		f, err := os.OpenFile(u.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return rpcstatus.WrapCode(err, codes.Internal, "Failed to resume upload of blob %s", u.resource.Digest)
		}
		u.f = f
	}
	n, err := u.f.Write(data)
	if errors.Is(err, syscall.ENOSPC) && u.room != nil && u.room(u.resource.Digest.Size+int64(len(data))) > 0 {
		// The disk is full: evict stored blobs, which the store would do for this blob anyway.
		var m int
		m, err = u.f.Write(data[n:])
		n += m
	}
	return u.writeError(err)
}

// writeError turns a failed write of the upload's bytes into a gRPC status: a full disk is
// RESOURCE_EXHAUSTED.
func (u *upload) writeError(err error) error {
	if err != nil {
		if isDiskFull(err) {
			return status.Errorf(codes.ResourceExhausted, "Failed to write blob %s: no space left on the server's disk", u.resource.Digest)
		}
		return rpcstatus.WrapCode(err, codes.Internal, "Failed to write blob %s", u.resource.Digest)
	}
	return nil
}

// closeFile closes the upload's file if it is open.
func (u *upload) closeFile() {
	if u.w != nil {
		u.w.suspend()
	}
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
}

// finish hands the spooled bytes to the store, which verifies the digest, and removes the
// spool file. The caller must then remove the upload from the registry.
func (u *upload) finish(ctx context.Context, cas BlobStore) error {
	if u.w != nil {
		w := u.w
		u.w = nil
		_, err := w.commit(false)
		return err
	}
	u.closeFile()
	defer os.Remove(u.path)
	f, err := os.Open(u.path)
	if err != nil {
		return rpcstatus.WrapCode(err, codes.Internal, "Failed to store blob %s", u.resource.Digest)
	}
	defer f.Close()
	var src io.Reader = f
	if u.resource.Compressor == digest.Zstd {
		dec, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return status.Errorf(codes.Internal, "Failed to start zstd decoder: %v", err)
		}
		defer dec.Close()
		src = &zstdErrorReader{r: dec}
	}
	return cas.Put(ctx, u.resource.Digest, src)
}

// discard closes and removes the upload's file.
func (u *upload) discard() {
	if u.w != nil {
		u.w.abort()
		u.w = nil
		return
	}
	u.closeFile()
	os.Remove(u.path)
}

// UploadLimits bound the interrupted ByteStream uploads kept for resumption.
type UploadLimits struct {
	// IdleTimeout is how long an interrupted upload is kept (10 minutes when zero).
	IdleTimeout time.Duration
	// MaxParked bounds how many interrupted uploads are kept; the least recently used are
	// dropped beyond it (DefaultMaxParkedUploads when zero).
	MaxParked int
	// MaxParkedBytes bounds the bytes on disk of interrupted uploads; the least recently used
	// are dropped beyond it (DefaultMaxParkedUploadBytes when zero).
	MaxParkedBytes int64
}

// Defaults of UploadLimits.
const (
	DefaultUploadIdleTimeout    = 10 * time.Minute
	DefaultMaxParkedUploads     = 1000
	DefaultMaxParkedUploadBytes = 1 << 30
)

func (l UploadLimits) withDefaults() UploadLimits {
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultUploadIdleTimeout
	}
	if l.MaxParked <= 0 {
		l.MaxParked = DefaultMaxParkedUploads
	}
	if l.MaxParkedBytes <= 0 {
		l.MaxParkedBytes = DefaultMaxParkedUploadBytes
	}
	return l
}

// roomMaker is a BlobStore that can evict blobs to free space on its disk (DiskBlobStore).
type roomMaker interface {
	MakeRoom(n int64) int64
}

// uploadRegistry keeps the uploads in progress keyed by resource name. Parked uploads are
// bounded in number and bytes and dropped once idle for IdleTimeout, by a timer of the injected
// clock that is armed only while some upload is parked.
type uploadRegistry struct {
	room   func(n int64) int64
	disk   *DiskBlobStore // Set when the store is one: uncompressed uploads write into it directly.
	clock  clock.Clock
	limits UploadLimits
	dir    string

	mu         sync.Mutex
	dirErr     error
	uploads    map[string]*upload
	parked     int
	parkedSize int64
	parkSeq    uint64
	timer      clock.Timer
	timerStop  chan struct{}
}

// newUploadRegistry returns a registry spooling uploads into dir (created if needed; spool files
// left in it by an earlier process are removed). With dir empty, spool files go to the system's
// temporary directory, each removed when its upload ends, and nothing is removed at start (a
// directory of its own would outlive the registry, which has no end). A full disk evicts from
// cas when it is a roomMaker.
func newUploadRegistry(cas BlobStore, c clock.Clock, limits UploadLimits, dir string) *uploadRegistry {
	r := &uploadRegistry{clock: c, limits: limits.withDefaults(), dir: dir, uploads: make(map[string]*upload)}
	if rm, ok := cas.(roomMaker); ok {
		r.room = rm.MakeRoom
	}
	r.disk, _ = cas.(*DiskBlobStore)
	if dir == "" {
		r.dir = os.TempDir()
	} else {
		os.RemoveAll(dir)
		r.dirErr = os.MkdirAll(dir, 0o700)
	}
	return r
}

// parkedLocked reports whether u counts as parked.
func (u *upload) parkedLocked() bool { return !u.owned && !u.gone }

// dropLocked forgets u and removes its bytes. u must not be owned.
func (r *uploadRegistry) dropLocked(u *upload) {
	if r.uploads[u.name] == u {
		delete(r.uploads, u.name)
	}
	if u.parkedLocked() {
		r.parked--
		r.parkedSize -= u.committed.Load()
	}
	u.gone = true
	u.discard()
}

// sweepLocked drops parked uploads idle for longer than the timeout, then the least recently
// used ones while the count or bytes exceed their bounds.
func (r *uploadRegistry) sweepLocked() {
	now := r.clock.Now()
	var parked []*upload
	for _, u := range r.uploads {
		if !u.parkedLocked() {
			continue
		}
		if now.Sub(u.lastUsed) >= r.limits.IdleTimeout {
			r.dropLocked(u)
			continue
		}
		parked = append(parked, u)
	}
	if r.parked <= r.limits.MaxParked && r.parkedSize <= r.limits.MaxParkedBytes {
		return
	}
	sort.Slice(parked, func(i, j int) bool {
		if !parked[i].lastUsed.Equal(parked[j].lastUsed) {
			return parked[i].lastUsed.Before(parked[j].lastUsed)
		}
		return parked[i].parkSeq < parked[j].parkSeq
	})
	for _, u := range parked {
		if r.parked <= r.limits.MaxParked && r.parkedSize <= r.limits.MaxParkedBytes {
			return
		}
		r.dropLocked(u)
	}
}

// armLocked makes sure a timer sweeps when the oldest parked upload expires.
func (r *uploadRegistry) armLocked() {
	if r.parked == 0 || r.timer != nil {
		return
	}
	oldest := r.clock.Now()
	for _, u := range r.uploads {
		if u.parkedLocked() && u.lastUsed.Before(oldest) {
			oldest = u.lastUsed
		}
	}
	t, ch := r.clock.NewTimer(oldest.Add(r.limits.IdleTimeout).Sub(r.clock.Now()))
	stop := make(chan struct{})
	r.timer, r.timerStop = t, stop
	go func() {
		select {
		case <-ch:
		case <-stop:
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.timerStop == stop {
			r.timer, r.timerStop = nil, nil
		}
		r.sweepLocked()
		r.armLocked()
	}()
}

// committed returns the committed size of the upload called name, if one is in progress.
func (r *uploadRegistry) committed(name string) (int64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked()
	u, ok := r.uploads[name]
	if !ok {
		return 0, false
	}
	return u.committed.Load(), true
}

// acquire returns the upload called name, owned by the caller, waiting for a stream that still
// feeds it to let go; or nil when there is none.
func (r *uploadRegistry) acquire(ctx context.Context, name string) (*upload, error) {
	for {
		r.mu.Lock()
		r.sweepLocked()
		u := r.uploads[name]
		r.mu.Unlock()
		if u == nil {
			return nil, nil
		}
		select {
		case u.owner <- struct{}{}:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		r.mu.Lock()
		if r.uploads[name] == u && !u.gone {
			r.parked--
			r.parkedSize -= u.committed.Load()
			u.owned = true
			r.mu.Unlock()
			return u, nil
		}
		r.mu.Unlock()
		<-u.owner // Finished or dropped meanwhile: look again.
	}
}

// start begins a new upload called name of rn, owned by the caller, replacing any parked one.
func (r *uploadRegistry) start(name string, rn digest.ResourceName) (*upload, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.disk != nil && rn.Compressor == digest.Identity {
		w, err := r.disk.newBlobWriter(rn.Digest)
		if err != nil {
			if status.Code(err) == codes.ResourceExhausted {
				return nil, status.Errorf(codes.ResourceExhausted, "Failed to write blob %s: no space left on the server's disk", rn.Digest)
			}
			return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to write blob %s", rn.Digest)
		}
		return r.startLocked(&upload{name: name, resource: rn, path: w.path, w: w, room: r.room}), nil
	}
	if r.dirErr != nil {
		return nil, rpcstatus.WrapCode(r.dirErr, codes.Internal, "Failed to write blob %s: no upload directory", rn.Digest)
	}
	f, err := os.CreateTemp(r.dir, "buildfleet-upload-"+rn.Digest.Hash[:min(16, len(rn.Digest.Hash))]+"-*")
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return nil, status.Errorf(codes.ResourceExhausted, "Failed to write blob %s: no space left on the server's disk", rn.Digest)
		}
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to write blob %s", rn.Digest)
	}
	return r.startLocked(&upload{name: name, resource: rn, path: f.Name(), f: f, room: r.room}), nil
}

// startLocked registers the new upload u, owned by the caller, replacing any parked one.
func (r *uploadRegistry) startLocked(u *upload) *upload {
	u.owner, u.owned = make(chan struct{}, 1), true
	u.owner <- struct{}{}
	if old := r.uploads[u.name]; old != nil && old.parkedLocked() {
		r.dropLocked(old)
	}
	r.uploads[u.name] = u
	return u
}

// park releases an interrupted upload so a later stream can resume it: its file is closed and
// no goroutine or buffer is kept. Compressed uploads cannot be resumed (their offsets mix
// compressed and uncompressed sizes) and are dropped.
func (r *uploadRegistry) park(u *upload) {
	u.closeFile()
	r.mu.Lock()
	u.owned = false
	u.lastUsed = r.clock.Now()
	r.parkSeq++
	u.parkSeq = r.parkSeq
	if r.uploads[u.name] != u || u.resource.Compressor != digest.Identity || u.committed.Load() == 0 {
		u.gone = true
		if r.uploads[u.name] == u {
			delete(r.uploads, u.name)
		}
		u.discard()
	} else {
		r.parked++
		r.parkedSize += u.committed.Load()
		r.sweepLocked()
		r.armLocked()
	}
	r.mu.Unlock()
	<-u.owner
}

// remove forgets a finished or failed upload owned by the caller, removes its bytes and
// releases it.
func (r *uploadRegistry) remove(u *upload) {
	r.mu.Lock()
	if r.uploads[u.name] == u {
		delete(r.uploads, u.name)
	}
	u.gone = true
	r.mu.Unlock()
	u.discard()
	<-u.owner
}

// stats returns the number of parked uploads and their bytes on disk.
func (r *uploadRegistry) stats() (parked int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.parked, r.parkedSize
}

// zstdErrorReader marks malformed compressed data as INVALID_ARGUMENT.
type zstdErrorReader struct {
	r io.Reader
}

func (z *zstdErrorReader) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, errAborted) {
		if _, ok := status.FromError(err); !ok {
			err = status.Errorf(codes.InvalidArgument, "invalid zstd data: %v", err)
		}
	}
	return n, err
}
