package storage_test

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/storage"
)

func TestParseObjectStoreURL(t *testing.T) {
	for _, c := range []struct {
		in   string
		want storage.ObjectStoreURL
	}{
		{"s3://bucket", storage.ObjectStoreURL{Scheme: "s3", Bucket: "bucket"}},
		{"s3://bucket/", storage.ObjectStoreURL{Scheme: "s3", Bucket: "bucket"}},
		{"s3://my-bucket/team/ci/", storage.ObjectStoreURL{Scheme: "s3", Bucket: "my-bucket", Prefix: "team/ci"}},
		{"gs://b.example.com/cache", storage.ObjectStoreURL{Scheme: "gs", Bucket: "b.example.com", Prefix: "cache"}},
	} {
		got, err := storage.ParseObjectStoreURL(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseObjectStoreURL(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "bucket/prefix", "http://bucket/x", "s3:///prefix", "s3://bucket/a//b", "s3://bucket/../x",
		"s3://user@bucket/x", "s3://bucket:9000/x", "gs://bucket/x?y=1", "file:///tmp"} {
		_, err := storage.ParseObjectStoreURL(bad)
		wantStatus(t, err, codes.InvalidArgument, "")
	}
	if s := (storage.ObjectStoreURL{Scheme: "gs", Bucket: "b", Prefix: "p/q"}).String(); s != "gs://b/p/q" {
		t.Errorf("String() = %q", s)
	}
}
