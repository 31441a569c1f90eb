package storage

import (
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// verifiedReadCloser reads a whole blob through a verifyingWriter and, at the end, turns a
// mismatch into a DATA_LOSS error instead of io.EOF.
type verifiedReadCloser struct {
	r         io.ReadCloser
	v         *verifyingWriter
	onCorrupt func(error)
	failed    bool
}

func (v *verifiedReadCloser) Read(p []byte) (int, error) {
	if v.failed {
		return 0, status.Errorf(codes.DataLoss, "Blob %s is corrupt in the object store", v.v.want)
	}
	n, err := v.r.Read(p)
	if n > 0 {
		if _, werr := v.v.Write(p[:n]); werr != nil {
			err = werr
		}
	}
	if err == io.EOF {
		err = v.v.Verify()
		if err == nil {
			return n, io.EOF
		}
	}
	if c := status.Code(err); err != nil && (c == codes.InvalidArgument || c == codes.DataLoss) {
		// A digest mismatch, or the object store's own checksum refusing the bytes.
		v.failed = true
		v.onCorrupt(err)
		return 0, status.Errorf(codes.DataLoss, "Blob %s is corrupt in the object store", v.v.want)
	}
	return n, err
}

func (v *verifiedReadCloser) Close() error { return v.r.Close() }
