package storage_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	gcs "cloud.google.com/go/storage"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/objectstoretest"
	"github.com/buildfleet/buildfleet/storage"
)

const (
	testBucket = "buildfleet-cache"
	testPrefix = "team/ci"
)

// backend is a real object store server with a bucket on it, buildfleet's view of it, and
// raw access to its objects for looking and tampering behind buildfleet's back.
type backend struct {
	name   string
	server *objectstoretest.Server
	bucket storage.ObjectBucket
	clock  *clock.Fake
	// write replaces the object at key (relative to the prefix) unconditionally.
	write func(t testing.TB, key string, data []byte)
	// read returns the object at key, or nil when it is absent.
	read func(t testing.TB, key string) []byte
	// refreshedAt returns the time buildfleet last refreshed the object at key (zero if never).
	refreshedAt func(t testing.TB, key string) time.Time
}

// backendConfig tunes the buckets the tests open.
type backendConfig struct {
	timeout            time.Duration
	multipartThreshold int64
	copyThreshold      int64
}

// newS3Backend starts versitygw with a bucket.
func newS3Backend(t testing.TB, cfg backendConfig) *backend {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	srv := objectstoretest.StartS3(t, testBucket)
	clk := clock.NewFake(time.Now())
	b, err := storage.NewS3Bucket(context.Background(), s3Config(srv, clk, cfg))
	if err != nil {
		t.Fatal(err)
	}
	raw := objectstoretest.S3Client(srv.Endpoint())
	full := func(key string) *string { return aws.String(testPrefix + "/" + key) }
	return &backend{
		name: "s3", server: srv, bucket: b, clock: clk,
		write: func(t testing.TB, key string, data []byte) {
			if _, err := raw.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(testBucket), Key: full(key), Body: bytes.NewReader(data)}); err != nil {
				t.Fatal(err)
			}
		},
		read: func(t testing.TB, key string) []byte {
			out, err := raw.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(testBucket), Key: full(key)})
			if err != nil {
				return nil
			}
			defer out.Body.Close()
			data, _ := io.ReadAll(out.Body)
			return data
		},
		refreshedAt: func(t testing.TB, key string) time.Time {
			out, err := raw.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(testBucket), Key: full(key)})
			if err != nil {
				t.Fatal(err)
			}
			ts, _ := time.Parse(time.RFC3339, out.Metadata["buildfleet-refreshed"])
			return ts
		},
	}
}

func s3Config(srv *objectstoretest.Server, clk clock.Clock, cfg backendConfig) storage.S3BucketConfig {
	return storage.S3BucketConfig{
		Bucket: testBucket, Prefix: testPrefix, Endpoint: srv.Endpoint(), Region: objectstoretest.Region,
		ForcePathStyle: true, Credentials: staticCredentials(), Timeout: cfg.timeout, Clock: clk,
		MultipartThreshold: cfg.multipartThreshold, PartSize: 5 << 20, CopyThreshold: cfg.copyThreshold,
	}
}

// newGCSBackend starts fake-gcs-server with a bucket and points the GCS client at it.
func newGCSBackend(t testing.TB, cfg backendConfig) *backend {
	t.Helper()
	srv := objectstoretest.StartGCS(t, testBucket)
	t.Setenv("STORAGE_EMULATOR_HOST", srv.Addr())
	clk := clock.NewFake(time.Now())
	b, err := storage.NewGCSBucket(context.Background(), storage.GCSBucketConfig{Bucket: testBucket, Prefix: testPrefix, Timeout: cfg.timeout, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	raw, err := gcs.NewClient(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	obj := func(key string) *gcs.ObjectHandle { return raw.Bucket(testBucket).Object(testPrefix + "/" + key) }
	return &backend{
		name: "gcs", server: srv, bucket: b, clock: clk,
		write: func(t testing.TB, key string, data []byte) {
			w := obj(key).NewWriter(context.Background())
			w.Write(data)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		},
		read: func(t testing.TB, key string) []byte {
			r, err := obj(key).NewReader(context.Background())
			if err != nil {
				return nil
			}
			defer r.Close()
			data, _ := io.ReadAll(r)
			return data
		},
		refreshedAt: func(t testing.TB, key string) time.Time {
			attrs, err := obj(key).Attrs(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return attrs.CustomTime
		},
	}
}

// forEachBackend runs f as a subtest against versitygw and against fake-gcs-server.
func forEachBackend(t *testing.T, cfg backendConfig, f func(t *testing.T, b *backend)) {
	t.Run("s3", func(t *testing.T) { f(t, newS3Backend(t, cfg)) })
	t.Run("gcs", func(t *testing.T) { f(t, newGCSBackend(t, cfg)) })
}

// objectStore returns an ObjectBlobStore on b's bucket.
func (b *backend) objectStore(t testing.TB, ttl, refreshAge time.Duration) *storage.ObjectBlobStore {
	return storage.NewObjectBlobStore(b.bucket, storage.ObjectBlobStoreOptions{
		ExistenceCacheTTL: ttl, RefreshAge: refreshAge, SpoolDir: t.TempDir(), Clock: b.clock, Logger: zerolog.Nop(),
	})
}

// tier returns a TieredBlobStore on b's bucket with a fresh local tier of maxLocal bytes, as a
// scheduler replica (or a restarted scheduler with a wiped disk) has.
func (b *backend) tier(t testing.TB, maxLocal int64, ttl, refreshAge time.Duration) (*storage.TieredBlobStore, *storage.DiskBlobStore) {
	local := openStore(t, t.TempDir(), maxLocal)
	t.Cleanup(func() { local.Close() })
	return storage.NewTieredBlobStore(local, b.objectStore(t, ttl, refreshAge), t.TempDir(), zerolog.Nop()), local
}

// staticCredentials are the dummy credentials of the test S3 server: no credential chain, no
// instance metadata.
func staticCredentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(objectstoretest.AccessKey, objectstoretest.SecretKey, "")
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
