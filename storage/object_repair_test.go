package storage_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// hookReader calls atEOF once when r is exhausted, before returning io.EOF.
type hookReader struct {
	r     io.Reader
	atEOF func()
	done  bool
}

func (h *hookReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if err == io.EOF && !h.done {
		h.done = true
		h.atEOF()
	}
	return n, err
}

// TestObjectBlobStoreRepairsWrongSizeObject puts a truncated object under a blob's key behind
// buildfleet's back: the existence check reports it missing, as corrupt (logged, counted,
// deleted), and a write of the right bytes stores them, whether the truncated object was there
// before the write's existence check or appeared between that check and the write-once put.
func TestObjectBlobStoreRepairsWrongSizeObject(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		data, d := randomBlob(t, 4096)
		key := "cas/" + d.Hash
		var logs bytes.Buffer
		reg := prometheus.NewRegistry()
		s := storage.NewObjectBlobStore(b.bucket, storage.ObjectBlobStoreOptions{
			ExistenceCacheTTL: time.Minute, SpoolDir: t.TempDir(), Clock: b.clock, Logger: zerolog.New(&logs), Registerer: reg,
		})

		b.write(t, key, data[:100])
		if missing, err := s.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) != 1 {
			t.Fatalf("FindMissing with a truncated object = %v, %v; want the blob missing", missing, err)
		}
		if got := counterValue(t, reg, "buildfleet_object_store_corrupt_objects_total", ""); got != 1 {
			t.Errorf("corrupt objects counted: %v, want 1", got)
		}
		if !strings.Contains(logs.String(), "Corrupt object in the object store") || !strings.Contains(logs.String(), d.String()) {
			t.Errorf("the truncated object was not logged with its digest; logs:\n%s", logs.String())
		}
		if b.read(t, key) != nil {
			t.Error("the truncated object is still in the bucket after the existence check")
		}

		// Truncated object present when the write starts (through the local tier).
		b.write(t, key, data[:100])
		tier, _ := b.tier(t, 1<<20, time.Minute, 0)
		mustPut(t, tier, data)
		if got := b.read(t, key); !bytes.Equal(got, data) {
			t.Fatalf("after a write through the tier the bucket holds %d bytes, want the blob's %d", len(got), len(data))
		}

		// Truncated object appearing after the write's existence check, before its
		// write-once put (ObjectBlobStore.Put checks before it reads the content): the refused
		// put must not count as stored.
		b.write(t, key, data[:100])
		if missing, _ := b.objectStore(t, 0, 0).FindMissing(ctx, []digest.Digest{d}); len(missing) != 1 {
			t.Fatal("truncated object not seen as missing")
		}
		r := &hookReader{r: bytes.NewReader(data), atEOF: func() { b.write(t, key, data[:100]) }}
		if err := b.objectStore(t, 0, 0).Put(ctx, d, r); err != nil {
			t.Fatalf("Put with a truncated object appearing during the write: %v", err)
		}
		if !r.done {
			t.Fatal("the content was not read to its end")
		}
		if got := b.read(t, key); !bytes.Equal(got, data) {
			t.Fatalf("after a write-once put refused over a truncated object the bucket holds %d bytes, want %d", len(got), len(data))
		}

		// The action cache: a result naming a blob is refused while the bucket holds a
		// truncated object for it, and stored once a write has put the right bytes there.
		out, od := randomBlob(t, 2048)
		b.write(t, "cas/"+od.Hash, out[:10])
		cas, _ := b.tier(t, 1<<20, time.Minute, 0)
		ac := storage.NewCompletenessCheckingActionCache(storage.NewObjectActionCache(b.bucket, 0, b.clock, zeroLogger()), cas)
		result := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "out", Digest: od.Proto()}}}
		action := digest.FromBytes([]byte("action naming a repaired blob"))
		wantStatus(t, ac.Put(ctx, "main", action, result), codes.FailedPrecondition, "")
		mustPut(t, cas, out)
		if err := ac.Put(ctx, "main", action, result); err != nil {
			t.Fatalf("storing an action result once its output was written again: %v", err)
		}
		if got, err := ac.Get(ctx, "main", action); err != nil || !proto.Equal(got, result) {
			t.Fatalf("Get = %v, %v; want the stored result", got, err)
		}
	})
}

// TestGCSObjectFailingItsChecksumIsAMiss flips bytes of an object in fake-gcs-server's files,
// so that GCS's CRC32C of it no longer matches: reading it is a corrupt-object miss (logged,
// counted, deleted, NOT_FOUND), not an unavailable object store.
func TestGCSObjectFailingItsChecksumIsAMiss(t *testing.T) {
	b := newGCSBackend(t, backendConfig{timeout: 10 * time.Second})
	ctx := context.Background()
	writer, _ := b.tier(t, 1<<20, time.Minute, 0)
	data, d := randomBlob(t, 4096)
	mustPut(t, writer, data)
	file := filepath.Join(b.server.DataDir, testBucket, testPrefix, "cas", d.Hash)
	flip := func() {
		t.Helper()
		content, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(content, data) {
			t.Fatalf("%s does not hold the blob", file)
		}
		content[100] ^= 0xff
		if err := os.WriteFile(file, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	flip()

	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	local := openStore(t, t.TempDir(), 1<<20)
	t.Cleanup(func() { local.Close() })
	reader := storage.NewTieredBlobStore(local, storage.NewObjectBlobStore(b.bucket, storage.ObjectBlobStoreOptions{
		SpoolDir: t.TempDir(), Clock: b.clock, Logger: zerolog.New(&logs), Registerer: reg,
	}), t.TempDir(), zerolog.Nop())
	_, err := reader.Get(ctx, d, 0, 0)
	wantStatus(t, err, codes.NotFound, "Blob "+d.String()+" not found (the stored object was corrupt)")
	if !strings.Contains(logs.String(), "Corrupt object in the object store") {
		t.Errorf("the corrupt object was not logged; logs:\n%s", logs.String())
	}
	if got := counterValue(t, reg, "buildfleet_object_store_corrupt_objects_total", ""); got != 1 {
		t.Errorf("corrupt objects counted: %v, want 1", got)
	}
	if _, err := b.bucket.Stat(ctx, "cas/"+d.Hash); status.Code(err) != codes.NotFound {
		t.Fatalf("Stat of the corrupt object after the read: %v; want it deleted", err)
	}
	mustPut(t, reader, data)

	// Straight from the object store (no tier): the read ends in DATA_LOSS, the object is
	// deleted.
	flip()
	r, err := b.objectStore(t, 0, 0).Get(ctx, d, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	r.Close()
	wantStatus(t, err, codes.DataLoss, "")
	if _, err := b.bucket.Stat(ctx, "cas/"+d.Hash); status.Code(err) != codes.NotFound {
		t.Fatalf("Stat of the corrupt object after the read: %v; want it deleted", err)
	}
}

// TestObjectStoreProbeRefusesBadSettings checks the start-up probe against the real servers:
// a missing bucket, an access key the server does not know, no credentials at all, and an
// endpoint that is no URL are errors (not UNAVAILABLE, which the scheduler only warns about),
// while a healthy bucket passes.
func TestObjectStoreProbeRefusesBadSettings(t *testing.T) {
	ctx := context.Background()
	t.Run("s3", func(t *testing.T) {
		b := newS3Backend(t, backendConfig{timeout: 10 * time.Second})
		probe := func(cfg storage.S3BucketConfig) error {
			t.Helper()
			bucket, err := storage.NewS3Bucket(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			return storage.NewObjectBlobStore(bucket, storage.ObjectBlobStoreOptions{Logger: zerolog.Nop()}).Probe(ctx)
		}
		cfg := s3Config(b.server, b.clock, backendConfig{timeout: 10 * time.Second})
		if err := probe(cfg); err != nil {
			t.Fatalf("Probe of a healthy bucket: %v", err)
		}

		noBucket := cfg
		noBucket.Bucket = "no-such-bucket"
		wantStatus(t, probe(noBucket), codes.FailedPrecondition, "")

		unknownKey := cfg
		unknownKey.Credentials = credentials.NewStaticCredentialsProvider("unknown-access-key", "whatever-secret", "")
		wantStatus(t, probe(unknownKey), codes.PermissionDenied, "")
		// A read with that key is refused too, not "not found".
		bucket, err := storage.NewS3Bucket(ctx, unknownKey)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = bucket.Get(ctx, "cas/"+digest.FromBytes([]byte("x")).Hash, 0, 0)
		wantStatus(t, err, codes.PermissionDenied, "")

		// No credentials: the chain (environment and shared files emptied, instance
		// metadata disabled) finds none.
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		t.Setenv("AWS_CONFIG_FILE", os.DevNull)
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
		t.Setenv("AWS_PROFILE", "")
		t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "")
		t.Setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "")
		t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		noCreds := cfg
		noCreds.Credentials = nil
		err = probe(noCreds)
		wantStatus(t, err, codes.Unauthenticated, "")
		if !strings.Contains(err.Error(), "no AWS credentials") {
			t.Errorf("Probe without credentials: %v; want it to say no AWS credentials were found", err)
		}

		for _, endpoint := range []string{"127.0.0.1:7070", "localhost", "ftp://127.0.0.1:7070"} {
			badEndpoint := cfg
			badEndpoint.Endpoint = endpoint
			_, err := storage.NewS3Bucket(ctx, badEndpoint)
			wantStatus(t, err, codes.InvalidArgument, "")
			if !strings.Contains(err.Error(), "is not an http:// or https:// URL") {
				t.Errorf("NewS3Bucket with endpoint %q: %v; want it to say what an endpoint looks like", endpoint, err)
			}
		}
	})
	t.Run("gcs", func(t *testing.T) {
		b := newGCSBackend(t, backendConfig{timeout: 10 * time.Second})
		if err := b.objectStore(t, 0, 0).Probe(ctx); err != nil {
			t.Fatalf("Probe of a healthy bucket: %v", err)
		}
		bucket, err := storage.NewGCSBucket(ctx, storage.GCSBucketConfig{Bucket: "no-such-bucket", Prefix: testPrefix, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bucket.Close() })
		err = storage.NewObjectBlobStore(bucket, storage.ObjectBlobStoreOptions{Logger: zerolog.Nop()}).Probe(ctx)
		wantStatus(t, err, codes.FailedPrecondition, "")
	})
}

// TestTieredBlobStoreDoesNotServeBlobsItFailedToUpload writes a blob while the object store
// is down: the write fails, and the local tier does not keep (and serve) the blob that the
// bucket does not have. Once the object store is back, the write succeeds.
func TestTieredBlobStoreDoesNotServeBlobsItFailedToUpload(t *testing.T) {
	b := newS3Backend(t, backendConfig{timeout: 2 * time.Second})
	ctx := context.Background()
	tier, local := b.tier(t, 1<<20, time.Minute, 0)
	data, d := randomBlob(t, 4096)
	b.server.Stop()
	err := tier.Put(ctx, d, bytes.NewReader(data))
	wantStatus(t, err, codes.Unavailable, "")
	if n, _ := local.Usage(); n != 0 {
		t.Fatalf("local tier keeps %d blobs after a failed upload", n)
	}
	if r, err := tier.Get(ctx, d, 0, 0); err == nil {
		r.Close()
		t.Fatal("Get serves a blob whose upload failed")
	}
	b.server.Start()
	mustPut(t, tier, data)
	if missing, err := tier.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) != 0 {
		t.Fatalf("FindMissing after the write = %v, %v; want none missing", missing, err)
	}
	if got := readAll(t, tier, d, 0, 0); !bytes.Equal(got, data) {
		t.Fatal("blob reads back wrong")
	}
}

// TestTieredBlobStoreKeepsUploadedBytesOverASameSizeCorruptObject puts wrong bytes of the
// right size under a blob's key behind buildfleet's back, then uploads the blob through
// ByteStream and BatchUpdateBlobs: both are acknowledged (an object of the right size is taken
// as the blob), and reads through this scheduler serve the client's verified bytes from the
// local tier at once rather than NOT_FOUND. A scheduler without them in its local tier finds
// the corrupt object when it reads it from the bucket, deletes it and reports the blob missing;
// the next upload stores the right bytes.
func TestTieredBlobStoreKeepsUploadedBytesOverASameSizeCorruptObject(t *testing.T) {
	forEachBackend(t, backendConfig{timeout: 10 * time.Second}, func(t *testing.T, b *backend) {
		ctx := context.Background()
		tier, _ := b.tier(t, 1<<20, time.Minute, 0)
		c := serveStorage(t, tier, storage.NewObjectActionCache(b.bucket, 0, b.clock, zeroLogger()))
		streamed, ds := randomBlob(t, 3000)
		batched, db := randomBlob(t, 2000)
		b.write(t, "cas/"+ds.Hash, make([]byte, ds.Size))
		b.write(t, "cas/"+db.Hash, make([]byte, db.Size))

		resp, err := writeChunks(ctx, c.bs, digest.WriteResourceName("", ds, digest.Identity), streamed, 0, 1000, true)
		if err != nil || resp.GetCommittedSize() != ds.Size {
			t.Fatalf("ByteStream.Write = %v, %v", resp, err)
		}
		got, _, err := readStream(ctx, c.bs, &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", ds, digest.Identity)})
		if err != nil || !bytes.Equal(got, streamed) {
			t.Fatalf("ByteStream.Read right after the write: %d bytes, %v; want the uploaded blob", len(got), err)
		}

		up, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: db.Proto(), Data: batched}}})
		if err != nil || codes.Code(up.GetResponses()[0].GetStatus().GetCode()) != codes.OK {
			t.Fatalf("BatchUpdateBlobs = %v, %v", up, err)
		}
		rd, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{db.Proto()}})
		if err != nil || codes.Code(rd.GetResponses()[0].GetStatus().GetCode()) != codes.OK || !bytes.Equal(rd.GetResponses()[0].GetData(), batched) {
			t.Fatalf("BatchReadBlobs right after the write = %v, %v; want the uploaded blob", rd.GetResponses(), err)
		}

		// Another scheduler reads the bucket's copy: corrupt, deleted, missing; then stored.
		other, _ := b.tier(t, 1<<20, time.Minute, 0)
		_, err = other.Get(ctx, ds, 0, 0)
		wantStatus(t, err, codes.NotFound, "Blob "+ds.String()+" not found (the stored object was corrupt)")
		if b.read(t, "cas/"+ds.Hash) != nil {
			t.Fatal("the corrupt object is still in the bucket")
		}
		mustPut(t, other, streamed)
		if got := b.read(t, "cas/"+ds.Hash); !bytes.Equal(got, streamed) {
			t.Fatal("the bucket does not hold the blob after the next upload")
		}
	})
}
