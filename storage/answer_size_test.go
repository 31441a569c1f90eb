package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// storeBlobs puts every blob into the store directly.
func storeBlobs(t testing.TB, s storage.BlobStore, blobs ...[]byte) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	for _, b := range blobs {
		d := digest.FromBytes(b)
		if err := s.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// A client on gRPC's default 4 MiB receive limit that keeps to the advertised
// max_batch_total_size_bytes receives every BatchReadBlobs answer: one blob of exactly the
// limit, and 3,000 small blobs filling it (the framing of each entry included).
func TestBatchReadAnswersFitTheDefaultReceiveLimit(t *testing.T) {
	e := newTestEnv(t, 64<<20, storage.ServiceOptions{})
	ctx := context.Background()
	cas := repb.NewContentAddressableStorageClient(e.dial()) // 4 MiB receive limit
	caps, err := e.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	limit := caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes()
	if limit <= 0 || limit >= storage.DefaultMaxAnswerSizeBytes {
		t.Fatalf("advertised max_batch_total_size_bytes %d leaves no room for framing below 4 MiB", limit)
	}

	big, _ := randomBlob(t, int(limit))
	small := make([][]byte, 3000)
	per := int(limit) / len(small)
	for i := range small {
		small[i] = bytes.Repeat([]byte{byte(i), byte(i >> 8)}, per/2)
	}
	for _, batch := range [][]digest.Digest{storeBlobs(t, e.store, big), storeBlobs(t, e.store, small...)} {
		req := &repb.BatchReadBlobsRequest{}
		var total int64
		for _, d := range batch {
			req.Digests = append(req.Digests, d.Proto())
			total += d.Size
		}
		if total > limit {
			t.Fatalf("test batch of %d bytes exceeds the advertised %d", total, limit)
		}
		resp, err := cas.BatchReadBlobs(ctx, req)
		if err != nil {
			t.Fatalf("BatchReadBlobs of %d blobs, %d bytes (advertised limit %d): %v", len(batch), total, limit, err)
		}
		if n := proto.Size(resp); n > storage.DefaultMaxAnswerSizeBytes {
			t.Fatalf("answer of %d bytes exceeds 4 MiB", n)
		}
		for i, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 || digest.FromBytes(r.GetData()) != batch[i] {
				t.Fatalf("entry %d: %v", i, r.GetStatus())
			}
		}
	}

	// Missing tiny blobs answer with errors longer than their data: messages are dropped, codes
	// kept, so the answer still fits.
	var ghosts []*repb.Digest
	var total int64
	for i := 0; total+1 <= limit && i < 40000; i++ {
		ghosts = append(ghosts, digest.FromBytes([]byte{byte(i), byte(i >> 8), byte(i >> 16)}).Proto())
		total += 3
	}
	resp, err := cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: ghosts})
	if err != nil {
		// A batch whose framing alone would not fit is refused as the REAPI says.
		wantStatus(t, err, codes.InvalidArgument, "")
	} else {
		for _, r := range resp.GetResponses() {
			if codes.Code(r.GetStatus().GetCode()) != codes.NotFound {
				t.Fatalf("missing blob answered %v", r.GetStatus())
			}
		}
	}
}

// A BatchReadBlobs whose answer could not fit in 4 MiB is refused with INVALID_ARGUMENT
// ("the client attempted to read more than the server supported limit") before anything is
// read, instead of an answer the client would reject.
func TestBatchReadRefusesAnAnswerTooLargeToReceive(t *testing.T) {
	e := newTestEnv(t, 64<<20, storage.ServiceOptions{})
	req := &repb.BatchReadBlobsRequest{}
	for i := 0; i < 20000; i++ { // 20,000 blobs of 180 bytes: 3.6 MB of data, 5.2 MB answered
		req.Digests = append(req.Digests, digest.FromBytes(bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 90)).Proto())
	}
	_, err := repb.NewContentAddressableStorageClient(e.dial()).BatchReadBlobs(context.Background(), req)
	wantStatus(t, err, codes.InvalidArgument, "")
}

// FindMissingBlobs answers a subset of the request's digests in the same encoding, so a request
// a client could send within 4 MiB gets an answer within 4 MiB even when every blob is missing:
// the answer is never larger than the request.
func TestFindMissingAnswerIsNoLargerThanTheRequest(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{})
	req := &repb.FindMissingBlobsRequest{}
	for i := 0; i < 5000; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		req.BlobDigests = append(req.BlobDigests, &repb.Digest{Hash: hex.EncodeToString(h[:]), SizeBytes: int64(i + 1)})
	}
	resp, err := repb.NewContentAddressableStorageClient(e.dial()).FindMissingBlobs(context.Background(), req)
	if err != nil {
		t.Fatalf("FindMissingBlobs of %d digests (%d bytes): %v", len(req.BlobDigests), proto.Size(req), err)
	}
	if len(resp.GetMissingBlobDigests()) != len(req.BlobDigests) || proto.Size(resp) > proto.Size(req) {
		t.Fatalf("answer: %d digests, %d bytes; request %d digests, %d bytes", len(resp.GetMissingBlobDigests()), proto.Size(resp), len(req.BlobDigests), proto.Size(req))
	}
}

// GetTree pages, framing and page token included, fit in 4 MiB: a tree of 600 directories of
// about 20 KiB each (12 MB in all) arrives in several pages to a 4 MiB client.
func TestGetTreePagesFitTheDefaultReceiveLimit(t *testing.T) {
	e := newTestEnv(t, 64<<20, storage.ServiceOptions{})
	ctx := context.Background()
	root := &repb.Directory{}
	for i := 0; i < 600; i++ {
		leaf := &repb.Directory{}
		for j := 0; j < 200; j++ {
			leaf.Symlinks = append(leaf.Symlinks, &repb.SymlinkNode{Name: fmt.Sprintf("l%03d-%03d", i, j), Target: fmt.Sprintf("%080d", j)})
		}
		b, d, _ := digest.FromMessage(leaf)
		storeBlobs(t, e.store, b)
		root.Directories = append(root.Directories, &repb.DirectoryNode{Name: fmt.Sprintf("d%03d", i), Digest: d.Proto()})
	}
	rb, rd, _ := digest.FromMessage(root)
	storeBlobs(t, e.store, rb)
	stream, err := repb.NewContentAddressableStorageClient(e.dial()).GetTree(ctx, &repb.GetTreeRequest{RootDigest: rd.Proto()})
	if err != nil {
		t.Fatal(err)
	}
	dirs, pages := 0, 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("GetTree page %d: %v", pages, err)
		}
		if n := proto.Size(resp); n > storage.DefaultMaxAnswerSizeBytes {
			t.Fatalf("page %d is %d bytes", pages, n)
		}
		pages++
		dirs += len(resp.GetDirectories())
		if resp.GetNextPageToken() == "" {
			break
		}
		stream, err = repb.NewContentAddressableStorageClient(e.dial()).GetTree(ctx, &repb.GetTreeRequest{RootDigest: rd.Proto(), PageToken: resp.GetNextPageToken()})
		if err != nil {
			t.Fatal(err)
		}
	}
	if dirs != 601 || pages < 3 {
		t.Fatalf("got %d directories in %d pages, want 601 in at least 3", dirs, pages)
	}
}

// GetActionResult inlines only what keeps the answer within 4 MiB (REAPI: the server MUST omit
// inlining that would exceed the message size limit): a result listing 3.5 MB of output files
// is answered without its 1 MiB stdout inlined, a small one with it.
func TestGetActionResultInliningKeepsTheAnswerReceivable(t *testing.T) {
	e := newTestEnv(t, 64<<20, storage.ServiceOptions{})
	ctx := context.Background()
	acc := repb.NewActionCacheClient(e.dial())
	stdout := bytes.Repeat([]byte("o"), 1<<20)
	content := []byte("same content")
	ds := storeBlobs(t, e.store, stdout, content)
	big := &repb.ActionResult{StdoutDigest: ds[0].Proto()}
	for i := 0; proto.Size(big) < 3500000; i++ {
		big.OutputFiles = append(big.OutputFiles, &repb.OutputFile{Path: fmt.Sprintf("out/%01000d", i), Digest: ds[1].Proto()})
	}
	small := &repb.ActionResult{StdoutDigest: ds[0].Proto(), OutputFiles: big.OutputFiles[:3]}
	for i, c := range []struct {
		result     *repb.ActionResult
		wantInline bool
	}{{big, false}, {small, true}} {
		ad := digest.FromBytes([]byte(fmt.Sprint("action ", i)))
		if _, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: ad.Proto(), ActionResult: c.result}); err != nil {
			t.Fatal(err)
		}
		got, err := acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: ad.Proto(), InlineStdout: true})
		if err != nil {
			t.Fatalf("GetActionResult of a %d-byte result with stdout inlined: %v", proto.Size(c.result), err)
		}
		if inlined := len(got.GetStdoutRaw()) > 0; inlined != c.wantInline {
			t.Fatalf("result %d: stdout inlined %v, want %v", i, inlined, c.wantInline)
		}
	}
}

// A single Directory too large for any answer a client on gRPC's default 4 MiB receive limit
// can take is not sent as a page of its own (which that client would fail on with a transport
// error): GetTree answers FAILED_PRECONDITION naming it, after the pages before it.
func TestGetTreeRefusesADirectoryTooLargeForOnePage(t *testing.T) {
	e := newTestEnv(t, 64<<20, storage.ServiceOptions{})
	ctx := context.Background()
	big := &repb.Directory{}
	// proto.Size is linear in the entries: measure every 1,000 entries, not after each one.
	for j := 0; j%1000 != 0 || proto.Size(big) <= storage.DefaultMaxAnswerSizeBytes; j++ {
		big.Symlinks = append(big.Symlinks, &repb.SymlinkNode{Name: fmt.Sprintf("l%06d", j), Target: fmt.Sprintf("%0200d", j)})
	}
	bb, bd, _ := digest.FromMessage(big)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "big", Digest: bd.Proto()}}}
	rb, rd, _ := digest.FromMessage(root)
	storeBlobs(t, e.store, bb, rb)
	client := repb.NewContentAddressableStorageClient(e.dial())

	stream, err := client.GetTree(ctx, &repb.GetTreeRequest{RootDigest: rd.Proto()})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetDirectories()) != 1 || resp.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, %v; want the root alone and a token", resp, err)
	}
	stream, err = client.GetTree(ctx, &repb.GetTreeRequest{RootDigest: rd.Proto(), PageToken: resp.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantStatus(t, err, codes.FailedPrecondition, fmt.Sprintf("Failed to get tree %s: directory %s is %d bytes, more than fits in one GetTree answer (%d bytes); read it with ByteStream",
		rd, bd, bd.Size, storage.DefaultMaxAnswerSizeBytes-128))

	// As the root of its own tree, likewise.
	stream, err = client.GetTree(ctx, &repb.GetTreeRequest{RootDigest: bd.Proto()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("GetTree of the big directory: %v, want FAILED_PRECONDITION", err)
	}
}
