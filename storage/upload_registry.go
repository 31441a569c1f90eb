package storage

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
)

// errBlobStored closes an upload's pipe once the store has the blob, so that a writer still
// sending learns that the rest of its data is not needed.
var errBlobStored = errors.New("blob stored")

// upload is one ByteStream upload: a goroutine storing the blob from the read end of a pipe
// while Write streams feed the write end. Because the pipe outlives a single Write stream, an
// interrupted uncompressed upload can be resumed where it stopped, without keeping its data
// in memory.
type upload struct {
	name      string
	resource  digest.ResourceName
	pw        *io.PipeWriter
	done      chan error    // Receives the result of the store's Put, once.
	owner     chan struct{} // Holds one token while a Write stream feeds the upload.
	committed atomic.Int64  // Bytes of the stream accepted so far.
	cancel    context.CancelFunc

	// Guarded by uploadRegistry.mu.
	owned    bool
	lastUsed time.Time
}

// abort stops the upload; the store discards what it received.
func (u *upload) abort() {
	u.pw.CloseWithError(errAborted)
	u.cancel()
}

// finish closes the stream of data and waits for the store's verdict.
func (u *upload) finish() error {
	u.pw.Close()
	return <-u.done
}

// uploadRegistry keeps the uploads in progress keyed by resource name, and times out the
// interrupted ones when it is entered.
type uploadRegistry struct {
	cas   BlobStore
	clock clock.Clock
	ttl   time.Duration

	mu      sync.Mutex
	uploads map[string]*upload
}

func newUploadRegistry(cas BlobStore, c clock.Clock, ttl time.Duration) *uploadRegistry {
	return &uploadRegistry{cas: cas, clock: c, ttl: ttl, uploads: make(map[string]*upload)}
}

// sweepLocked aborts interrupted uploads idle for longer than the timeout.
func (r *uploadRegistry) sweepLocked() {
	now := r.clock.Now()
	for name, u := range r.uploads {
		if !u.owned && now.Sub(u.lastUsed) > r.ttl {
			delete(r.uploads, name)
			u.abort()
		}
	}
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
		if r.uploads[name] == u {
			u.owned = true
			r.mu.Unlock()
			return u, nil
		}
		r.mu.Unlock()
		<-u.owner // Finished or swept meanwhile: look again.
	}
}

// start begins a new upload called name of rn, owned by the caller, replacing any other.
func (r *uploadRegistry) start(name string, rn digest.ResourceName) *upload {
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	u := &upload{name: name, resource: rn, pw: pw, done: make(chan error, 1), owner: make(chan struct{}, 1), cancel: cancel, owned: true}
	u.owner <- struct{}{}
	go func() {
		var src io.Reader = pr
		if rn.Compressor == digest.Zstd {
			dec, err := zstd.NewReader(pr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
			if err != nil {
				err = status.Errorf(codes.Internal, "Failed to start zstd decoder: %v", err)
				pr.CloseWithError(err)
				u.done <- err
				return
			}
			defer dec.Close()
			src = &zstdErrorReader{r: dec}
		}
		err := r.cas.Put(ctx, rn.Digest, src)
		if err == nil {
			pr.CloseWithError(errBlobStored)
		} else {
			pr.CloseWithError(err)
		}
		cancel()
		u.done <- err
	}()
	r.mu.Lock()
	if old := r.uploads[name]; old != nil && !old.owned {
		old.abort()
	}
	r.uploads[name] = u
	r.mu.Unlock()
	return u
}

// park releases an interrupted upload so a later stream can resume it. Compressed uploads
// cannot be resumed (their offsets mix compressed and uncompressed sizes) and are aborted.
func (r *uploadRegistry) park(u *upload) {
	r.mu.Lock()
	u.owned = false
	u.lastUsed = r.clock.Now()
	if r.uploads[u.name] != u || u.resource.Compressor != digest.Identity {
		if r.uploads[u.name] == u {
			delete(r.uploads, u.name)
		}
		u.abort()
	}
	r.mu.Unlock()
	<-u.owner
}

// remove forgets a finished or aborted upload and releases it.
func (r *uploadRegistry) remove(u *upload) {
	r.mu.Lock()
	if r.uploads[u.name] == u {
		delete(r.uploads, u.name)
	}
	r.mu.Unlock()
	<-u.owner
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
