package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

func zeroLogger() zerolog.Logger { return zerolog.Nop() }

func TestObjectActionCache(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		cas, _ := b.tier(t, 1<<20, time.Minute, 0)
		ac := storage.NewCompletenessCheckingActionCache(storage.NewObjectActionCache(b.bucket, 0, b.clock, zeroLogger()), cas)
		result, _, _, _ := outputs(t, cas)
		action := digest.FromBytes([]byte("action"))
		_, err := ac.Get(ctx, "main", action)
		wantStatus(t, err, codes.NotFound, "Action result for "+action.String()+" not found")
		if err := ac.Put(ctx, "main", action, result); err != nil {
			t.Fatal(err)
		}
		// A restarted scheduler (new local tier, new cache objects) finds it in the bucket.
		cas2, _ := b.tier(t, 1<<20, time.Minute, 0)
		ac2 := storage.NewCompletenessCheckingActionCache(storage.NewObjectActionCache(b.bucket, 0, b.clock, zeroLogger()), cas2)
		got, err := ac2.Get(ctx, "main", action)
		if err != nil || !proto.Equal(got, result) {
			t.Fatalf("Get = %v, %v; want the stored result", got, err)
		}
		_, err = ac2.Get(ctx, "other", action)
		wantStatus(t, err, codes.NotFound, "")

		// A result naming a missing output is refused, and nothing changes.
		bad := proto.Clone(result).(*repb.ActionResult)
		bad.OutputFiles = append(bad.OutputFiles, &repb.OutputFile{Path: "gone", Digest: digest.FromBytes([]byte("not uploaded")).Proto()})
		wantStatus(t, ac2.Put(ctx, "main", action, bad), codes.FailedPrecondition, "")
		if got, err := ac2.Get(ctx, "main", action); err != nil || !proto.Equal(got, result) {
			t.Fatalf("Get after refused Put = %v, %v", got, err)
		}

		// A corrupt entry is a miss.
		other := digest.FromBytes([]byte("another action"))
		if err := ac2.Put(ctx, "main", other, result); err != nil {
			t.Fatal(err)
		}
		key := "ac/" + entryKey(t, b, "main", other)
		b.write(t, key, []byte("\xff\xff not a protobuf"))
		_, err = ac2.Get(ctx, "main", other)
		wantStatus(t, err, codes.NotFound, "Action result for "+other.String()+" not found (corrupt entry)")
	})
}

// entryKey returns the object key of an action cache entry as the package documents it: the
// hex SHA-256 of the 8-byte big-endian length of the instance name, the name, and "HASH/SIZE".
func entryKey(t testing.TB, _ *backend, instance string, d digest.Digest) string {
	t.Helper()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(instance)))
	sum := sha256.Sum256(append(append(n[:], instance...), d.String()...))
	return hex.EncodeToString(sum[:])
}

// TestObjectActionCacheCorruptEntryIsAMiss changes one byte of an entry in the bucket behind
// buildfleet's back, so that it is still a valid ActionResult naming an output path that was
// never produced: Get answers a miss (logged) and deletes the object, and the next Put stores
// the entry again. An entry in the unframed format (a bare ActionResult) is a miss too.
func TestObjectActionCacheCorruptEntryIsAMiss(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		var logs bytes.Buffer
		ac := storage.NewObjectActionCache(b.bucket, 0, b.clock, zerolog.New(&logs))
		result := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "bazel-out/bin/g4.txt", Digest: digest.FromBytes([]byte("g4")).Proto()}}}
		action := digest.FromBytes([]byte("action with a corrupt entry"))
		if err := ac.Put(ctx, "main", action, result); err != nil {
			t.Fatal(err)
		}
		key := "ac/" + entryKey(t, b, "main", action)
		stored := b.read(t, key)
		i := bytes.Index(stored, []byte("g4.txt"))
		if i < 0 {
			t.Fatalf("entry %q does not hold the output path", stored)
		}
		corrupt := bytes.Clone(stored)
		corrupt[i+2] = 0x05 // "g4.txt" becomes "g4\x05txt": still a valid ActionResult.
		payload := corrupt
		if corrupt[0] == 0 { // Framed: a 6-byte magic starting with a zero byte and a CRC-32C.
			payload = corrupt[10:]
		}
		var parsed repb.ActionResult
		if err := proto.Unmarshal(payload, &parsed); err != nil || parsed.OutputFiles[0].Path != "bazel-out/bin/g4\x05txt" {
			t.Fatalf("the changed entry's ActionResult does not parse as intended: %v, %v", &parsed, err)
		}
		b.write(t, key, corrupt)
		_, err := ac.Get(ctx, "main", action)
		wantStatus(t, err, codes.NotFound, "Action result for "+action.String()+" not found (corrupt entry)")
		if !strings.Contains(logs.String(), "Ignoring corrupt action cache entry") || !strings.Contains(logs.String(), "checksum mismatch") {
			t.Errorf("the corrupt entry was not logged; logs:\n%s", logs.String())
		}
		if b.read(t, key) != nil {
			t.Error("the corrupt entry is still in the bucket")
		}
		if err := ac.Put(ctx, "main", action, result); err != nil {
			t.Fatal(err)
		}
		if got, err := ac.Get(ctx, "main", action); err != nil || !proto.Equal(got, result) {
			t.Fatalf("Get after storing the entry again = %v, %v", got, err)
		}

		// An unframed entry (a bare serialized ActionResult) is a miss and deleted.
		bare, err := proto.Marshal(result)
		if err != nil {
			t.Fatal(err)
		}
		b.write(t, key, bare)
		_, err = ac.Get(ctx, "main", action)
		wantStatus(t, err, codes.NotFound, "Action result for "+action.String()+" not found (corrupt entry)")
		if b.read(t, key) != nil {
			t.Error("the unframed entry is still in the bucket")
		}
	})
}
