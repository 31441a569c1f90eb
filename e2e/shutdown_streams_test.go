package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// sigtermAndWait sends SIGTERM to the scheduler and waits until it logs that it is shutting down.
func sigtermAndWait(t *testing.T, s *scheduler) {
	t.Helper()
	if err := s.cmd.Process.Signal(sigterm); err != nil {
		t.Fatal(err)
	}
	waitLog(t, s.process, "shutting down", 10*time.Second)
}

// waitExit waits for the scheduler to exit with status 0.
func waitExit(t *testing.T, s *scheduler) {
	t.Helper()
	start := time.Now()
	defer func() {
		t.Logf("scheduler exited %v after the streams ended", time.Since(start).Round(time.Millisecond))
	}()
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("scheduler exited with %v after SIGTERM, want status 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("scheduler still running 20 s after SIGTERM")
	}
}

// TestSIGTERMLetsUploadsFinishWithTheirWriteResponse: ByteStream Writes in flight when the
// scheduler process gets SIGTERM send their last chunk after it, within --shutdown-grace; each
// client gets its WriteResponse with the full committed size (the last call to finish used to
// lose it to a connection closed as soon as no handler ran: UNAVAILABLE "EOF, received prior
// goaway").
func TestSIGTERMLetsUploadsFinishWithTheirWriteResponse(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	s := startScheduler(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const uploads = 8
	type upload struct {
		blob []byte
		d    digest.Digest
		w    bspb.ByteStream_WriteClient
	}
	var ups []upload
	for i := 0; i < uploads; i++ {
		blob := make([]byte, 2<<20)
		if _, err := rand.Read(blob); err != nil {
			t.Fatal(err)
		}
		// One connection each, as separate clients: each has its own connection to close.
		w, err := bspb.NewByteStreamClient(dial(t, s.addr)).Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d := digest.FromBytes(blob)
		if err := w.Send(&bspb.WriteRequest{ResourceName: digest.WriteResourceName("", d, digest.Identity), Data: blob[:1<<20]}); err != nil {
			t.Fatal(err)
		}
		ups = append(ups, upload{blob, d, w})
	}
	sigtermAndWait(t, s)
	errs := make([]error, uploads)
	var wg sync.WaitGroup
	for i, u := range ups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := u.w.Send(&bspb.WriteRequest{WriteOffset: 1 << 20, Data: u.blob[1<<20:], FinishWrite: true}); err != nil {
				errs[i] = fmt.Errorf("last chunk: %w", err)
				return
			}
			resp, err := u.w.CloseAndRecv()
			if err == nil && resp.GetCommittedSize() != u.d.Size {
				err = fmt.Errorf("committed_size %d, want %d", resp.GetCommittedSize(), u.d.Size)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("upload %d finishing after SIGTERM: %v", i, err)
		}
	}
	waitExit(t, s)
}

// TestSIGTERMLetsReadsFinishWithEveryByte: a ByteStream Read in progress when the scheduler
// gets SIGTERM receives every byte of the blob (the tail still queued in the server's transport
// when the handler returned used to be cut off: UNAVAILABLE "unexpected EOF"). The client keeps
// gRPC's fixed 64 KiB windows so the server cannot run ahead of it, and pauses before the last
// MiB so that a server closing connections as soon as its handlers return would do so.
func TestSIGTERMLetsReadsFinishWithEveryByte(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	s := startScheduler(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	blob := make([]byte, 8<<20)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(blob)
	w, err := bspb.NewByteStreamClient(dial(t, s.addr)).Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(blob); off += 1 << 20 {
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: blob[off : off+1<<20], FinishWrite: off+1<<20 == len(blob)}
		if off == 0 {
			req.ResourceName = digest.WriteResourceName("", d, digest.Identity)
		}
		if err := w.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := bspb.NewByteStreamClient(conn).Read(ctx, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", d, digest.Identity)})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	first, err := r.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got.Write(first.GetData())
	sigtermAndWait(t, s)
	paused := false
	for {
		if !paused && got.Len() >= len(blob)-1<<20 {
			paused = true
			time.Sleep(500 * time.Millisecond) // a slow client; see above
		}
		resp, err := r.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("Read after SIGTERM failed after %d of %d bytes: %v", got.Len(), len(blob), err)
			}
			break
		}
		got.Write(resp.GetData())
	}
	if !bytes.Equal(got.Bytes(), blob) {
		t.Fatalf("read %d bytes after SIGTERM, not the %d-byte blob", got.Len(), len(blob))
	}
	waitExit(t, s)
}
