package storage_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/buildfleet/buildfleet/storage"
)

// bareChunkSize is the size of the chunks the bare server sends on reads: 64 KiB, what Bazel,
// Pants and most ByteStream servers use.
const bareChunkSize = 64 << 10

// bareByteStream is the ByteStream baseline of the benchmarks: the least a server can do with
// none of buildfleet's code. Read sends the file at readPath in bareChunkSize messages, reusing
// one buffer; Write receives the stream's chunks into a new file in writeDir while hashing them,
// checks the SHA-256 named by the resource name's "…/{hash}/{size}" ending, closes the file and
// renames it to its hash (no fsync, no resumption, no store index).
type bareByteStream struct {
	bspb.UnimplementedByteStreamServer
	readPath string
	writeDir string
}

// Read implements bspb.ByteStreamServer.
func (s *bareByteStream) Read(req *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) error {
	f, err := os.Open(s.readPath)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, bareChunkSize)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if err := stream.Send(&bspb.ReadResponse{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// Write implements bspb.ByteStreamServer.
func (s *bareByteStream) Write(stream bspb.ByteStream_WriteServer) error {
	f, err := os.CreateTemp(s.writeDir, "blob-*")
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	var name string
	var n int64
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		if name == "" {
			name = req.GetResourceName()
		}
		h.Write(req.GetData())
		if _, err := f.Write(req.GetData()); err != nil {
			return err
		}
		n += int64(len(req.GetData()))
		if req.GetFinishWrite() {
			break
		}
	}
	parts := strings.Split(name, "/")
	want := parts[len(parts)-2]
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		os.Remove(f.Name())
		return status.Errorf(codes.InvalidArgument, "hash %s, want %s", got, want)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(s.writeDir, want)); err != nil {
		return err
	}
	return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: n})
}

// serveBare serves s on a bufconn gRPC server with the same options and client as newTestEnv's
// and returns a client of it.
func serveBare(t testing.TB, s *bareByteStream) bspb.ByteStreamClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes))
	bspb.RegisterByteStreamServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxCallSendMsgSize(storage.RecommendedMaxMessageSizeBytes)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return bspb.NewByteStreamClient(conn)
}

// bareCAS answers FindMissingBlobs from a Go map keyed by the hash string, with no validation
// and no store: a reference for what gRPC adds to the FindMissingBlobs baseline.
type bareCAS struct {
	repb.UnimplementedContentAddressableStorageServer
	present map[string]int64
}

// FindMissingBlobs implements repb.ContentAddressableStorageServer.
func (s *bareCAS) FindMissingBlobs(_ context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	resp := &repb.FindMissingBlobsResponse{}
	for _, pd := range req.GetBlobDigests() {
		if size, ok := s.present[pd.GetHash()]; !ok || size != pd.GetSizeBytes() {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, pd)
		}
	}
	return resp, nil
}

// serveBareCAS serves s on a bufconn gRPC server as serveBare does and returns a client of it.
func serveBareCAS(t testing.TB, s *bareCAS) repb.ContentAddressableStorageClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes))
	repb.RegisterContentAddressableStorageServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxCallSendMsgSize(storage.RecommendedMaxMessageSizeBytes)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return repb.NewContentAddressableStorageClient(conn)
}
