package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/storage"
)

// objectStoreFlags are the flags that put the cache in an S3 or GCS bucket.
type objectStoreFlags struct {
	url            *string
	s3Endpoint     *string
	s3Region       *string
	s3PathStyle    *bool
	timeout        *time.Duration
	existenceTTL   *time.Duration
	refreshAge     *time.Duration
	maxConcurrency *int
}

func registerObjectStoreFlags(fs *flag.FlagSet) *objectStoreFlags {
	return &objectStoreFlags{
		url:            fs.String("object-store", "", "keep the CAS and action cache in a bucket, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, with --storage-dir as a local tier bounded by --max-storage-size (empty: embedded disk only)"),
		s3Endpoint:     fs.String("s3-endpoint", "", "base URL of an S3-compatible server, e.g. http://127.0.0.1:7070 (empty: AWS)"),
		s3Region:       fs.String("s3-region", "", "region of the S3 bucket (empty: the AWS SDK's default chain, else us-east-1)"),
		s3PathStyle:    fs.Bool("s3-force-path-style", false, "address S3 objects as ENDPOINT/BUCKET/KEY (most S3-compatible servers need it)"),
		timeout:        fs.Duration("object-store-timeout", 30*time.Second, "how long one object store request may wait for an answer before it fails with UNAVAILABLE (transfers get 1 s per MiB more)"),
		existenceTTL:   fs.Duration("object-store-existence-ttl", 10*time.Minute, "how long a blob found in the bucket is known to be there without asking again (0: always ask)"),
		refreshAge:     fs.Duration("object-store-refresh-age", 7*24*time.Hour, "a blob or action result used when its object is this old is refreshed in the bucket; keep it well below the bucket's expiration age (0: never)"),
		maxConcurrency: fs.Int("object-store-concurrency", 64, "existence checks one FindMissingBlobs sends to the bucket at once"),
	}
}

// anySet reports whether a flag that only applies with --object-store was given (on the
// command line or through its environment variable).
func (f *objectStoreFlags) anySet() bool {
	return *f.s3Endpoint != "" || *f.s3Region != "" || *f.s3PathStyle
}

// openObjectStorage opens the bucket named by --object-store and returns the tiered CAS (the
// disk store local in front of it) and the action cache in the bucket.
func openObjectStorage(ctx context.Context, f *objectStoreFlags, local *storage.DiskBlobStore, storageDir string, logger zerolog.Logger, reg prometheus.Registerer) (storage.BlobStore, storage.ActionCache, error) {
	u, err := storage.ParseObjectStoreURL(*f.url)
	if err != nil {
		return nil, nil, fmt.Errorf("--object-store: %w", err)
	}
	if *f.maxConcurrency < 1 {
		return nil, nil, fmt.Errorf("--object-store-concurrency=%d: must be at least 1", *f.maxConcurrency)
	}
	if *f.timeout <= 0 {
		return nil, nil, fmt.Errorf("--object-store-timeout=%s: must be more than 0", *f.timeout)
	}
	if *f.existenceTTL < 0 {
		return nil, nil, fmt.Errorf("--object-store-existence-ttl=%s: must not be negative", *f.existenceTTL)
	}
	if *f.refreshAge < 0 {
		return nil, nil, fmt.Errorf("--object-store-refresh-age=%s: must not be negative", *f.refreshAge)
	}
	var bucket storage.ObjectBucket
	switch u.Scheme {
	case "s3":
		bucket, err = storage.NewS3Bucket(ctx, storage.S3BucketConfig{
			Bucket: u.Bucket, Prefix: u.Prefix, Endpoint: *f.s3Endpoint, Region: *f.s3Region,
			ForcePathStyle: *f.s3PathStyle, Timeout: *f.timeout,
		})
	case "gs":
		if *f.s3Endpoint != "" || *f.s3Region != "" || *f.s3PathStyle {
			return nil, nil, fmt.Errorf("--s3-endpoint, --s3-region and --s3-force-path-style apply to s3:// object stores only")
		}
		bucket, err = storage.NewGCSBucket(ctx, storage.GCSBucketConfig{Bucket: u.Bucket, Prefix: u.Prefix, Timeout: *f.timeout})
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--object-store=%s: %w", u, err)
	}
	spool := filepath.Join(storageDir, "spool")
	if err := os.MkdirAll(spool, 0o755); err != nil {
		return nil, nil, fmt.Errorf("creating spool directory: %w", err)
	}
	remote := storage.NewObjectBlobStore(bucket, storage.ObjectBlobStoreOptions{
		ExistenceCacheTTL: *f.existenceTTL,
		RefreshAge:        *f.refreshAge,
		Concurrency:       *f.maxConcurrency,
		SpoolDir:          spool,
		Clock:             clock.System,
		Logger:            logger,
		Registerer:        reg,
	})
	pctx, cancel := context.WithTimeout(ctx, *f.timeout+time.Second)
	defer cancel()
	if err := remote.Probe(pctx); status.Code(err) == codes.Unavailable {
		// It may come back; calls that need it fail with UNAVAILABLE meanwhile. Everything
		// else (a missing bucket, absent or refused credentials) is a configuration error.
		logger.Warn().Err(err).Str("object_store", u.String()).Msg("Object store unreachable at start-up")
	} else if err != nil {
		return nil, nil, fmt.Errorf("--object-store=%s: %w", u, err)
	}
	cas := storage.NewTieredBlobStore(local, remote, spool, logger)
	ac := storage.NewObjectActionCache(bucket, *f.refreshAge, clock.System, logger)
	logger.Info().Str("object_store", u.String()).Msg("Storing the cache in a bucket; the storage directory is its local tier")
	return cas, ac, nil
}
