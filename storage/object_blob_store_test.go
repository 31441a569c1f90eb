package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

func TestObjectBucketIsWriteOnce(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second, multipartThreshold: 5 << 20}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		for _, size := range []int{100, 20 << 20} { // One request; a multipart (S3) or resumable (GCS) upload.
			key := fmt.Sprintf("cas/write-once-%d", size)
			first := bytes.Repeat([]byte("1"), size)
			created, err := b.bucket.Create(ctx, key, bytes.NewReader(first), int64(size))
			if err != nil || !created {
				t.Fatalf("first Create of %d bytes: created %v, %v", size, created, err)
			}
			created, err = b.bucket.Create(ctx, key, bytes.NewReader(bytes.Repeat([]byte("2"), size)), int64(size))
			if err != nil || created {
				t.Fatalf("second Create of %d bytes: created %v, %v; want not created, no error", size, created, err)
			}
			if got := b.read(t, key); !bytes.Equal(got, first) {
				t.Fatalf("object of %d bytes holds %.10q..., want the first write", size, got)
			}
		}
	})
}

func TestObjectBlobStoreReadsRangesAndMisses(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		s := b.objectStore(t, time.Minute, 0)
		data, d := randomBlob(t, 1000)
		absent := digest.FromBytes([]byte("never stored"))
		if missing, err := s.FindMissing(ctx, []digest.Digest{d, digest.Empty, absent}); err != nil || len(missing) != 2 {
			t.Fatalf("FindMissing before Put = %v, %v; want %s and %s", missing, err, d, absent)
		}
		mustPut(t, s, data)
		for _, c := range []struct{ offset, limit int64 }{{0, 0}, {0, 1000}, {10, 0}, {10, 90}, {999, 0}, {1000, 0}, {500, 5000}} {
			want := data[c.offset:]
			if c.limit > 0 && c.limit < int64(len(want)) {
				want = want[:c.limit]
			}
			if got := readAll(t, s, d, c.offset, c.limit); !bytes.Equal(got, want) {
				t.Errorf("Get(offset %d, limit %d) = %d bytes, want %d", c.offset, c.limit, len(got), len(want))
			}
		}
		_, err := s.Get(ctx, d, 1001, 0)
		wantStatus(t, err, codes.OutOfRange, "")
		_, err = s.Get(ctx, absent, 0, 0)
		wantStatus(t, err, codes.NotFound, "Blob "+absent.String()+" not found")
		// The same hash with another size is another blob, and missing.
		wrongSize := digest.Digest{Hash: d.Hash, Size: 999}
		if missing, err := s.FindMissing(ctx, []digest.Digest{d, wrongSize, absent, absent}); err != nil || len(missing) != 3 ||
			missing[0] != wrongSize || missing[1] != absent || missing[2] != absent {
			t.Fatalf("FindMissing = %v, %v; want [%s %s %s]", missing, err, wrongSize, absent, absent)
		}
		// Content that does not match its digest is refused and nothing is stored.
		bad := digest.FromBytes([]byte("the real content"))
		err = s.Put(ctx, bad, strings.NewReader("other content!!!"))
		wantStatus(t, err, codes.InvalidArgument, "")
		if b.read(t, "cas/"+bad.Hash) != nil {
			t.Fatal("a refused blob was uploaded")
		}
	})
}

func TestObjectBlobStoreCorruptObjectIsAMiss(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		writer, _ := b.tier(t, 1<<20, time.Minute, 0)
		data, d := randomBlob(t, 4096)
		mustPut(t, writer, data)
		// The same number of bytes, different content, behind buildfleet's back.
		b.write(t, "cas/"+d.Hash, bytes.Repeat([]byte{'x'}, len(data)))

		var logs bytes.Buffer
		local := openStore(t, t.TempDir(), 1<<20)
		t.Cleanup(func() { local.Close() })
		reader := storage.NewTieredBlobStore(local, storage.NewObjectBlobStore(b.bucket, storage.ObjectBlobStoreOptions{
			SpoolDir: t.TempDir(), Clock: b.clock, Logger: zerolog.New(&logs),
		}), t.TempDir(), zerolog.Nop())
		_, err := reader.Get(ctx, d, 0, 0)
		wantStatus(t, err, codes.NotFound, "Blob "+d.String()+" not found (the stored object was corrupt)")
		if !strings.Contains(logs.String(), "Corrupt object in the object store") || !strings.Contains(logs.String(), d.String()) {
			t.Errorf("the corrupt object was not logged with its digest; logs:\n%s", logs.String())
		}
		if n, _ := local.Usage(); n != 0 {
			t.Fatalf("local tier kept %d blobs after reading a corrupt object", n)
		}
		// The corrupt object is gone, so an upload replaces it and reads are right again.
		if missing, err := reader.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) != 1 {
			t.Fatalf("FindMissing after corruption = %v, %v; want the blob missing", missing, err)
		}
		mustPut(t, reader, data)
		fresh, _ := b.tier(t, 1<<20, time.Minute, 0)
		if got := readAll(t, fresh, d, 0, 0); !bytes.Equal(got, data) {
			t.Fatal("re-uploaded blob reads back wrong")
		}

		// Read straight from the object store (no tier), a corrupt whole-blob read ends in
		// DATA_LOSS rather than io.EOF, and a wrong size is a miss at once.
		b.write(t, "cas/"+d.Hash, bytes.Repeat([]byte{'y'}, len(data)))
		r, err := b.objectStore(t, 0, 0).Get(ctx, d, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(r)
		r.Close()
		wantStatus(t, err, codes.DataLoss, "")
		b.write(t, "cas/"+d.Hash, []byte("short"))
		_, err = b.objectStore(t, 0, 0).Get(ctx, d, 10, 10)
		wantStatus(t, err, codes.NotFound, "")
	})
}

func TestObjectBlobStoreConcurrentWritersOfOneBlob(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 20 * time.Second}, func(t *testing.T, b *backend) {
		data, d := randomBlob(t, 256<<10)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			// Each writer is its own replica, with its own local tier.
			s, _ := b.tier(t, 1<<20, time.Minute, 0)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Put(context.Background(), d, bytes.NewReader(data))
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("writer %d: %v", i, err)
			}
		}
		if got := b.read(t, "cas/"+d.Hash); !bytes.Equal(got, data) {
			t.Fatalf("object holds %d bytes, not the blob", len(got))
		}
	})
}

func TestObjectBlobStoreExistenceCache(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 500 * time.Millisecond}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		reg := prometheus.NewRegistry()
		s := storage.NewObjectBlobStore(b.bucket, storage.ObjectBlobStoreOptions{
			ExistenceCacheTTL: time.Minute, SpoolDir: t.TempDir(), Clock: b.clock, Registerer: reg,
		})
		data, d := randomBlob(t, 100)
		later, dl := randomBlob(t, 100)
		mustPut(t, s, data)
		if missing, err := s.FindMissing(ctx, []digest.Digest{d, dl}); err != nil || len(missing) != 1 || missing[0] != dl {
			t.Fatalf("FindMissing = %v, %v; want [%s]", missing, err, dl)
		}
		// A miss is not cached: a blob that appears (another replica uploaded it) is seen.
		b.write(t, "cas/"+dl.Hash, later)
		if missing, err := s.FindMissing(ctx, []digest.Digest{d, dl}); err != nil || len(missing) != 0 {
			t.Fatalf("FindMissing after the other upload = %v, %v; want none", missing, err)
		}
		// Known-present blobs are answered without the object store while the TTL lasts...
		b.server.Pause()
		defer b.server.Resume()
		if missing, err := s.FindMissing(ctx, []digest.Digest{d, dl}); err != nil || len(missing) != 0 {
			t.Fatalf("FindMissing from the existence cache = %v, %v; want none", missing, err)
		}
		// The Put's own check and the first check of dl missed, dl's second check found it,
		// and d was answered from the cache three times and dl once.
		for result, want := range map[string]float64{"missing": 2, "present": 1, "cached": 4} {
			if got := counterValue(t, reg, "buildfleet_object_store_existence_checks_total", result); got != want {
				t.Errorf("existence checks %s = %v, want %v", result, got, want)
			}
		}
		if got := counterValue(t, reg, "buildfleet_object_store_uploads_total", ""); got != 1 {
			t.Errorf("uploads = %v, want 1", got)
		}
		// ...and asked again once it is over.
		b.clock.Advance(time.Minute)
		_, err := s.FindMissing(ctx, []digest.Digest{d})
		wantStatus(t, err, codes.Unavailable, "")
	})
}

func TestObjectStoreUnavailableAndBack(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 500 * time.Millisecond}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		s, _ := b.tier(t, 1<<20, 0, 0) // No existence cache: every check asks.
		ac := storage.NewObjectActionCache(b.bucket, 0, b.clock, zeroLogger())
		data, d := randomBlob(t, 1000)
		mustPut(t, s, data)
		other, do := randomBlob(t, 1000)
		action := digest.FromBytes([]byte("action"))

		b.server.Pause()
		_, err := s.FindMissing(ctx, []digest.Digest{d})
		wantStatus(t, err, codes.Unavailable, "")
		err = s.Put(ctx, do, bytes.NewReader(other))
		wantStatus(t, err, codes.Unavailable, "")
		// The failed upload left nothing in the local tier (the bucket does not have the blob,
		// so it is not served); a blob the local tier lacks cannot be read.
		_, err = s.Get(ctx, do, 0, 0)
		wantStatus(t, err, codes.Unavailable, "")
		_, err = s.Get(ctx, digest.FromBytes([]byte("only in the bucket, if anywhere")), 0, 0)
		wantStatus(t, err, codes.Unavailable, "")
		_, err = ac.Get(ctx, "", action)
		wantStatus(t, err, codes.Unavailable, "")
		// What the local tier holds is still served.
		if got := readAll(t, s, d, 0, 0); !bytes.Equal(got, data) {
			t.Fatal("local tier read wrong while the object store was away")
		}

		b.server.Resume()
		if missing, err := s.FindMissing(ctx, []digest.Digest{d, do}); err != nil || len(missing) != 1 || missing[0] != do {
			t.Fatalf("FindMissing after recovery = %v, %v; want [%s]", missing, err, do)
		}
		mustPut(t, s, other)
		if b.name == "s3" {
			// A restarted server (new process, same data) is found again too.
			b.server.Stop()
			_, err = s.FindMissing(ctx, []digest.Digest{d})
			wantStatus(t, err, codes.Unavailable, "")
			b.server.Start()
		}
		fresh, _ := b.tier(t, 1<<20, 0, 0)
		if got := readAll(t, fresh, do, 0, 0); !bytes.Equal(got, other) {
			t.Fatal("blob uploaded after recovery reads back wrong")
		}
	})
}

// counterValue returns the value of counter name in reg, with label value label (any label
// name; "" for a counter without labels), or 0.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label == "" && len(m.GetLabel()) == 0 || len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
