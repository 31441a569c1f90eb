package storage_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// TestObjectStoreRefreshesUsedObjects tells the expiry story: objects a build uses after they
// have aged past the refresh age are refreshed in the bucket (so the lifecycle rule counts
// from now), objects nobody uses are left to expire, and a refreshed object is not copied again
// at every use.
func TestObjectStoreRefreshesUsedObjects(t *testing.T) {
	const refreshAge = 7 * 24 * time.Hour
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		s := b.objectStore(t, time.Hour, refreshAge)
		ac := storage.NewObjectActionCache(b.bucket, refreshAge, b.clock, zeroLogger())
		used := mustPut(t, s, []byte("a blob builds keep using"))
		unused := mustPut(t, s, []byte("a blob nobody asks for again"))
		action := digest.FromBytes([]byte("action"))
		if err := ac.Put(ctx, "", action, &repb.ActionResult{ExitCode: 3}); err != nil {
			t.Fatal(err)
		}
		acKey := "ac/" + entryKey(t, b, "", action)
		written := map[string]time.Time{}
		for _, key := range []string{"cas/" + used.Hash, "cas/" + unused.Hash, acKey} {
			written[key] = b.refreshedAt(t, key)
		}

		// Young objects are used without a refresh.
		if missing, err := s.FindMissing(ctx, []digest.Digest{used}); err != nil || len(missing) != 0 {
			t.Fatalf("FindMissing = %v, %v", missing, err)
		}
		if got := b.refreshedAt(t, "cas/"+used.Hash); !got.Equal(written["cas/"+used.Hash]) {
			t.Fatalf("young object refreshed at %v", got)
		}

		// Eight days on, using them refreshes them.
		b.clock.Advance(8 * 24 * time.Hour)
		now := b.clock.Now().Truncate(time.Second)
		if missing, err := s.FindMissing(ctx, []digest.Digest{used}); err != nil || len(missing) != 0 {
			t.Fatalf("FindMissing = %v, %v", missing, err)
		}
		if _, err := ac.Get(ctx, "", action); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"cas/" + used.Hash, acKey} {
			if got := b.refreshedAt(t, key).Truncate(time.Second); !got.Equal(now) {
				t.Errorf("%s refreshed at %v, want %v", key, got, now)
			}
		}
		if got := b.refreshedAt(t, "cas/"+unused.Hash); !got.Equal(written["cas/"+unused.Hash]) {
			t.Errorf("unused object refreshed at %v; it should be left to expire", got)
		}

		// Used again half an hour later: no second copy.
		b.clock.Advance(30 * time.Minute)
		if missing, err := s.FindMissing(ctx, []digest.Digest{used}); err != nil || len(missing) != 0 {
			t.Fatalf("FindMissing = %v, %v", missing, err)
		}
		if got := b.refreshedAt(t, "cas/"+used.Hash).Truncate(time.Second); !got.Equal(now) {
			t.Errorf("object refreshed again at %v", got)
		}
	})
}

// TestS3RefreshOfALargeObject refreshes an object above the copy threshold, which S3 copies in
// parts (UploadPartCopy), and checks that the content survives the copy onto itself.
func TestS3RefreshOfALargeObject(t *testing.T) {
	b := newS3Backend(t, backendConfig{timeout: 10 * time.Second, copyThreshold: 5 << 20})
	s := b.objectStore(t, 0, 24*time.Hour)
	data, d := randomBlob(t, 12<<20) // Parts of 5, 5 and 2 MiB.
	mustPut(t, s, data)
	b.clock.Advance(25 * time.Hour)
	if missing, err := s.FindMissing(context.Background(), []digest.Digest{d}); err != nil || len(missing) != 0 {
		t.Fatalf("FindMissing = %v, %v", missing, err)
	}
	if got := b.refreshedAt(t, "cas/"+d.Hash).Truncate(time.Second); !got.Equal(b.clock.Now().Truncate(time.Second)) {
		t.Fatalf("refreshed at %v, want %v", got, b.clock.Now())
	}
	if got := b.read(t, "cas/"+d.Hash); !bytes.Equal(got, data) {
		t.Fatal("the multipart copy changed the content")
	}
}

// TestTieredBlobStoreRefreshesBlobsReadFromTheLocalTier reads a blob the local tier holds,
// through ByteStream.Read and BatchReadBlobs, while its object ages past a one-hour refresh age.
// Young, reads ask the bucket nothing. After a restart that kept the local tier (object ages
// unknown), the first read checks the object's age once and later reads ask nothing. Old, a read
// refreshes the object in the background, once.
func TestTieredBlobStoreRefreshesBlobsReadFromTheLocalTier(t *testing.T) {
	const refreshAge = time.Hour
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		dir := t.TempDir()
		type scheduler struct {
			local *storage.DiskBlobStore
			tier  *storage.TieredBlobStore
			reg   *prometheus.Registry
			c     *serviceClients
		}
		start := func() *scheduler {
			s := &scheduler{local: openStore(t, dir, 1<<20), reg: prometheus.NewRegistry()}
			t.Cleanup(func() { s.local.Close() })
			s.tier = storage.NewTieredBlobStore(s.local, storage.NewObjectBlobStore(b.bucket, storage.ObjectBlobStoreOptions{
				ExistenceCacheTTL: time.Minute, RefreshAge: refreshAge, SpoolDir: t.TempDir(), Clock: b.clock, Logger: zerolog.Nop(), Registerer: s.reg,
			}), t.TempDir(), zerolog.Nop())
			s.c = serveStorage(t, s.tier, storage.NewObjectActionCache(b.bucket, 0, b.clock, zeroLogger()))
			return s
		}
		bucketChecks := func(s *scheduler) float64 {
			return counterValue(t, s.reg, "buildfleet_object_store_existence_checks_total", "present") +
				counterValue(t, s.reg, "buildfleet_object_store_existence_checks_total", "missing")
		}
		refreshes := func(s *scheduler) float64 {
			return counterValue(t, s.reg, "buildfleet_object_store_refreshes_total", "")
		}
		data, d := randomBlob(t, 4096)
		read := func(s *scheduler) {
			t.Helper()
			got, _, err := readStream(ctx, s.c.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", d, digest.Identity)})
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("ByteStream.Read: %d bytes, %v", len(got), err)
			}
			rd, err := s.c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{d.Proto()}})
			if err != nil || !bytes.Equal(rd.GetResponses()[0].GetData(), data) {
				t.Fatalf("BatchReadBlobs = %v, %v", rd.GetResponses(), err)
			}
			s.tier.WaitForRefreshes()
		}

		s := start()
		mustPut(t, s.tier, data)
		key := "cas/" + d.Hash
		written := b.refreshedAt(t, key)

		// Young: served from the local tier, no bucket request.
		checks := bucketChecks(s)
		read(s)
		if got := bucketChecks(s); got != checks {
			t.Errorf("reads of a young blob from the local tier asked the bucket %v times", got-checks)
		}

		// Restarted with the local tier kept: one age check, then nothing.
		s.local.Close()
		b.clock.Advance(10 * time.Minute)
		s = start()
		read(s)
		read(s)
		if got := bucketChecks(s); got != 1 {
			t.Errorf("reads after a restart asked the bucket %v times, want 1", got)
		}
		if got := refreshes(s); got != 0 {
			t.Errorf("a young object was refreshed %v times after the restart", got)
		}
		if got := b.refreshedAt(t, key); !got.Equal(written) {
			t.Fatalf("young object refreshed at %v", got)
		}

		// Two hours on: a read refreshes it, once.
		b.clock.Advance(2 * time.Hour)
		now := b.clock.Now().Truncate(time.Second)
		read(s)
		read(s)
		if got := b.refreshedAt(t, key).Truncate(time.Second); !got.Equal(now) {
			t.Fatalf("object read from the local tier past the refresh age refreshed at %v, want %v", got, now)
		}
		if got := refreshes(s); got != 1 {
			t.Errorf("refreshes: %v, want 1", got)
		}
	})
}
