package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// verifyingWriter passes bytes on to an underlying writer while it hashes and counts them, so
// that content is checked against its digest in the same pass that stores it (the disk store's
// temporary files, the object store's spool files, reads from a bucket). It refuses to write
// past the digest's size.
type verifyingWriter struct {
	w       io.Writer
	want    digest.Digest
	h       hash.Hash
	n       int64
	tooLong bool
}

// newVerifyingWriter returns a writer to w that checks what passes through against want.
func newVerifyingWriter(w io.Writer, want digest.Digest) *verifyingWriter {
	return &verifyingWriter{w: w, want: want, h: sha256.New()}
}

// Write implements io.Writer. Content beyond the digest's size is refused with
// INVALID_ARGUMENT ("content is longer than SIZE bytes") and not written.
func (v *verifyingWriter) Write(p []byte) (int, error) {
	if v.n+int64(len(p)) > v.want.Size {
		v.tooLong = true
		return 0, status.Errorf(codes.InvalidArgument, "content is longer than %d bytes", v.want.Size)
	}
	n, err := v.w.Write(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	return n, err
}

// TooLong reports whether a Write was refused for going past the digest's size.
func (v *verifyingWriter) TooLong() bool { return v.tooLong }

// Written returns the number of bytes written so far.
func (v *verifyingWriter) Written() int64 { return v.n }

// Verify reports INVALID_ARGUMENT ("content has digest HASH/SIZE") unless exactly the digest's
// size was written and its SHA-256 matches.
func (v *verifyingWriter) Verify() error {
	if actual := hex.EncodeToString(v.h.Sum(nil)); v.tooLong || v.n != v.want.Size || actual != v.want.Hash {
		return status.Errorf(codes.InvalidArgument, "content has digest %s/%d", actual, v.n)
	}
	return nil
}
