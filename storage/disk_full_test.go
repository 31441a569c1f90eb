package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// smallFilesystem mounts a tmpfs of size bytes for the test (root only) and unmounts it at the
// end.
func smallFilesystem(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system needs root")
	}
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// A store on a file system smaller than its size bound (the default 10G on a small disk) makes
// room by evicting when the file system is short of space; a blob that cannot fit even then is
// RESOURCE_EXHAUSTED, not UNAVAILABLE (which clients retry as a passing fault), and the store
// goes on storing what fits.
func TestFullFilesystemEvictsAndAnswersResourceExhausted(t *testing.T) {
	dir := smallFilesystem(t, "4m")
	s, err := storage.NewDiskBlobStore(dir, 10<<30, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var last []byte
	var lastD digest.Digest
	for range 16 { // 8 MiB through a 4 MiB file system
		last, lastD = randomBlob(t, 512<<10)
		if err := s.Put(context.Background(), lastD, bytes.NewReader(last)); err != nil {
			t.Fatalf("Put on a full file system: %v (want eviction to make room)", err)
		}
	}
	if blobs, n := s.Usage(); n > 4<<20 || blobs == 0 {
		t.Fatalf("store holds %d blobs, %d bytes on a 4 MiB file system", blobs, n)
	}
	if got := readAll(t, s, lastD, 0, 0); !bytes.Equal(got, last) {
		t.Fatal("the newest blob does not read back")
	}

	// A blob larger than the whole file system is refused at once, and nothing is evicted for
	// it: a client declaring a huge size cannot flush the cache.
	blobsBefore, bytesBefore := s.Usage()
	huge, hd := randomBlob(t, 6<<20)
	err = s.Put(context.Background(), hd, bytes.NewReader(huge))
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted ||
		!strings.HasPrefix(st.Message(), fmt.Sprintf("Failed to store blob %s: its %d bytes do not fit on the server's disk (", hd, hd.Size)) {
		t.Fatalf("Put of a blob larger than the file system: %v, want RESOURCE_EXHAUSTED saying it does not fit", err)
	}
	if blobs, n := s.Usage(); blobs != blobsBefore || n != bytesBefore {
		t.Fatalf("refusing a blob that cannot fit evicted blobs: %d blobs, %d bytes before; %d, %d after", blobsBefore, bytesBefore, blobs, n)
	}
	if got := readAll(t, s, lastD, 0, 0); !bytes.Equal(got, last) {
		t.Fatal("the newest blob was evicted for a blob that cannot fit")
	}

	again, ad := randomBlob(t, 512<<10)
	if err := s.Put(context.Background(), ad, bytes.NewReader(again)); err != nil {
		t.Fatalf("Put after a full disk: %v", err)
	}
	if got := readAll(t, s, ad, 0, 0); !bytes.Equal(got, again) {
		t.Fatal("blob stored after a full disk does not read back")
	}
}

// The file system's free space is checked before each write, whatever the size bound: here it
// is reported (as statfs would) to be 1 MiB minus what the store holds.
func TestShortFilesystemEvictsBelowSizeBound(t *testing.T) {
	var s *storage.DiskBlobStore
	free := func(string) (int64, error) {
		_, n := s.Usage()
		return 1<<20 - n, nil
	}
	s, err := storage.NewDiskBlobStore(t.TempDir(), 1<<30, zerolog.Nop(), nil, storage.WithFreeSpace(free))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ds []digest.Digest
	for range 8 {
		b, _ := randomBlob(t, 256<<10)
		ds = append(ds, mustPut(t, s, b))
	}
	if _, n := s.Usage(); n > 1<<20 {
		t.Fatalf("store holds %d bytes with 1 MiB of disk", n)
	}
	m := missing(t, s, ds...)
	if !m[ds[0]] || m[ds[7]] {
		t.Fatalf("want the oldest evicted and the newest kept, missing = %v", m)
	}
}
