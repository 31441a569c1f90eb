package bootstrap_test

import (
	"context"
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/buildfleet/buildfleet/bootstrap"
)

type fakeS3 struct {
	objects map[string]string // "bucket/key" → content
	err     error
}

func (f *fakeS3) GetObject(_ context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	if f.err != nil {
		return nil, f.err
	}
	body, ok := f.objects[aws.ToString(in.Bucket)+"/"+aws.ToString(in.Key)]
	if !ok {
		return nil, &types.NoSuchKey{Message: aws.String("no such key")}
	}
	return &s3.GetObjectOutput{Body: io.NopCloser(strings.NewReader(body)), ContentLength: aws.Int64(int64(len(body)))}, nil
}

type fakeGCS struct{ objects map[string]string }

func (f *fakeGCS) NewReader(_ context.Context, bucket, object string) (io.ReadCloser, int64, error) {
	body, ok := f.objects[bucket+"/"+object]
	if !ok {
		return nil, 0, storage.ErrObjectNotExist
	}
	return io.NopCloser(strings.NewReader(body)), int64(len(body)), nil
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func readAll(t *testing.T, src bootstrap.Source, u string) (string, int64, error) {
	rc, size, err := src.Open(context.Background(), mustURL(t, u))
	if err != nil {
		return "", 0, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), size, err
}

func TestS3Source(t *testing.T) {
	src := &bootstrap.S3Source{Client: &fakeS3{objects: map[string]string{"artifacts/releases/v1/worker": "bin"}}}
	body, size, err := readAll(t, src, "s3://artifacts/releases/v1/worker")
	if err != nil || body != "bin" || size != 3 {
		t.Fatalf("got %q %d %v", body, size, err)
	}
	_, _, err = readAll(t, src, "s3://artifacts/missing")
	if !bootstrap.IsPermanent(err) || !strings.Contains(err.Error(), "s3://artifacts/missing") {
		t.Fatalf("missing key: got %v, want permanent naming the URL", err)
	}
	throttled := &bootstrap.S3Source{Client: &fakeS3{err: errors.New("SlowDown")}}
	if _, _, err := readAll(t, throttled, "s3://artifacts/x"); err == nil || bootstrap.IsPermanent(err) {
		t.Fatalf("throttling: got %v, want a retryable error", err)
	}
}

func TestGCSSource(t *testing.T) {
	src := &bootstrap.GCSSource{Client: &fakeGCS{objects: map[string]string{"artifacts/worker/v1": "bin!"}}}
	body, size, err := readAll(t, src, "gs://artifacts/worker/v1")
	if err != nil || body != "bin!" || size != 4 {
		t.Fatalf("got %q %d %v", body, size, err)
	}
	if _, _, err := readAll(t, src, "gs://artifacts/nope"); !bootstrap.IsPermanent(err) {
		t.Fatalf("missing object: got %v, want permanent", err)
	}
}

func TestSchemeSourceCreatesCloudClientsLazily(t *testing.T) {
	made := 0
	s := &bootstrap.SchemeSource{
		HTTP: &bootstrap.HTTPSource{},
		NewS3: func(context.Context) (bootstrap.Source, error) {
			made++
			return &bootstrap.S3Source{Client: &fakeS3{objects: map[string]string{"b/k": "x"}}}, nil
		},
	}
	for i := 0; i < 2; i++ {
		if body, _, err := readAll(t, s, "s3://b/k"); err != nil || body != "x" {
			t.Fatalf("got %q %v", body, err)
		}
	}
	if made != 1 {
		t.Fatalf("S3 client made %d times, want once", made)
	}
	if _, _, err := readAll(t, s, "gs://b/k"); !bootstrap.IsPermanent(err) {
		t.Fatalf("gs without a client: got %v, want permanent", err)
	}
}

func TestParseWorkerURL(t *testing.T) {
	for _, tc := range []struct {
		url      string
		insecure bool
		ok       bool
	}{
		{"https://example.com/worker", false, true},
		{"http://127.0.0.1:8080/worker", false, true},
		{"http://[::1]:8080/worker", false, true},
		{"http://localhost/worker", false, true},
		{"http://example.com/worker", false, false},
		{"http://example.com/worker", true, true},
		{"s3://bucket/key", false, true},
		{"s3://bucket", false, false},
		{"gs://bucket/object", false, true},
		{"ftp://example.com/worker", true, false},
		{"https:///worker", false, false},
	} {
		_, err := bootstrap.ParseWorkerURL(tc.url, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("ParseWorkerURL(%q, %v) = %v, want ok=%v", tc.url, tc.insecure, err, tc.ok)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	base := bootstrap.Config{WorkerURL: "https://x/w", WorkerSHA256: strings.Repeat("ab", 32), Scheduler: "grpc://s:1"}.WithDefaults()
	for _, tc := range []struct {
		name   string
		mutate func(*bootstrap.Config)
		want   string
	}{
		{"ok", func(*bootstrap.Config) {}, ""},
		{"no url", func(c *bootstrap.Config) { c.WorkerURL = "" }, "--worker-url, or --release-url with --release-version, is required"},
		{"release", func(c *bootstrap.Config) {
			c.WorkerURL, c.ReleaseURL, c.ReleaseVersion, c.ReleaseSHA256SUMSSHA256 = "", "https://r/dl", "v1.2.3", strings.Repeat("cd", 32)
		}, ""},
		{"release and worker url", func(c *bootstrap.Config) { c.ReleaseURL, c.ReleaseVersion = "https://r/dl", "v1" }, "alternatives"},
		{"release without version", func(c *bootstrap.Config) { c.WorkerURL, c.ReleaseURL = "", "https://r/dl" }, "needs both"},
		{"release version with a slash", func(c *bootstrap.Config) { c.WorkerURL, c.ReleaseURL, c.ReleaseVersion = "", "https://r/dl", "../v1" }, "--release-version"},
		{"plain http release", func(c *bootstrap.Config) { c.WorkerURL, c.ReleaseURL, c.ReleaseVersion = "", "http://r/dl", "v1" }, "--release-url"},
		{"short release pin", func(c *bootstrap.Config) {
			c.WorkerURL, c.ReleaseURL, c.ReleaseVersion, c.ReleaseSHA256SUMSSHA256 = "", "https://r/dl", "v1", "abc"
		}, "--release-sha256sums-sha256"},
		{"release url with a query", func(c *bootstrap.Config) {
			c.WorkerURL, c.ReleaseURL, c.ReleaseVersion = "", "https://r/dl?token=x", "v1"
		}, "must not have a query"},
		{"release url with an empty query", func(c *bootstrap.Config) { c.WorkerURL, c.ReleaseURL, c.ReleaseVersion = "", "https://r/dl?", "v1" }, "must not have a query"},
		{"release url with a fragment", func(c *bootstrap.Config) { c.WorkerURL, c.ReleaseURL, c.ReleaseVersion = "", "s3://b/dl#x", "v1" }, "fragment"},
		{"negative download timeout", func(c *bootstrap.Config) { c.DownloadTimeout = -time.Second }, "--download-timeout"},
		{"short sha", func(c *bootstrap.Config) { c.WorkerSHA256 = "abc" }, "is not a sha256"},
		{"relative path", func(c *bootstrap.Config) { c.InstallPath = "worker" }, "must be absolute"},
		{"no scheduler for unit", func(c *bootstrap.Config) { c.Scheduler = "" }, "--scheduler is required"},
		{"no scheduler, exec", func(c *bootstrap.Config) { c.Scheduler, c.Exec = "", true }, ""},
		{"bad scheduler", func(c *bootstrap.Config) { c.Scheduler = "http://s:1" }, "grpc://HOST:PORT"},
		{"newline", func(c *bootstrap.Config) { c.AuthTokenFile = "/a\nb" }, "newlines"},
	} {
		c := base
		tc.mutate(&c)
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}
