package storage_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// blobFile is the path of blob d's file in the store at dir (DIR/cas/HASH[:2]/HASH).
func blobFile(dir string, d digest.Digest) string {
	return filepath.Join(dir, "cas", d.Hash[:2], d.Hash)
}

// After a crash (no clean-shutdown marker), blob files whose bytes did not all reach the disk
// (one with a flipped byte, one cut short) are detected, removed and reported missing, never
// served; intact blobs are served as before, and a corrupt blob can be uploaded again.
func TestDiskBlobStoreCrashNeverServesCorruptBlobs(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	good, gd := randomBlob(t, 300<<10)
	flipped, fd := randomBlob(t, 200<<10)
	short, sd := randomBlob(t, 100<<10)
	for _, b := range [][]byte{good, flipped, short} {
		mustPut(t, s, b)
	}
	s.Crash()
	if _, err := os.Stat(filepath.Join(dir, "CLEAN")); !os.IsNotExist(err) {
		t.Fatalf("clean-shutdown marker after a crash: %v", err)
	}
	// What a machine crash can leave of files written without fsync.
	bad := append([]byte(nil), flipped...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(blobFile(dir, fd), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blobFile(dir, sd), int64(len(short)/2)); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir, 1<<30)
	defer s.Close()
	ctx := context.Background()
	missing, err := s.FindMissing(ctx, []digest.Digest{fd, gd, sd})
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 2 || missing[0] != fd || missing[1] != sd {
		t.Fatalf("FindMissing after the crash = %v, want [%s %s]", missing, fd, sd)
	}
	for _, d := range []digest.Digest{fd, sd} {
		if _, err := s.Get(ctx, d, 0, 0); status.Code(err) != codes.NotFound {
			t.Errorf("Get(%s) of a corrupt blob = %v, want NOT_FOUND", d, err)
		}
		if _, err := s.Path(d); status.Code(err) != codes.NotFound {
			t.Errorf("Path(%s) of a corrupt blob = %v, want NOT_FOUND", d, err)
		}
		if _, err := os.Stat(blobFile(dir, d)); !os.IsNotExist(err) {
			t.Errorf("corrupt blob %s still on disk: %v", d, err)
		}
	}
	if got := readAll(t, s, gd, 0, 0); !bytes.Equal(got, good) {
		t.Fatal("intact blob served with different content")
	}
	if n, size := s.Usage(); n != 1 || size != gd.Size {
		t.Errorf("usage after the crash = %d blobs, %d bytes, want the intact one", n, size)
	}
	// The client uploads it again.
	mustPut(t, s, flipped)
	if got := readAll(t, s, fd, 0, 0); !bytes.Equal(got, flipped) {
		t.Fatal("re-uploaded blob served with different content")
	}
}

// Every way of asking for a blob verifies it first after a crash: a read of a corrupt blob that
// FindMissing never saw is NOT_FOUND too, and Put replaces a corrupt file rather than trusting
// it.
func TestDiskBlobStoreCrashVerifiesOnFirstUse(t *testing.T) {
	for _, use := range []string{"get", "put"} {
		t.Run(use, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, 1<<30)
			data, d := randomBlob(t, 64<<10)
			mustPut(t, s, data)
			s.Crash()
			bad := append([]byte(nil), data...)
			bad[0] ^= 1
			if err := os.WriteFile(blobFile(dir, d), bad, 0o644); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, 1<<30)
			defer s.Close()
			switch use {
			case "get":
				if _, err := s.Get(context.Background(), d, 0, 0); status.Code(err) != codes.NotFound {
					t.Fatalf("Get of a corrupt blob = %v, want NOT_FOUND", err)
				}
			case "put":
				mustPut(t, s, data)
				if got := readAll(t, s, d, 0, 0); !bytes.Equal(got, data) {
					t.Fatal("Put over a corrupt blob kept the corrupt bytes")
				}
			}
		})
	}
}

// A clean Close leaves the marker that lets the next start trust the blobs; the next start
// removes it, so that a crash after it is detected; and the background verification after a
// crash leaves the store trusted again at the next clean Close.
func TestDiskBlobStoreCleanShutdownMarker(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "CLEAN")
	s := openStore(t, dir, 1<<30, storage.WithFsync(true))
	data, d := randomBlob(t, 10<<10)
	mustPut(t, s, data)
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("marker while the store is open: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("no marker after a clean Close: %v", err)
	}
	s = openStore(t, dir, 1<<30)
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("marker kept by the next start: %v", err)
	}
	if got := readAll(t, s, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("blob lost across a clean restart")
	}
	s.Crash()
	s = openStore(t, dir, 1<<30)
	if got := readAll(t, s, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("intact blob lost across a crash")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("no marker after a clean Close following a crash: %v", err)
	}
}
