package storage

import (
	"net/url"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ObjectStoreURL names a bucket and a key prefix in it: s3://BUCKET/PREFIX or gs://BUCKET/PREFIX.
type ObjectStoreURL struct {
	// Scheme is "s3" or "gs".
	Scheme string
	// Bucket is the bucket's name.
	Bucket string
	// Prefix is the key prefix without leading or trailing slashes; empty for the whole bucket.
	Prefix string
}

// ParseObjectStoreURL parses s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]. Anything else is
// INVALID_ARGUMENT.
func ParseObjectStoreURL(s string) (ObjectStoreURL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return ObjectStoreURL{}, status.Errorf(codes.InvalidArgument, "Invalid object store %q: %v", s, err)
	}
	if u.Scheme != "s3" && u.Scheme != "gs" {
		return ObjectStoreURL{}, status.Errorf(codes.InvalidArgument, "Invalid object store %q: want s3://BUCKET/PREFIX or gs://BUCKET/PREFIX", s)
	}
	if u.Host == "" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" {
		return ObjectStoreURL{}, status.Errorf(codes.InvalidArgument, "Invalid object store %q: want %s://BUCKET/PREFIX", s, u.Scheme)
	}
	prefix := strings.Trim(u.Path, "/")
	for _, part := range strings.Split(prefix, "/") {
		if part == "." || part == ".." || (part == "" && prefix != "") {
			return ObjectStoreURL{}, status.Errorf(codes.InvalidArgument, "Invalid object store %q: prefix %q has an empty, . or .. segment", s, prefix)
		}
	}
	return ObjectStoreURL{Scheme: u.Scheme, Bucket: u.Host, Prefix: prefix}, nil
}

// String returns the URL in its canonical form.
func (u ObjectStoreURL) String() string {
	if u.Prefix == "" {
		return u.Scheme + "://" + u.Bucket
	}
	return u.Scheme + "://" + u.Bucket + "/" + u.Prefix
}

// key returns the full object key of rel under the prefix.
func (u ObjectStoreURL) key(rel string) string {
	if u.Prefix == "" {
		return rel
	}
	return u.Prefix + "/" + rel
}
