package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os/exec"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildfleet/buildfleet/internal/digest"
)

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestSchedulerGracefulShutdownAndRestart starts the scheduler process, begins a ByteStream
// upload, sends SIGTERM in the middle of it, finishes the upload (in-flight RPCs complete), and
// expects exit status 0. A scheduler restarted on the same storage serves the blob.
func TestSchedulerGracefulShutdownAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	dir := t.TempDir()
	s := startScheduler(t, dir)
	conn := dial(t, s.addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	blob := make([]byte, 3<<20)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(blob)
	w, err := bspb.NewByteStreamClient(conn).Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	name := digest.WriteResourceName("restart", d, digest.Identity)
	if err := w.Send(&bspb.WriteRequest{ResourceName: name, Data: blob[:1<<20]}); err != nil {
		t.Fatal(err)
	}
	// The first chunk is on its way; now ask the scheduler to stop.
	if err := s.cmd.Process.Signal(sigterm); err != nil {
		t.Fatal(err)
	}
	// Wait until the scheduler is shutting down while the stream is still open.
	for deadline := time.Now().Add(10 * time.Second); !s.logContains("shutting down"); {
		if time.Now().After(deadline) {
			t.Fatal("scheduler did not start shutting down after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := w.Send(&bspb.WriteRequest{WriteOffset: 1 << 20, Data: blob[1<<20:], FinishWrite: true}); err != nil {
		t.Fatalf("second chunk after SIGTERM: %v", err)
	}
	resp, err := w.CloseAndRecv()
	if err != nil {
		t.Fatalf("upload in flight at SIGTERM failed: %v", err)
	}
	if resp.CommittedSize != d.Size {
		t.Fatalf("committed %d of %d bytes", resp.CommittedSize, d.Size)
	}
	select {
	case err := <-s.done:
		s.done <- err
		var exit *exec.ExitError
		if errors.As(err, &exit) || err != nil {
			t.Fatalf("scheduler exited with %v after SIGTERM, want status 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("scheduler still running 20 s after SIGTERM")
	}

	started := time.Now()
	s2 := startScheduler(t, dir)
	t.Logf("restarted scheduler healthy after %v", time.Since(started))
	conn2 := dial(t, s2.addr)
	got, err := repb.NewContentAddressableStorageClient(conn2).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		InstanceName: "other", BlobDigests: []*repb.Digest{d.Proto()},
	})
	if err != nil || len(got.MissingBlobDigests) != 0 {
		t.Fatalf("after restart FindMissingBlobs = %v, %v; want the blob present", got, err)
	}
	r, err := bspb.NewByteStreamClient(conn2).Read(ctx, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", d, digest.Identity)})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for {
		chunk, err := r.Recv()
		if err != nil {
			break
		}
		buf.Write(chunk.Data)
	}
	if !bytes.Equal(buf.Bytes(), blob) {
		t.Fatalf("read back %d bytes, not the blob written before the restart", buf.Len())
	}
}
