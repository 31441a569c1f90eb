package storage_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// downStore is a BlobStore and ActionCache whose backing store is unreachable: every call
// fails with UNAVAILABLE, as the object store's do during an outage.
type downStore struct{}

func (downStore) unavailable() error {
	return status.Error(codes.Unavailable, "the object store did not answer in time")
}
func (s downStore) Get(context.Context, digest.Digest, int64, int64) (io.ReadCloser, error) {
	return nil, s.unavailable()
}
func (s downStore) Put(context.Context, digest.Digest, io.Reader) error { return s.unavailable() }
func (s downStore) FindMissing(context.Context, []digest.Digest) ([]digest.Digest, error) {
	return nil, s.unavailable()
}

type downActionCache struct{ downStore }

func (a downActionCache) Get(context.Context, string, digest.Digest) (*repb.ActionResult, error) {
	return nil, a.unavailable()
}
func (a downActionCache) Put(context.Context, string, digest.Digest, *repb.ActionResult) error {
	return a.unavailable()
}

// TestUnavailableCallsAreLoggedRateLimited tells an outage of the object store from the
// scheduler's side: FindMissingBlobs and GetActionResult fail with UNAVAILABLE, the first
// failure of each is logged as a warning at once, the ones within the next 10 s are held back,
// and the next warning after that says how many were.
func TestUnavailableCallsAreLoggedRateLimited(t *testing.T) {
	var logs bytes.Buffer
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	storage.RegisterServices(srv, downStore{}, downActionCache{}, storage.ServiceOptions{Logger: zerolog.New(&logs), Clock: clk})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cas, ac := repb.NewContentAddressableStorageClient(conn), repb.NewActionCacheClient(conn)
	ctx := context.Background()
	d := digest.FromBytes([]byte("blob"))
	call := func() {
		t.Helper()
		_, err := cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d.Proto()}})
		wantStatus(t, err, codes.Unavailable, "Failed to find missing blobs: the object store did not answer in time")
		_, err = ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: d.Proto()})
		wantStatus(t, err, codes.Unavailable, "")
	}
	lines := func() []string {
		return strings.Split(strings.TrimSpace(logs.String()), "\n")
	}

	call()
	if got := lines(); len(got) != 2 || !strings.Contains(got[0], `"level":"warn"`) || !strings.Contains(got[0], "FindMissingBlobs failed") || !strings.Contains(got[1], "GetActionResult failed") {
		t.Fatalf("first failures logged as:\n%s\nwant one warning each for FindMissingBlobs and GetActionResult", logs.String())
	}
	for i := 0; i < 5; i++ {
		clk.Advance(time.Second)
		call()
	}
	if got := lines(); len(got) != 2 {
		t.Fatalf("failures within 10 s of the first logged again:\n%s", logs.String())
	}
	clk.Advance(5 * time.Second)
	call()
	got := lines()
	if len(got) != 4 || !strings.Contains(got[2], "FindMissingBlobs failed") || !strings.Contains(got[2], `"suppressed":5`) || !strings.Contains(got[3], `"suppressed":5`) {
		t.Fatalf("after 10 s, logged:\n%s\nwant one more warning each, saying 5 were held back", logs.String())
	}
}
