package storage_test

import (
	"context"
	"net"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/storage"
)

// testEnv is a scheduler-like gRPC server with the storage services on a disk store, and
// clients connected to it in-process.
type testEnv struct {
	dir   string
	store *storage.DiskBlobStore
	ac    *storage.DiskActionCache
	clock *clock.Fake
	cas   repb.ContentAddressableStorageClient
	bs    bspb.ByteStreamClient
	acc   repb.ActionCacheClient
	caps  repb.CapabilitiesClient
	// dial opens another client connection to the server, with gRPC's defaults (a 4 MiB
	// receive limit) unless opts say otherwise.
	dial func(opts ...grpc.DialOption) *grpc.ClientConn
}

func newTestEnv(t testing.TB, maxSize int64, opts storage.ServiceOptions) *testEnv {
	t.Helper()
	e := &testEnv{dir: t.TempDir(), clock: clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))}
	var err error
	e.store, err = storage.NewDiskBlobStore(e.dir+"/cas", maxSize, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	e.ac, err = storage.NewDiskActionCache(e.dir+"/ac", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if opts.Clock == nil {
		opts.Clock = e.clock
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(append(storage.ReceiveBufferOptions(), grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes))...)
	storage.RegisterServices(srv, e.store, storage.NewCompletenessCheckingActionCache(e.ac, e.store), opts)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	e.dial = func(opts ...grpc.DialOption) *grpc.ClientConn {
		opts = append([]grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		}, opts...)
		conn, err := grpc.NewClient("passthrough:///bufconn", opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	conn := e.dial(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxCallSendMsgSize(storage.RecommendedMaxMessageSizeBytes)))
	e.cas = repb.NewContentAddressableStorageClient(conn)
	e.bs = bspb.NewByteStreamClient(conn)
	e.acc = repb.NewActionCacheClient(conn)
	e.caps = repb.NewCapabilitiesClient(conn)
	return e
}

// wantStatus fails unless err has code and, when msg is not empty, exactly message msg.
func wantStatus(t testing.TB, err error, code codes.Code, msg string) {
	t.Helper()
	s := status.Convert(err)
	if s.Code() != code || (msg != "" && s.Message() != msg) {
		if msg == "" {
			t.Fatalf("got %v, want code %s", err, code)
		}
		t.Fatalf("got %v, want %s %q", err, code, msg)
	}
}

func TestGetCapabilities(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{ExecutionEnabled: true})
	caps, err := e.caps.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{InstanceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if v := caps.GetLowApiVersion(); v.GetMajor() != 2 || v.GetMinor() != 0 {
		t.Errorf("low_api_version = %v, want 2.0", v)
	}
	if v := caps.GetDeprecatedApiVersion(); v.GetMajor() != 2 || v.GetMinor() != 0 {
		t.Errorf("deprecated_api_version = %v, want 2.0", v)
	}
	if v := caps.GetHighApiVersion(); v.GetMajor() != 2 || v.GetMinor() < 3 {
		t.Errorf("high_api_version = %v, want at least 2.3", v)
	}
	cc := caps.GetCacheCapabilities()
	if len(cc.GetDigestFunctions()) != 1 || cc.GetDigestFunctions()[0] != repb.DigestFunction_SHA256 {
		t.Errorf("digest_functions = %v", cc.GetDigestFunctions())
	}
	if !cc.GetActionCacheUpdateCapabilities().GetUpdateEnabled() {
		t.Error("action cache update not enabled")
	}
	if cc.GetMaxBatchTotalSizeBytes() != storage.DefaultMaxBatchTotalSizeBytes {
		t.Errorf("max_batch_total_size_bytes = %d", cc.GetMaxBatchTotalSizeBytes())
	}
	if cc.GetSymlinkAbsolutePathStrategy() != repb.SymlinkAbsolutePathStrategy_DISALLOWED {
		t.Errorf("symlink strategy = %v", cc.GetSymlinkAbsolutePathStrategy())
	}
	if len(cc.GetSupportedCompressors()) != 1 || cc.GetSupportedCompressors()[0] != repb.Compressor_ZSTD ||
		len(cc.GetSupportedBatchUpdateCompressors()) != 1 || cc.GetSupportedBatchUpdateCompressors()[0] != repb.Compressor_ZSTD {
		t.Errorf("compressors = %v, %v", cc.GetSupportedCompressors(), cc.GetSupportedBatchUpdateCompressors())
	}
	ec := caps.GetExecutionCapabilities()
	if !ec.GetExecEnabled() || ec.GetDigestFunction() != repb.DigestFunction_SHA256 {
		t.Errorf("execution capabilities = %v", ec)
	}

	e2 := newTestEnv(t, 1<<20, storage.ServiceOptions{MaxBatchTotalSizeBytes: 1000})
	caps, err = e2.caps.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if caps.GetExecutionCapabilities().GetExecEnabled() || caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes() != 1000 {
		t.Errorf("options not reflected: %v", caps)
	}
	_, err = e2.caps.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{InstanceName: "a/../b"})
	wantStatus(t, err, codes.InvalidArgument, "")
}

func TestGetCapabilitiesTellsWhoMayUpdateTheActionCache(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{
		ActionCacheWritable: func(_ context.Context, instance string) bool { return instance == "ci" },
	})
	for instance, want := range map[string]bool{"ci": true, "laptops": false} {
		caps, err := e.caps.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{InstanceName: instance})
		if err != nil {
			t.Fatal(err)
		}
		if got := caps.GetCacheCapabilities().GetActionCacheUpdateCapabilities().GetUpdateEnabled(); got != want {
			t.Errorf("instance %q: update_enabled = %v, want %v", instance, got, want)
		}
	}
}
