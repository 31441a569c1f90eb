package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

func openStore(t testing.TB, dir string, maxSize int64, opts ...storage.DiskBlobStoreOption) *storage.DiskBlobStore {
	t.Helper()
	s, err := storage.NewDiskBlobStore(dir, maxSize, zerolog.Nop(), nil, opts...)
	if err != nil {
		t.Fatalf("NewDiskBlobStore: %v", err)
	}
	return s
}

func randomBlob(t testing.TB, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, digest.FromBytes(b)
}

func mustPut(t testing.TB, s storage.BlobStore, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := s.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
		t.Fatalf("Put(%s): %v", d, err)
	}
	return d
}

func readAll(t testing.TB, s storage.BlobStore, d digest.Digest, offset, limit int64) []byte {
	t.Helper()
	r, err := s.Get(context.Background(), d, offset, limit)
	if err != nil {
		t.Fatalf("Get(%s, %d, %d): %v", d, offset, limit, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantCode(t testing.TB, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %s", what, err, code)
	}
}

// tmpFiles lists the files in the store's temporary directory.
func tmpFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func missing(t testing.TB, s storage.BlobStore, ds ...digest.Digest) map[digest.Digest]bool {
	t.Helper()
	m, err := s.FindMissing(context.Background(), ds)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[digest.Digest]bool)
	for _, d := range m {
		out[d] = true
	}
	return out
}

func TestDiskBlobStorePutGet(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 1<<20)
	defer s.Close()
	ctx := context.Background()
	data := []byte("hello, buildfleet")
	d := mustPut(t, s, data)

	if got := readAll(t, s, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatalf("Get whole = %q, want %q", got, data)
	}
	if got := readAll(t, s, d, 7, 0); string(got) != "buildfleet" {
		t.Fatalf("Get offset 7 = %q", got)
	}
	if got := readAll(t, s, d, 7, 5); string(got) != "build" {
		t.Fatalf("Get offset 7 limit 5 = %q", got)
	}
	if got := readAll(t, s, d, 0, 1000); !bytes.Equal(got, data) {
		t.Fatalf("Get with large limit = %q", got)
	}
	if got := readAll(t, s, d, d.Size, 0); len(got) != 0 {
		t.Fatalf("Get at end = %q, want nothing", got)
	}
	// The whole-blob read hands out the file itself.
	r, err := s.Get(ctx, d, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.(*os.File); !ok {
		t.Errorf("Get returned %T, want *os.File for streaming", r)
	}
	r.Close()
	if p, err := s.Path(d); err != nil {
		t.Fatal(err)
	} else if p != filepath.Join(dir, "cas", d.Hash[:2], d.Hash) {
		t.Errorf("Path = %s, want sharded by hash prefix", p)
	}

	_, err = s.Get(ctx, d, d.Size+1, 0)
	wantCode(t, err, codes.OutOfRange, "offset beyond end")
	_, err = s.Get(ctx, d, -1, 0)
	wantCode(t, err, codes.OutOfRange, "negative offset")
	_, err = s.Get(ctx, d, 0, -1)
	wantCode(t, err, codes.InvalidArgument, "negative limit")
	_, absent := randomBlob(t, 10)
	_, err = s.Get(ctx, absent, 0, 0)
	wantCode(t, err, codes.NotFound, "absent blob")
	// Right hash, wrong size: not the same blob.
	_, err = s.Get(ctx, digest.Digest{Hash: d.Hash, Size: d.Size - 1}, 0, 0)
	wantCode(t, err, codes.NotFound, "wrong size")

	if m := missing(t, s, d, absent, digest.Empty); len(m) != 1 || !m[absent] {
		t.Fatalf("FindMissing = %v, want only %s", m, absent)
	}
}

func TestDiskBlobStoreEmptyBlobAlwaysExists(t *testing.T) {
	s := openStore(t, t.TempDir(), 10)
	defer s.Close()
	if got := readAll(t, s, digest.Empty, 0, 0); len(got) != 0 {
		t.Fatalf("empty blob = %q", got)
	}
	if m := missing(t, s, digest.Empty); len(m) != 0 {
		t.Fatalf("empty blob reported missing")
	}
	if err := s.Put(context.Background(), digest.Empty, bytes.NewReader(nil)); err != nil {
		t.Fatalf("Put(empty): %v", err)
	}
	err := s.Put(context.Background(), digest.Empty, bytes.NewReader([]byte("x")))
	wantCode(t, err, codes.InvalidArgument, "non-empty content for the empty digest")
	p, err := s.Path(digest.Empty)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 0 {
		t.Fatalf("empty blob file: %v, %v", fi, err)
	}
}

func TestDiskBlobStoreRejectsMismatchedContent(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 1<<20)
	defer s.Close()
	ctx := context.Background()
	data, d := randomBlob(t, 1000)
	other, od := randomBlob(t, 1000)

	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"other content", other, fmt.Sprintf("Failed to store blob %s: content has digest %s", d, od)},
		{"too short", data[:999], fmt.Sprintf("Failed to store blob %s: content has digest %s", d, digest.FromBytes(data[:999]))},
		{"too long", append(append([]byte{}, data...), 'x'), fmt.Sprintf("Failed to store blob %s: content is longer than 1000 bytes", d)},
	} {
		err := s.Put(ctx, d, bytes.NewReader(tc.body))
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != tc.want {
			t.Errorf("%s: got %v, want INVALID_ARGUMENT %q", tc.name, err, tc.want)
		}
	}
	if m := missing(t, s, d, od); len(m) != 2 {
		t.Fatalf("rejected blobs were stored: missing = %v", m)
	}
	if n, _ := s.Usage(); n != 0 {
		t.Fatalf("Usage = %d blobs after rejected writes", n)
	}
	if f := tmpFiles(t, dir); len(f) != 0 {
		t.Fatalf("temporary files left: %v", f)
	}
}

func TestDiskBlobStoreTooLarge(t *testing.T) {
	s := openStore(t, t.TempDir(), 100)
	defer s.Close()
	data, d := randomBlob(t, 101)
	err := s.Put(context.Background(), d, bytes.NewReader(data))
	wantCode(t, err, codes.ResourceExhausted, "blob larger than the store")
}

// failingReader returns some data and then an error, like a client that disconnects.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestDiskBlobStoreInterruptedWriteStoresNothing(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 1<<20)
	defer s.Close()
	data, d := randomBlob(t, 5000)
	err := s.Put(context.Background(), d, &failingReader{data: data[:100], err: status.Error(codes.Unavailable, "client went away")})
	wantCode(t, err, codes.Unavailable, "interrupted write")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = s.Put(ctx, d, bytes.NewReader(data))
	wantCode(t, err, codes.Canceled, "cancelled write")
	if m := missing(t, s, d); !m[d] {
		t.Fatal("interrupted write left a blob")
	}
	if f := tmpFiles(t, dir); len(f) != 0 {
		t.Fatalf("temporary files left: %v", f)
	}
}

func TestDiskBlobStoreRestart(t *testing.T) {
	dir := t.TempDir()
	fake := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	s := openStore(t, dir, 3000, storage.WithBlobStoreClock(fake))
	var blobs [][]byte
	var ds []digest.Digest
	for i := 0; i < 3; i++ {
		b, _ := randomBlob(t, 1000)
		blobs = append(blobs, b)
		ds = append(ds, mustPut(t, s, b))
		fake.Advance(time.Hour)
	}
	// Use the oldest blob: it becomes the most recently used, on disk too.
	readAll(t, s, ds[0], 0, 0)
	// A second process cannot open the same directory.
	if _, err := storage.NewDiskBlobStore(dir, 3000, zerolog.Nop(), nil); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second open of a directory in use: %v, want FAILED_PRECONDITION", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A crashed writer's temporary file is cleaned at start-up.
	stale := filepath.Join(dir, "tmp", "deadbeef-123")
	if err := os.WriteFile(stale, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir, 3000, storage.WithBlobStoreClock(fake))
	defer s.Close()
	if f := tmpFiles(t, dir); len(f) != 0 {
		t.Fatalf("stale temporary files survived the restart: %v", f)
	}
	if n, size := s.Usage(); n != 3 || size != 3000 {
		t.Fatalf("Usage after restart = %d blobs, %d bytes; want 3, 3000", n, size)
	}
	// The use order survived: blob 1, the least recently used before the restart, goes first.
	extra, _ := randomBlob(t, 1000)
	mustPut(t, s, extra)
	if m := missing(t, s, ds...); len(m) != 1 || !m[ds[1]] {
		t.Fatalf("after restart and one eviction, missing = %v; want only the LRU blob %s", m, ds[1])
	}
	for _, i := range []int{0, 2} {
		if got := readAll(t, s, ds[i], 0, 0); !bytes.Equal(got, blobs[i]) {
			t.Fatalf("blob %d differs after restart", i)
		}
	}
}

func TestDiskBlobStoreShrinkOnRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10000)
	for i := 0; i < 5; i++ {
		b, _ := randomBlob(t, 1000)
		mustPut(t, s, b)
	}
	s.Close()
	s = openStore(t, dir, 2500)
	defer s.Close()
	if n, size := s.Usage(); n != 2 || size != 2000 {
		t.Fatalf("reopened with a smaller bound: %d blobs, %d bytes; want 2, 2000", n, size)
	}
}

func TestDiskBlobStoreEviction(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	s, err := storage.NewDiskBlobStore(dir, 4000, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ds []digest.Digest
	for i := 0; i < 4; i++ {
		b, _ := randomBlob(t, 1000)
		ds = append(ds, mustPut(t, s, b))
	}
	// Refresh blob 0 by reading it and blob 1 by FindMissing: 2 is now least recently used.
	readAll(t, s, ds[0], 0, 0)
	missing(t, s, ds[1])
	b4, _ := randomBlob(t, 1000)
	ds = append(ds, mustPut(t, s, b4))
	if m := missing(t, s, ds...); len(m) != 1 || !m[ds[2]] {
		t.Fatalf("missing after first eviction = %v, want only %s", m, ds[2])
	}
	// A blob that needs two slots evicts the next two least recently used: 3, then 0.
	// (The FindMissing above refreshed every present blob in order 0, 1, 3, 4.)
	b5, _ := randomBlob(t, 2000)
	d5 := mustPut(t, s, b5)
	if m := missing(t, s, append(ds, d5)...); len(m) != 3 || !m[ds[0]] || !m[ds[1]] || !m[ds[2]] {
		t.Fatalf("missing after second eviction = %v, want %s, %s and %s", m, ds[0], ds[1], ds[2])
	}
	if n, size := s.Usage(); size > 4000 || n != 3 {
		t.Fatalf("Usage = %d blobs, %d bytes; want 3 blobs within 4000 bytes", n, size)
	}
	// The files on disk match the index.
	var onDisk int64
	filepath.Walk(filepath.Join(dir, "cas"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			onDisk += fi.Size()
		}
		return nil
	})
	if onDisk != 4000 {
		t.Fatalf("%d bytes of blob files on disk, want 4000", onDisk)
	}
	if got := gathered(t, reg, "buildfleet_blob_store_evictions_total"); got != 3 {
		t.Errorf("evictions metric = %v, want 3", got)
	}
	if got := gathered(t, reg, "buildfleet_blob_store_stored_bytes"); got != 4000 {
		t.Errorf("stored bytes metric = %v, want 4000", got)
	}
}

func TestDiskBlobStoreConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 64<<20)
	defer s.Close()
	shared, sharedDigest := randomBlob(t, 300<<10)
	const writers = 32
	own := make([][]byte, writers)
	for i := range own {
		own[i], _ = randomBlob(t, 50<<10+i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			// Small reads interleave the writers.
			if err := s.Put(ctx, sharedDigest, io.MultiReader(bytes.NewReader(shared[:1000]), bytes.NewReader(shared[1000:]))); err != nil {
				errs <- err
			}
			if err := s.Put(ctx, digest.FromBytes(own[i]), bytes.NewReader(own[i])); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Put: %v", err)
	}
	if got := readAll(t, s, sharedDigest, 0, 0); !bytes.Equal(got, shared) {
		t.Fatal("shared blob corrupt after concurrent writes")
	}
	for i, b := range own {
		if got := readAll(t, s, digest.FromBytes(b), 0, 0); !bytes.Equal(got, b) {
			t.Fatalf("blob of writer %d corrupt", i)
		}
	}
	if n, _ := s.Usage(); n != writers+1 {
		t.Fatalf("Usage = %d blobs, want %d", n, writers+1)
	}
	if f := tmpFiles(t, dir); len(f) != 0 {
		t.Fatalf("temporary files left: %v", f)
	}
}

// gathered returns the value of the unlabelled metric name in reg.
func gathered(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		m := f.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
