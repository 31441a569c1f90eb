package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"os"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// blobWriter is a blob being written into a DiskBlobStore: a temporary file under DIR/tmp that
// the content is appended to while it is hashed and counted, renamed into place by commit only
// when size and SHA-256 match. It is the store's one write path: Put copies its reader into one,
// and ByteStream uploads append each received chunk to one directly (no spool file, no second
// copy). Between the streams of a resumed upload it is suspended: the file is closed, the hash
// state kept. Not safe for concurrent use.
type blobWriter struct {
	s       *DiskBlobStore
	d       digest.Digest
	path    string
	f       *os.File // Open while writing; nil while suspended.
	h       hash.Hash
	n       int64
	tooLong bool
}

// newBlobWriter starts writing blob d into a new temporary file, first evicting blobs if the
// file system has less than d.Size bytes free. Errors carry gRPC codes (RESOURCE_EXHAUSTED for a
// full disk).
func (s *DiskBlobStore) newBlobWriter(d digest.Digest) (*blobWriter, error) {
	if err := s.ensureFree(d); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.tmpDir, d.Hash[:16]+"-*")
	if err != nil {
		return nil, diskError(err, d, "creating a temporary file")
	}
	return &blobWriter{s: s, d: d, path: f.Name(), f: f, h: sha256.New()}, nil
}

// Write appends p to the file and the hash. Content beyond the digest's size is refused with
// INVALID_ARGUMENT and not written. Other errors are the file system's, unwrapped (ENOSPC).
func (w *blobWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.d.Size {
		w.tooLong = true
		return 0, status.Errorf(codes.InvalidArgument, "content is longer than %d bytes", w.d.Size)
	}
	if w.f == nil {
		f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return 0, err
		}
		w.f = f
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// written returns the number of bytes written so far.
func (w *blobWriter) written() int64 { return w.n }

// suspend closes the file, keeping what was written and the hash state, until the next Write.
func (w *blobWriter) suspend() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// abort closes and removes the temporary file. Nothing is stored.
func (w *blobWriter) abort() {
	w.suspend()
	os.Remove(w.path)
}

// verify reports INVALID_ARGUMENT ("content has digest HASH/SIZE") unless exactly the digest's
// size was written and its SHA-256 matches.
func (w *blobWriter) verify() error {
	if actual := hex.EncodeToString(w.h.Sum(nil)); w.tooLong || w.n != w.d.Size || actual != w.d.Hash {
		return status.Errorf(codes.InvalidArgument, "content has digest %s/%d", actual, w.n)
	}
	return nil
}

// commit verifies the content, syncs the file if the store's fsync policy asks for it, and
// renames it into place; with open, it also returns the blob open for reading from its start.
// On any error the temporary file is removed and nothing is stored: a mismatch is
// INVALID_ARGUMENT ("Failed to store blob D: content has digest …"). The writer must not be used
// afterwards.
func (w *blobWriter) commit(open bool) (*os.File, error) {
	committed := false
	defer func() {
		if !committed {
			w.abort()
		}
	}()
	d, s := w.d, w.s
	if err := w.verify(); err != nil {
		s.metrics.rejected.Inc()
		if w.tooLong {
			return nil, status.Errorf(codes.InvalidArgument, "Failed to store blob %s: content is longer than %d bytes", d, d.Size)
		}
		return nil, status.Errorf(codes.InvalidArgument, "Failed to store blob %s: %s", d, status.Convert(err).Message())
	}
	if w.f == nil {
		f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to store blob %s: reopening: %v", d, err)
		}
		w.f = f
	}
	if s.fsync {
		if err := w.f.Sync(); err != nil {
			return nil, diskError(err, d, "syncing")
		}
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return nil, diskError(err, d, "closing")
	}
	now := s.clock.Now()
	if err := os.Chtimes(w.path, now, now); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to stamp blob %s: %v", d, err)
	}
	var f *os.File
	if open {
		// Opened before the rename: the descriptor reads the verified content whatever
		// happens to the name afterwards.
		if f, err = os.Open(w.path); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to open blob %s: %v", d, err)
		}
	}
	if err := s.commit(d, w.path, now, &committed); err != nil {
		if f != nil {
			f.Close()
		}
		return nil, err
	}
	return f, nil
}

// isDiskFull reports whether err is the file system running out of space or quota.
func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
