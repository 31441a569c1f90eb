package storage_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/testproc"
)

// BenchmarkSchedulerRSS measures the resident set size of a real scheduler process (cmd/scheduler,
// built for the run) around 1 GiB of CAS traffic: idle after start-up, at its peak while four
// 256 MiB blobs are uploaded through ByteStream.Write in 64 KiB chunks and read back through
// ByteStream.Read, and a few seconds after the traffic ends. The baseline is the same process's
// idle RSS; retained-MiB (after minus idle) is what the traffic left behind, the figure that must
// stay within 32 MiB.
func BenchmarkSchedulerRSS(b *testing.B) {
	const blobs, blobSize = 4, 256 << 20
	bin := filepath.Join(b.TempDir(), "scheduler")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/buildfleet/buildfleet/cmd/scheduler").CombinedOutput(); err != nil {
		b.Fatalf("cannot build cmd/scheduler: %v\n%s", err, out)
	}
	addr := testproc.FreeAddr(b)
	dir := b.TempDir()
	cmd := exec.Command(bin, "--listen="+addr, "--metrics-listen=", "--storage-dir="+dir, "--max-storage-size=8G", "--log-level=warn")
	var stderr testproc.Output
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		testproc.Stop(cmd, done)
		if b.Failed() {
			b.Logf("scheduler stderr:\n%s", stderr.String())
		}
	})
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("scheduler not serving: %v", err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	idle := testproc.RSS(cmd.Process.Pid)

	bs := bspb.NewByteStreamClient(conn)
	data := make([]byte, blobSize)
	rand.Read(data)
	stop := make(chan struct{})
	peakc := make(chan int64, 1)
	go func() {
		var p int64
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				peakc <- p
				return
			case <-t.C:
				p = max(p, testproc.RSS(cmd.Process.Pid))
			}
		}
	}()
	b.SetBytes(2 * blobs * blobSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ds := make([]digest.Digest, blobs)
		for j := range ds {
			binary.LittleEndian.PutUint64(data, uint64(i*blobs+j))
			ds[j] = digest.FromBytes(data)
			b.StartTimer()
			resp, err := writeChunks(ctx, bs, digest.WriteResourceName("", ds[j], digest.Identity), data, 0, 64<<10, true)
			if err != nil || resp.GetCommittedSize() != ds[j].Size {
				b.Fatalf("upload: %v, %v", resp, err)
			}
			b.StopTimer()
		}
		b.StartTimer()
		for _, d := range ds {
			readCounting(b, bs, digest.ReadResourceName("", d, digest.Identity), d.Size)
		}
	}
	b.StopTimer()
	close(stop)
	peak := <-peakc
	time.Sleep(5 * time.Second) // What stays resident once the traffic has ended.
	after := testproc.RSS(cmd.Process.Pid)
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.ReportMetric(mib(idle), "idle-RSS-MiB")
	b.ReportMetric(mib(peak), "peak-RSS-MiB")
	b.ReportMetric(mib(after), "after-RSS-MiB")
	b.ReportMetric(mib(after-idle), "retained-MiB")
	b.ReportMetric(float64(after)/float64(idle), "after-x-idle")
}
