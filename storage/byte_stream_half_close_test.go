package storage_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// ByteStream.Write: "When the client closes the request channel, the service will respond with
// a WriteResponse. The service will not view the resource as complete until the client has sent
// a WriteRequest with finish_write set to true." A stream of 1 MiB half-closed without
// finish_write gets committed_size 1 MiB, the blob is not stored, and the upload resumes there.
func TestByteStreamHalfClosedWriteAnswersCommittedSize(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	ctx := context.Background()
	data, d := randomBlob(t, 3<<20)
	name := digest.WriteResourceName("main", d, digest.Identity)
	resp, err := writeChunks(ctx, e.bs, name, data[:1<<20], 0, 256<<10, false)
	if err != nil || resp.GetCommittedSize() != 1<<20 {
		t.Fatalf("half-closed Write = %v, %v; want WriteResponse{committed_size: %d}", resp, err, 1<<20)
	}
	q, err := e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || q.GetCommittedSize() != 1<<20 || q.GetComplete() {
		t.Fatalf("QueryWriteStatus after the half-close = %v, %v; want committed %d, not complete", q, err, 1<<20)
	}
	if m := missing(t, e.store, d); !m[d] {
		t.Fatal("an upload without finish_write is visible in the store")
	}
	// A second half-closed stream continues it (committed_size never decreases).
	resp, err = writeChunks(ctx, e.bs, name, data[1<<20:2<<20], 1<<20, 256<<10, false)
	if err != nil || resp.GetCommittedSize() != 2<<20 {
		t.Fatalf("second half-closed Write = %v, %v; want committed %d", resp, err, 2<<20)
	}
	resp, err = writeChunks(ctx, e.bs, name, data[2<<20:], 2<<20, 256<<10, true)
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("finishing Write = %v, %v", resp, err)
	}
	if got := readAll(t, e.store, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("stored content differs from the three streams' data")
	}
	q, err = e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || q.GetCommittedSize() != d.Size || !q.GetComplete() {
		t.Fatalf("QueryWriteStatus of the finished upload = %v, %v; want complete, %d", q, err, d.Size)
	}
}

// A compressed upload cannot resume (its offsets mix compressed and uncompressed sizes): a
// half-closed one answers committed_size 0, QueryWriteStatus agrees, and a new stream from 0
// stores the blob.
func TestByteStreamHalfClosedCompressedWriteCommitsNothing(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	ctx := context.Background()
	data, d := randomBlob(t, 1<<20)
	enc, _ := zstd.NewWriter(nil)
	compressed := enc.EncodeAll(data, nil)
	name := digest.WriteResourceName("", d, digest.Zstd)
	resp, err := writeChunks(ctx, e.bs, name, compressed[:len(compressed)/2], 0, 64<<10, false)
	if err != nil || resp.GetCommittedSize() != 0 {
		t.Fatalf("half-closed compressed Write = %v, %v; want committed_size 0", resp, err)
	}
	q, err := e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || q.GetCommittedSize() != 0 || q.GetComplete() {
		t.Fatalf("QueryWriteStatus = %v, %v; want committed 0", q, err)
	}
	resp, err = writeChunks(ctx, e.bs, name, compressed, 0, 64<<10, true)
	if err != nil || resp.GetCommittedSize() != int64(len(compressed)) {
		t.Fatalf("compressed Write from 0 = %v, %v", resp, err)
	}
	// Once stored, a compressed resource reports complete with committed_size -1 (REAPI: the
	// compressed size of a blob stored by someone else is unknown).
	q, err = e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: digest.WriteResourceName("other", d, digest.Zstd)})
	if err != nil || q.GetCommittedSize() != -1 || !q.GetComplete() {
		t.Fatalf("QueryWriteStatus of a stored blob's compressed name = %v, %v; want complete, -1", q, err)
	}
	resp, err = writeChunks(ctx, e.bs, digest.WriteResourceName("other", d, digest.Zstd), compressed, 0, 64<<10, true)
	if err != nil || resp.GetCommittedSize() != -1 {
		t.Fatalf("compressed Write of a stored blob = %v, %v; want committed_size -1", resp, err)
	}
}
