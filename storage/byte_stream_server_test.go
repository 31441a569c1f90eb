package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// writeChunks sends data from offset start in chunks of chunk bytes, with finish_write on the
// last one when finish is set, and returns the server's answer.
func writeChunks(ctx context.Context, bs bspb.ByteStreamClient, name string, data []byte, start int64, chunk int, finish bool) (*bspb.WriteResponse, error) {
	stream, err := bs.Write(ctx)
	if err != nil {
		return nil, err
	}
	offset := start
	for first := true; first || len(data) > 0; first = false {
		n := min(chunk, len(data))
		req := &bspb.WriteRequest{WriteOffset: offset, Data: data[:n], FinishWrite: finish && n == len(data)}
		if first {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			break // The server answered early; CloseAndRecv tells how.
		}
		data = data[n:]
		offset += int64(n)
	}
	return stream.CloseAndRecv()
}

// readStream reads a whole ByteStream resource.
func readStream(ctx context.Context, bs bspb.ByteStreamClient, req *bspb.ReadRequest) ([]byte, int, error) {
	stream, err := bs.Read(ctx, req)
	if err != nil {
		return nil, 0, err
	}
	var buf bytes.Buffer
	chunks := 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return buf.Bytes(), chunks, nil
		} else if err != nil {
			return nil, chunks, err
		}
		chunks++
		buf.Write(resp.GetData())
	}
}

func TestByteStreamWriteRead(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	ctx := context.Background()
	data, d := randomBlob(t, 1<<20+17)
	name := digest.WriteResourceName("main/team", d, digest.Identity)
	resp, err := writeChunks(ctx, e.bs, name, data, 0, 100<<10, true)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCommittedSize() != d.Size {
		t.Fatalf("committed_size = %d, want %d", resp.GetCommittedSize(), d.Size)
	}
	// Content addressing: any instance reads it.
	got, chunks, err := readStream(ctx, e.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", d, digest.Identity)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back different content")
	}
	// Chunks just under 1 MiB: the encoded ReadResponse fits gRPC's 1 MiB buffer tier.
	if chunks != 2 {
		t.Errorf("read in %d chunks, want 2 of just under 1 MiB", chunks)
	}
	stream, err := e.bs.Read(ctx, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", d, digest.Identity)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if n := proto.Size(first); n > 1<<20 || n < 1<<20-4<<10 {
		t.Errorf("first ReadResponse encodes to %d bytes, want just under 1 MiB", n)
	}
	got, _, err = readStream(ctx, e.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("main", d, digest.Identity), ReadOffset: 1000, ReadLimit: 5000})
	if err != nil || !bytes.Equal(got, data[1000:6000]) {
		t.Fatalf("read with offset and limit: %v", err)
	}
	got, _, err = readStream(ctx, e.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("main", d, digest.Identity), ReadOffset: d.Size})
	if err != nil || len(got) != 0 {
		t.Fatalf("read at the end: %d bytes, %v", len(got), err)
	}
	got, _, err = readStream(ctx, e.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", digest.Empty, digest.Identity)})
	if err != nil || len(got) != 0 {
		t.Fatalf("read of the empty blob: %d bytes, %v", len(got), err)
	}

	_, absent := randomBlob(t, 10)
	for _, tc := range []struct {
		name string
		req  *bspb.ReadRequest
		code codes.Code
		msg  string
	}{
		{"absent", &bspb.ReadRequest{ResourceName: "blobs/" + absent.String()}, codes.NotFound,
			fmt.Sprintf("Failed to read blob %s: Blob %s not found", absent, absent)},
		{"offset beyond end", &bspb.ReadRequest{ResourceName: "blobs/" + d.String(), ReadOffset: d.Size + 1}, codes.OutOfRange,
			fmt.Sprintf("Failed to read blob %s: read offset %d is outside the blob", d, d.Size+1)},
		{"negative offset", &bspb.ReadRequest{ResourceName: "blobs/" + d.String(), ReadOffset: -1}, codes.OutOfRange, ""},
		{"negative limit", &bspb.ReadRequest{ResourceName: "blobs/" + d.String(), ReadLimit: -1}, codes.InvalidArgument, ""},
		{"not a resource name", &bspb.ReadRequest{ResourceName: "main/whatever"}, codes.InvalidArgument,
			`Invalid resource name "main/whatever": want {instance}/blobs/{hash}/{size}`},
		{"bad hash", &bspb.ReadRequest{ResourceName: "blobs/xyz/3"}, codes.InvalidArgument, ""},
		{"compressed with limit", &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + d.String(), ReadLimit: 10}, codes.InvalidArgument,
			fmt.Sprintf("Failed to read blob %s: read_limit must be zero for compressed reads", d)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readStream(ctx, e.bs, tc.req)
			wantStatus(t, err, tc.code, tc.msg)
		})
	}
}

func TestByteStreamWriteErrors(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	ctx := context.Background()
	data, d := randomBlob(t, 200<<10)
	name := digest.WriteResourceName("", d, digest.Identity)
	corrupt := append([]byte{}, data...)
	corrupt[1000] ^= 1

	for _, tc := range []struct {
		name string
		run  func() (*bspb.WriteResponse, error)
		code codes.Code
		msg  string
	}{
		{"content mismatch", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, name, corrupt, 0, 64<<10, true)
		}, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: Failed to store blob %s: content has digest %s", d, d, digest.FromBytes(corrupt))},
		{"short at finish", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, name, data[:1000], 0, 64<<10, true)
		}, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: finish_write after 1000 bytes, want %d", d, d.Size)},
		{"too long", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, name, append(append([]byte{}, data...), 1, 2), 0, 64<<10, true)
		}, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: more data than the blob's %d bytes", d, d.Size)},
		{"first offset not zero", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, name, data[10:], 10, 64<<10, true)
		}, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: write_offset 10 does not match the committed size 0", d)},
		{"gap in offsets", func() (*bspb.WriteResponse, error) {
			stream, _ := e.bs.Write(ctx)
			stream.Send(&bspb.WriteRequest{ResourceName: name, Data: data[:100]})
			stream.Send(&bspb.WriteRequest{WriteOffset: 200, Data: data[200:300]})
			return stream.CloseAndRecv()
		}, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: write_offset 200 does not match the committed size 100", d)},
		{"resource name changes", func() (*bspb.WriteResponse, error) {
			stream, _ := e.bs.Write(ctx)
			stream.Send(&bspb.WriteRequest{ResourceName: name, Data: data[:100]})
			stream.Send(&bspb.WriteRequest{ResourceName: "uploads/x/blobs/" + d.String(), WriteOffset: 100, Data: data[100:200]})
			return stream.CloseAndRecv()
		}, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: resource name changed mid-stream to %q", d, "uploads/x/blobs/"+d.String())},
		{"read resource name", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, "blobs/"+d.String(), data, 0, 64<<10, true)
		}, codes.InvalidArgument, fmt.Sprintf("Invalid resource name %q: want {instance}/uploads/{uuid}/blobs/{hash}/{size}", "blobs/"+d.String())},
		{"negative size", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, "uploads/u/blobs/"+d.Hash+"/-4", data, 0, 64<<10, true)
		}, codes.InvalidArgument, ""},
		{"unknown compressor", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, "uploads/u/compressed-blobs/brotli/"+d.String(), data, 0, 64<<10, true)
		}, codes.InvalidArgument, ""},
		{"invalid zstd", func() (*bspb.WriteResponse, error) {
			return writeChunks(ctx, e.bs, digest.WriteResourceName("", d, digest.Zstd), data, 0, 64<<10, true)
		}, codes.InvalidArgument, ""},
		{"empty stream", func() (*bspb.WriteResponse, error) {
			stream, _ := e.bs.Write(ctx)
			return stream.CloseAndRecv()
		}, codes.InvalidArgument, "Write stream carried no request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.run()
			wantStatus(t, err, tc.code, tc.msg)
			if m := missing(t, e.store, d); !m[d] {
				t.Fatal("a rejected write stored the blob")
			}
		})
	}
	// The blob store cleans up after every rejected write (asynchronously for aborted uploads).
	waitNoTempFiles(t, e.dir+"/cas")
}

// waitNoTempFiles waits for the store's aborted uploads to remove their temporary files.
func waitNoTempFiles(t testing.TB, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		entries, err := os.ReadDir(filepath.Join(dir, "tmp"))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary files left: %d", len(entries))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestByteStreamWriteOfPresentBlobShortCircuits(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	ctx := context.Background()
	data, d := randomBlob(t, 300<<10)
	mustPut(t, e.store, data)
	// The client sends only its first chunk and no finish_write: the server answers at once.
	stream, err := e.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{ResourceName: digest.WriteResourceName("", d, digest.Identity), Data: data[:1000]}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("write of a present blob: %v, %v; want committed_size %d", resp, err, d.Size)
	}
	resp, err = writeChunks(ctx, e.bs, digest.WriteResourceName("", d, digest.Zstd), []byte("not even zstd"), 0, 1000, true)
	if err != nil || resp.GetCommittedSize() != -1 {
		t.Fatalf("compressed write of a present blob: %v, %v; want committed_size -1", resp, err)
	}
	// The empty blob is always present.
	resp, err = writeChunks(ctx, e.bs, digest.WriteResourceName("", digest.Empty, digest.Identity), nil, 0, 1000, true)
	if err != nil || resp.GetCommittedSize() != 0 {
		t.Fatalf("write of the empty blob: %v, %v", resp, err)
	}
	q, err := e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: digest.WriteResourceName("", d, digest.Identity)})
	if err != nil || !q.GetComplete() || q.GetCommittedSize() != d.Size {
		t.Fatalf("QueryWriteStatus of a present blob: %v, %v", q, err)
	}
}

func TestByteStreamResumedWrite(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{UploadIdleTimeout: time.Minute})
	ctx := context.Background()
	data, d := randomBlob(t, 1<<20)
	name := digest.WriteResourceName("main", d, digest.Identity)

	q, err := e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || q.GetCommittedSize() != 0 || q.GetComplete() {
		t.Fatalf("QueryWriteStatus before any write: %v, %v", q, err)
	}
	// The first stream ends after 400 KiB without finish_write.
	half := int64(400 << 10)
	resp, err := writeChunks(ctx, e.bs, name, data[:half], 0, 64<<10, false)
	if err != nil || resp.GetCommittedSize() != half {
		t.Fatalf("Write half-closed without finish_write: %v, %v; want a WriteResponse with committed_size %d", resp, err, half)
	}
	q, err = e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || q.GetCommittedSize() != half || q.GetComplete() {
		t.Fatalf("QueryWriteStatus after interruption: %v, %v; want committed %d", q, err, half)
	}
	if m := missing(t, e.store, d); !m[d] {
		t.Fatal("a partial upload is visible in the store")
	}
	// Resuming at another offset is refused, and the upload survives that.
	_, err = writeChunks(ctx, e.bs, name, data[1000:], 1000, 64<<10, true)
	wantStatus(t, err, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: write_offset 1000 does not match the committed size %d", d, half))
	// Resuming at the committed size completes the blob.
	resp, err = writeChunks(ctx, e.bs, name, data[half:], half, 64<<10, true)
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("resumed write: %v, %v", resp, err)
	}
	if got := readAll(t, e.store, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("resumed upload stored different content")
	}

	// A client may also start over from zero.
	data2, d2 := randomBlob(t, 100<<10)
	name2 := digest.WriteResourceName("", d2, digest.Identity)
	writeChunks(ctx, e.bs, name2, data2[:5000], 0, 1000, false)
	if resp, err := writeChunks(ctx, e.bs, name2, data2, 0, 64<<10, true); err != nil || resp.GetCommittedSize() != d2.Size {
		t.Fatalf("restarted write: %v, %v", resp, err)
	}

	// An interrupted upload left alone past the idle timeout is dropped.
	data3, d3 := randomBlob(t, 100<<10)
	name3 := digest.WriteResourceName("", d3, digest.Identity)
	writeChunks(ctx, e.bs, name3, data3[:5000], 0, 1000, false)
	e.clock.Advance(2 * time.Minute)
	q, err = e.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name3})
	if err != nil || q.GetCommittedSize() != 0 {
		t.Fatalf("QueryWriteStatus of an expired upload: %v, %v; want committed 0", q, err)
	}
	_, err = writeChunks(ctx, e.bs, name3, data3[5000:], 5000, 64<<10, true)
	wantStatus(t, err, codes.InvalidArgument, fmt.Sprintf("Failed to write blob %s: write_offset 5000 does not match the committed size 0", d3))
	waitNoTempFiles(t, e.dir+"/cas")
}

func TestByteStreamResumeAfterCancelledStream(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	data, d := randomBlob(t, 512<<10)
	name := digest.WriteResourceName("", d, digest.Identity)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{ResourceName: name, Data: data[:128<<10]}); err != nil {
		t.Fatal(err)
	}
	// Wait until the server has taken the chunk, then drop the connection's stream.
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, err := e.bs.QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil {
			t.Fatal(err)
		}
		if q.GetCommittedSize() == 128<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed size stuck at %d", q.GetCommittedSize())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	// The resumed stream waits for the cancelled one to let go, then continues.
	resp, err := writeChunks(context.Background(), e.bs, name, data[128<<10:], 128<<10, 64<<10, true)
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("resumed write after cancellation: %v, %v", resp, err)
	}
	if got := readAll(t, e.store, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("resumed upload stored different content")
	}
}

func TestByteStreamZstd(t *testing.T) {
	e := newTestEnv(t, 16<<20, storage.ServiceOptions{})
	ctx := context.Background()
	var src bytes.Buffer
	for i := 0; src.Len() < 2<<20; i++ {
		fmt.Fprintf(&src, "line %d of a compressible build log\n", i)
	}
	data := src.Bytes()
	d := digest.FromBytes(data)
	enc, _ := zstd.NewWriter(nil)
	compressed := enc.EncodeAll(data, nil)
	resp, err := writeChunks(ctx, e.bs, digest.WriteResourceName("main", d, digest.Zstd), compressed, 0, 16<<10, true)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCommittedSize() != int64(len(compressed)) {
		t.Errorf("committed_size = %d, want the %d compressed bytes", resp.GetCommittedSize(), len(compressed))
	}
	if got := readAll(t, e.store, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("stored content differs")
	}
	dec, _ := zstd.NewReader(nil)
	for _, offset := range []int64{0, 12345} {
		got, _, err := readStream(ctx, e.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("main", d, digest.Zstd), ReadOffset: offset})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) >= len(data)/4 {
			t.Errorf("compressed read of %d bytes is not compressed", len(got))
		}
		plain, err := dec.DecodeAll(got, nil)
		if err != nil || !bytes.Equal(plain, data[offset:]) {
			t.Fatalf("compressed read from %d does not decode to the blob: %v", offset, err)
		}
	}
	// Compressed content that decodes to something else is refused.
	wrong := enc.EncodeAll(append(append([]byte{}, data[:len(data)-1]...), 'X'), nil)
	_, err = writeChunks(ctx, e.bs, digest.WriteResourceName("", digest.FromBytes(append(data, 'Y')), digest.Zstd), wrong, 0, 16<<10, true)
	wantStatus(t, err, codes.InvalidArgument, "")
}

func TestByteStreamConcurrentWriters(t *testing.T) {
	e := newTestEnv(t, 64<<20, storage.ServiceOptions{})
	ctx := context.Background()
	shared, sharedDigest := randomBlob(t, 700<<10)
	const writers = 16
	own := make([][]byte, writers)
	for i := range own {
		own[i], _ = randomBlob(t, 100<<10+i)
	}
	errs := make(chan error, 2*writers)
	done := make(chan struct{})
	for i := 0; i < writers; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			// Every writer uploads the shared blob under its own upload id; some finish early
			// because another writer completed it first.
			resp, err := writeChunks(ctx, e.bs, digest.WriteResourceName("", sharedDigest, digest.Identity), shared, 0, 32<<10, true)
			if err != nil || resp.GetCommittedSize() != sharedDigest.Size {
				errs <- fmt.Errorf("shared blob: %v, %v", resp, err)
			}
			d := digest.FromBytes(own[i])
			resp, err = writeChunks(ctx, e.bs, digest.WriteResourceName("", d, digest.Identity), own[i], 0, 32<<10, true)
			if err != nil || resp.GetCommittedSize() != d.Size {
				errs <- fmt.Errorf("own blob %d: %v, %v", i, resp, err)
			}
		}()
	}
	for i := 0; i < writers; i++ {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, b := range append(own, shared) {
		got, _, err := readStream(ctx, e.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", digest.FromBytes(b), digest.Identity)})
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("blob read back wrong: %v", err)
		}
	}
	waitNoTempFiles(t, e.dir+"/cas")
}
