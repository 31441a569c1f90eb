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
// that content can be checked against its digest in the same pass that stores it. It refuses
// to write past the digest's size.
type verifyingWriter struct {
	w    io.Writer
	want digest.Digest
	h    hash.Hash
	n    int64
}

// newVerifyingWriter returns a writer to w that checks what passes through against want.
func newVerifyingWriter(w io.Writer, want digest.Digest) *verifyingWriter {
	return &verifyingWriter{w: w, want: want, h: sha256.New()}
}

// Write implements io.Writer. Content beyond the digest's size is refused with
// INVALID_ARGUMENT and not written.
func (v *verifyingWriter) Write(p []byte) (int, error) {
	if v.n+int64(len(p)) > v.want.Size {
		return 0, status.Errorf(codes.InvalidArgument, "Content of blob %s is longer than %d bytes", v.want, v.want.Size)
	}
	n, err := v.w.Write(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	return n, err
}

// Verify reports INVALID_ARGUMENT unless exactly the digest's size was written and its SHA-256
// matches.
func (v *verifyingWriter) Verify() error {
	if actual := hex.EncodeToString(v.h.Sum(nil)); v.n != v.want.Size || actual != v.want.Hash {
		return status.Errorf(codes.InvalidArgument, "Content of blob %s has digest %s/%d", v.want, actual, v.n)
	}
	return nil
}
