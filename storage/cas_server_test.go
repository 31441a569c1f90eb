package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

func TestFindMissingBlobs(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{})
	ctx := context.Background()
	present := mustPut(t, e.store, []byte("present"))
	_, absent := randomBlob(t, 10)
	resp, err := e.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		InstanceName: "main",
		BlobDigests:  []*repb.Digest{present.Proto(), absent.Proto(), digest.Empty.Proto()},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetMissingBlobDigests(); len(got) != 1 || got[0].GetHash() != absent.Hash || got[0].GetSizeBytes() != absent.Size {
		t.Fatalf("missing = %v, want only %s", got, absent)
	}
	// SHA256 explicitly is as good as unset.
	if _, err := e.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_SHA256}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		req  *repb.FindMissingBlobsRequest
		msg  string
	}{
		{"short hash", &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{{Hash: "abc", SizeBytes: 1}}},
			"Invalid digest abc/1: hash has length 3, want 64 (SHA-256)"},
		{"negative size", &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{{Hash: absent.Hash, SizeBytes: -1}}},
			fmt.Sprintf("Invalid digest %s/-1: negative size", absent.Hash)},
		{"upper-case hash", &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{{Hash: strings.ToUpper(absent.Hash), SizeBytes: 10}}}, ""},
		{"empty digest", &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{{}}}, "Invalid digest /0: hash has length 0, want 64 (SHA-256)"},
		{"other digest function", &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_MD5},
			"Unsupported digest function MD5: this server supports SHA256 only"},
		{"reserved instance name", &repb.FindMissingBlobsRequest{InstanceName: "x/blobs"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.cas.FindMissingBlobs(ctx, tc.req)
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}
}

func TestBatchUpdateBlobs(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{MaxBatchTotalSizeBytes: 10000})
	ctx := context.Background()
	good, goodDigest := randomBlob(t, 1000)
	bad, _ := randomBlob(t, 1000)
	_, badDigest := randomBlob(t, 1000)
	compressible := bytes.Repeat([]byte("buildfleet "), 500)
	zd := digest.FromBytes(compressible)
	enc, _ := zstd.NewWriter(nil)
	compressed := enc.EncodeAll(compressible, nil)
	other, otherDigest := randomBlob(t, 10)

	resp, err := e.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{
		InstanceName: "main",
		Requests: []*repb.BatchUpdateBlobsRequest_Request{
			{Digest: goodDigest.Proto(), Data: good},
			{Digest: badDigest.Proto(), Data: bad},
			{Digest: &repb.Digest{Hash: "nothex", SizeBytes: 3}, Data: []byte("abc")},
			{Digest: zd.Proto(), Data: compressed, Compressor: repb.Compressor_ZSTD},
			{Digest: otherDigest.Proto(), Data: other, Compressor: repb.Compressor_DEFLATE},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		code codes.Code
		msg  string
	}{
		{codes.OK, ""},
		{codes.InvalidArgument, fmt.Sprintf("Failed to store blob %s: content has digest %s", badDigest, digest.FromBytes(bad))},
		{codes.InvalidArgument, "Invalid digest nothex/3: hash has length 6, want 64 (SHA-256)"},
		{codes.OK, ""},
		{codes.InvalidArgument, fmt.Sprintf("Failed to store blob %s: unsupported compressor DEFLATE", otherDigest)},
	}
	if len(resp.GetResponses()) != len(want) {
		t.Fatalf("%d responses, want %d", len(resp.GetResponses()), len(want))
	}
	for i, r := range resp.GetResponses() {
		if codes.Code(r.GetStatus().GetCode()) != want[i].code || r.GetStatus().GetMessage() != want[i].msg {
			t.Errorf("response %d = %v, want %s %q", i, r.GetStatus(), want[i].code, want[i].msg)
		}
	}
	if got := readAll(t, e.store, goodDigest, 0, 0); !bytes.Equal(got, good) {
		t.Error("good blob not stored")
	}
	if got := readAll(t, e.store, zd, 0, 0); !bytes.Equal(got, compressible) {
		t.Error("zstd blob not stored decompressed")
	}
	if m := missing(t, e.store, badDigest, otherDigest); len(m) != 2 {
		t.Errorf("rejected blobs were stored: missing %v", m)
	}

	// Over the batch limit: the whole request is refused and nothing is stored.
	big1, d1 := randomBlob(t, 6000)
	big2, d2 := randomBlob(t, 6000)
	_, err = e.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: d1.Proto(), Data: big1}, {Digest: d2.Proto(), Data: big2},
	}})
	wantStatus(t, err, codes.InvalidArgument, "Batch of 2 blobs holds 12000 bytes, more than max_batch_total_size_bytes 10000: upload large blobs with ByteStream.Write")
	if m := missing(t, e.store, d1, d2); len(m) != 2 {
		t.Errorf("blobs of a refused batch were stored")
	}
	_, err = e.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_SHA1})
	wantStatus(t, err, codes.InvalidArgument, "Unsupported digest function SHA1: this server supports SHA256 only")
}

func TestBatchReadBlobs(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{MaxBatchTotalSizeBytes: 10000})
	ctx := context.Background()
	data, d := randomBlob(t, 3000)
	mustPut(t, e.store, data)
	_, absent := randomBlob(t, 100)
	resp, err := e.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{
		InstanceName: "main",
		Digests:      []*repb.Digest{d.Proto(), absent.Proto(), digest.Empty.Proto()},
	})
	if err != nil {
		t.Fatal(err)
	}
	rs := resp.GetResponses()
	if len(rs) != 3 {
		t.Fatalf("%d responses, want 3", len(rs))
	}
	if rs[0].GetStatus().GetCode() != 0 || !bytes.Equal(rs[0].GetData(), data) || rs[0].GetDigest().GetHash() != d.Hash {
		t.Errorf("present blob: %v", rs[0].GetStatus())
	}
	if codes.Code(rs[1].GetStatus().GetCode()) != codes.NotFound ||
		rs[1].GetStatus().GetMessage() != fmt.Sprintf("Failed to read blob %s: Blob %s not found", absent, absent) {
		t.Errorf("absent blob: %v", rs[1].GetStatus())
	}
	if rs[2].GetStatus().GetCode() != 0 || len(rs[2].GetData()) != 0 {
		t.Errorf("empty blob: %v", rs[2].GetStatus())
	}
	over := digest.Digest{Hash: d.Hash, Size: 20000}
	_, err = e.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{over.Proto()}})
	wantStatus(t, err, codes.InvalidArgument, "Batch of 1 blobs totals 20000 bytes, more than max_batch_total_size_bytes 10000: read large blobs with ByteStream.Read")
	_, err = e.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{{Hash: d.Hash, SizeBytes: -5}}})
	wantStatus(t, err, codes.InvalidArgument, "")
}

// putMessage stores a serialized message in the store and returns its digest.
func putDirectory(t testing.TB, s storage.BlobStore, dir *repb.Directory) digest.Digest {
	t.Helper()
	b, d, err := digest.FromMessage(dir)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, b)
	return d
}

func TestGetTree(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{})
	ctx := context.Background()
	file := mustPut(t, e.store, []byte("file"))
	leaf := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: file.Proto()}}}
	leafD := putDirectory(t, e.store, leaf)
	mid := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "leaf", Digest: leafD.Proto()}}}
	midD := putDirectory(t, e.store, mid)
	_, gone := randomBlob(t, 50) // A child absent from the CAS is skipped.
	other := &repb.Directory{Files: []*repb.FileNode{{Name: "g", Digest: file.Proto()}}, Symlinks: []*repb.SymlinkNode{{Name: "l", Target: "/abs"}}}
	otherD := putDirectory(t, e.store, other)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "a", Digest: midD.Proto()},
		{Name: "b", Digest: otherD.Proto()},
		{Name: "c", Digest: leafD.Proto()}, // Also below a: returned once.
		{Name: "d", Digest: gone.Proto()},
	}}
	rootD := putDirectory(t, e.store, root)

	readTree := func(pageSize int32) ([]*repb.Directory, int) {
		var dirs []*repb.Directory
		token, pages := "", 0
		for {
			stream, err := e.cas.GetTree(ctx, &repb.GetTreeRequest{InstanceName: "main", RootDigest: rootD.Proto(), PageSize: pageSize, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			token = ""
			for {
				resp, err := stream.Recv()
				if err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				pages++
				dirs = append(dirs, resp.GetDirectories()...)
				token = resp.GetNextPageToken()
			}
			if token == "" {
				return dirs, pages
			}
		}
	}
	wantOrder := []digest.Digest{rootD, midD, otherD, leafD}
	for _, pageSize := range []int32{0, 1, 2, 3, 100} {
		dirs, pages := readTree(pageSize)
		if len(dirs) != len(wantOrder) {
			t.Fatalf("page size %d: %d directories, want %d", pageSize, len(dirs), len(wantOrder))
		}
		for i, dir := range dirs {
			_, d, _ := digest.FromMessage(dir)
			if d != wantOrder[i] {
				t.Errorf("page size %d: directory %d is %s, want %s", pageSize, i, d, wantOrder[i])
			}
		}
		wantPages := 1
		if pageSize > 0 {
			wantPages = (len(wantOrder) + int(pageSize) - 1) / int(pageSize)
		}
		if pages != wantPages {
			t.Errorf("page size %d: %d pages, want %d", pageSize, pages, wantPages)
		}
	}

	getTreeErr := func(req *repb.GetTreeRequest) error {
		stream, err := e.cas.GetTree(ctx, req)
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	_, absent := randomBlob(t, 20)
	wantStatus(t, getTreeErr(&repb.GetTreeRequest{RootDigest: absent.Proto()}), codes.NotFound,
		fmt.Sprintf("Failed to get tree %s: Failed to read blob %s: Blob %s not found", absent, absent, absent))
	wantStatus(t, getTreeErr(&repb.GetTreeRequest{RootDigest: rootD.Proto(), PageToken: "garbage"}), codes.InvalidArgument, `Invalid page token "garbage"`)
	// A token is bound to its tree: one from this tree is refused for another root, and a bare
	// offset (or a non-canonical one) is not a token.
	first, err := e.cas.GetTree(ctx, &repb.GetTreeRequest{RootDigest: rootD.Proto(), PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	page, err := first.Recv()
	if err != nil || page.GetNextPageToken() == "" {
		t.Fatalf("first page of one directory: %v, %v", page, err)
	}
	otherB, otherD, _ := digest.FromMessage(&repb.Directory{Files: []*repb.FileNode{{Name: "other", Digest: file.Proto()}}})
	storeBlobs(t, e.store, otherB)
	wantStatus(t, getTreeErr(&repb.GetTreeRequest{RootDigest: otherD.Proto(), PageToken: page.GetNextPageToken()}), codes.InvalidArgument,
		fmt.Sprintf("Invalid page token %q: it belongs to another tree than %s", page.GetNextPageToken(), otherD))
	for _, tok := range []string{"1", "v2:1", "v1:1", "v2:" + rootD.Hash + "/01", "v2:" + rootD.Hash + "/+1", "v2:" + rootD.Hash + "/-1"} {
		wantStatus(t, getTreeErr(&repb.GetTreeRequest{RootDigest: rootD.Proto(), PageToken: tok}), codes.InvalidArgument, fmt.Sprintf("Invalid page token %q", tok))
	}
	wantStatus(t, getTreeErr(&repb.GetTreeRequest{RootDigest: rootD.Proto(), PageSize: -1}), codes.InvalidArgument, "Invalid page size -1")
	wantStatus(t, getTreeErr(&repb.GetTreeRequest{}), codes.InvalidArgument, "Missing digest")
	wantStatus(t, getTreeErr(&repb.GetTreeRequest{RootDigest: file.Proto()}), codes.InvalidArgument, "")
}
