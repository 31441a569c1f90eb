package storage_test

import (
	"bytes"
	"context"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

func TestMaxBlobSize(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{MaxBlobSizeBytes: 100})
	ctx := context.Background()
	caps, err := e.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: "main"})
	if err != nil || caps.GetCacheCapabilities().GetMaxCasBlobSizeBytes() != 100 {
		t.Fatalf("max_cas_blob_size_bytes = %d, %v", caps.GetCacheCapabilities().GetMaxCasBlobSizeBytes(), err)
	}
	small, big := bytes.Repeat([]byte("s"), 100), bytes.Repeat([]byte("b"), 101)
	ds, db := digest.FromBytes(small), digest.FromBytes(big)
	tooBig := "Blob " + db.String() + " is 101 bytes, more than the largest blob this server accepts (100 bytes, --max-blob-size)"

	resp, err := e.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: "main", Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: ds.Proto(), Data: small}, {Digest: db.Proto(), Data: big},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if st := resp.GetResponses()[0].GetStatus(); st.GetCode() != 0 {
		t.Errorf("blob at the limit: %v", st)
	}
	if st := resp.GetResponses()[1].GetStatus(); codes.Code(st.GetCode()) != codes.InvalidArgument || st.GetMessage() != tooBig {
		t.Errorf("blob over the limit: %v", st)
	}

	stream, err := e.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The refusal comes from the resource name alone, before the data.
	if err := stream.Send(&bspb.WriteRequest{ResourceName: digest.WriteResourceName("main", db, digest.Identity), Data: big[:10]}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.CloseAndRecv()
	wantStatus(t, err, codes.InvalidArgument, tooBig)
	missing, err := e.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: "main", BlobDigests: []*repb.Digest{ds.Proto(), db.Proto()}})
	if err != nil || len(missing.GetMissingBlobDigests()) != 1 || missing.GetMissingBlobDigests()[0].GetHash() != db.Hash {
		t.Errorf("missing = %v, %v; want only the big blob", missing, err)
	}
}
