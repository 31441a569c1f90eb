package storage_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

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
