package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// TestSecuritySchedulerLimits checks --max-blob-size and --max-concurrent-streams on the
// scheduler binary.
func TestSecuritySchedulerLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	s := startScheduler(t, "", "--max-blob-size=1K", "--max-concurrent-streams=2")
	conn := dial(t, s.addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	caps, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil || caps.GetCacheCapabilities().GetMaxCasBlobSizeBytes() != 1024 {
		t.Fatalf("max_cas_blob_size_bytes = %d, %v", caps.GetCacheCapabilities().GetMaxCasBlobSizeBytes(), err)
	}

	big := []byte(strings.Repeat("x", 1025))
	d := digest.FromBytes(big)
	w, err := bspb.NewByteStreamClient(conn).Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Send(&bspb.WriteRequest{ResourceName: digest.WriteResourceName("limits", d, digest.Identity), Data: big, FinishWrite: true})
	_, err = w.CloseAndRecv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "more than the largest blob this server accepts (1024 bytes, --max-blob-size)") {
		t.Errorf("ByteStream.Write of 1025 bytes: %v", err)
	}

	// Two open streams use the connection's quota: a third call waits until one ends.
	var cancels []context.CancelFunc
	for i := 0; i < 2; i++ {
		sctx, scancel := context.WithCancel(ctx)
		cancels = append(cancels, scancel)
		if _, err := bspb.NewByteStreamClient(conn).Write(sctx); err != nil {
			t.Fatal(err)
		}
	}
	short, shortCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = repb.NewCapabilitiesClient(conn).GetCapabilities(short, &repb.GetCapabilitiesRequest{})
	shortCancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("third concurrent call: %v, want it to wait (DEADLINE_EXCEEDED)", err)
	}
	cancels[0]()
	if _, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Errorf("call after a stream ended: %v", err)
	}
	cancels[1]()
}
