package storage_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// spoolBytes sums the sizes of the files in dir.
func spoolBytes(t *testing.T, dir string) (files int, n int64) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return len(entries), n
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// Clients drop uploads (an interrupted build): each dropped stream leaves its bytes on disk to
// be resumed, and nothing else: no goroutine, no buffer. Parked uploads are bounded in number
// and bytes (the least recently used go first), and dropped by a timer of the injected clock
// once idle, without waiting for another upload to come.
func TestDroppedUploadsAreBoundedAndFreed(t *testing.T) {
	const (
		drops     = 600
		half      = 64 << 10
		maxParked = 50
		maxBytes  = 2 << 20
	)
	e := newTestEnv(t, 256<<20, storage.ServiceOptions{
		UploadIdleTimeout: time.Minute, MaxParkedUploads: maxParked, MaxParkedUploadBytes: maxBytes,
	})
	// Uncompressed uploads into the disk store write into its temporary directory directly.
	spool := filepath.Join(e.dir, "cas", "tmp")
	ctx := context.Background()
	// Warm the connection and the server up, then take the idle level.
	warm, wd := randomBlob(t, 1000)
	if _, err := writeChunks(ctx, e.bs, digest.WriteResourceName("", wd, digest.Identity), warm, 0, 1000, true); err != nil {
		t.Fatal(err)
	}
	idleG, idleHeap := runtime.NumGoroutine(), heapInUse()

	var lastData []byte
	var lastName string
	for i := range drops {
		data, d := randomBlob(t, 2*half)
		name := digest.WriteResourceName("", d, digest.Identity)
		if i%2 == 0 {
			// The client half-closes without finish_write.
			writeChunks(ctx, e.bs, name, data[:half], 0, 32<<10, false)
		} else {
			// The client's stream is cancelled (a killed Bazel).
			cctx, cancel := context.WithCancel(ctx)
			s, err := e.bs.Write(cctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&bspb.WriteRequest{ResourceName: name, Data: data[:half]}); err != nil {
				t.Fatal(err)
			}
			waitCommitted(t, e.bs, name, half)
			cancel()
		}
		lastData, lastName = data, name
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > idleG+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > idleG+2 {
		t.Errorf("%d goroutines after %d dropped uploads, %d when idle", g, drops, idleG)
	}
	if h := heapInUse(); h > idleHeap+8<<20 {
		t.Errorf("heap in use %d KiB after %d dropped uploads, %d KiB when idle", h>>10, drops, idleHeap>>10)
	}
	files, n := spoolBytes(t, spool)
	if files > maxParked || n > maxBytes {
		t.Errorf("%d spool files of %d bytes parked, bounds %d files, %d bytes", files, n, maxParked, maxBytes)
	}
	if files == 0 {
		t.Fatal("no dropped upload kept for resumption")
	}

	// The most recent one resumes where it stopped.
	resp, err := writeChunks(ctx, e.bs, lastName, lastData[half:], half, 32<<10, true)
	if err != nil || resp.GetCommittedSize() != 2*half {
		t.Fatalf("resuming the last dropped upload: %v, %v", resp, err)
	}
	d, _ := digest.ParseWriteResourceName(lastName)
	if got := readAll(t, e.store, d.Digest, 0, 0); !bytes.Equal(got, lastData) {
		t.Fatal("resumed upload stored different content")
	}

	// Idle past the timeout: the timer drops the rest with no call coming in.
	e.clock.Advance(2 * time.Minute)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if files, _ := spoolBytes(t, spool); files == 0 {
			break
		}
		if time.Now().After(deadline) {
			files, n := spoolBytes(t, spool)
			t.Fatalf("%d spool files (%d bytes) left after the idle timeout", files, n)
		}
	}
}

// waitCommitted waits until the server has taken n bytes of the upload called name.
func waitCommitted(t *testing.T, bs bspb.ByteStreamClient, name string, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, err := bs.QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil {
			t.Fatal(err)
		}
		if q.GetCommittedSize() == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed size of %s stuck at %d", name, q.GetCommittedSize())
		}
		time.Sleep(time.Millisecond)
	}
}
