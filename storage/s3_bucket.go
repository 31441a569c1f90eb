package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// defaultS3MultipartThreshold is the object size from which S3Bucket.Create uploads in parts.
const defaultS3MultipartThreshold = 64 << 20

// defaultS3PartSize is the size of each part of a multipart upload.
const defaultS3PartSize = 16 << 20

// maxS3CopySize is the largest object S3 copies in one CopyObject call; larger objects are
// refreshed by a multipart copy in parts of at most this size.
const maxS3CopySize = 5 << 30

// S3BucketConfig configures an S3Bucket.
type S3BucketConfig struct {
	// Bucket and Prefix name where the objects live.
	Bucket, Prefix string
	// Endpoint is the base URL of an S3-compatible server (e.g. http://127.0.0.1:7070);
	// empty for AWS's own endpoints.
	Endpoint string
	// Region is the bucket's region; empty takes it from the SDK's default chain
	// (AWS_REGION, the shared config files), else us-east-1.
	Region string
	// ForcePathStyle addresses objects as ENDPOINT/BUCKET/KEY instead of BUCKET.ENDPOINT/KEY,
	// as most S3-compatible servers want.
	ForcePathStyle bool
	// Credentials, when not nil, replace the SDK's default credential chain (environment,
	// shared files, web identity, container and instance roles).
	Credentials aws.CredentialsProvider
	// Timeout bounds how long one request waits for the server (plus transfer time at 1 MiB/s
	// for requests that carry data); 0 means no bound.
	Timeout time.Duration
	// MultipartThreshold is the object size from which uploads go in parts of PartSize
	// (64 MiB and 16 MiB when zero).
	MultipartThreshold, PartSize int64
	// CopyThreshold is the object size from which Refresh copies in parts of this size
	// (5 GiB, the largest single CopyObject, when zero).
	CopyThreshold int64
	// Clock stamps refreshed objects (clock.System when nil).
	Clock clock.Clock
}

// S3Bucket is an ObjectBucket on Amazon S3 or an S3-compatible server, through aws-sdk-go-v2.
// Create is a PutObject (or, from MultipartThreshold on, a multipart upload by the SDK's
// transfer manager) with If-None-Match: *, so the server keeps the first object written to a
// key. Refresh copies an object onto itself (CopyObject with replaced metadata, a multipart
// copy above CopyThreshold), which restarts the age that an expiration lifecycle rule counts.
type S3Bucket struct {
	client   *s3.Client
	uploader *transfermanager.Client
	creds    aws.CredentialsProvider
	loc      ObjectStoreURL
	cfg      S3BucketConfig
}

// NewS3Bucket returns an S3Bucket for cfg, taking credentials from the SDK's default chain
// unless cfg.Credentials is set. It sends no request.
func NewS3Bucket(ctx context.Context, cfg S3BucketConfig) (*S3Bucket, error) {
	if cfg.Bucket == "" {
		return nil, status.Error(codes.InvalidArgument, "S3 bucket name is empty")
	}
	if cfg.Endpoint != "" {
		if u, err := url.Parse(cfg.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, status.Errorf(codes.InvalidArgument, "S3 endpoint %q is not an http:// or https:// URL with a host, e.g. http://127.0.0.1:7070", cfg.Endpoint)
		}
	}
	if cfg.MultipartThreshold <= 0 {
		cfg.MultipartThreshold = defaultS3MultipartThreshold
	}
	if cfg.PartSize <= 0 {
		cfg.PartSize = defaultS3PartSize
	}
	if cfg.CopyThreshold <= 0 || cfg.CopyThreshold > maxS3CopySize {
		cfg.CopyThreshold = maxS3CopySize
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Failed to load AWS configuration: %v", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
		// Checksums only where the API requires them: S3-compatible servers differ in which
		// of the newer default checksums they accept. Our content is verified by SHA-256.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	uploader := transfermanager.New(client, func(o *transfermanager.Options) {
		o.MultipartUploadThreshold = cfg.MultipartThreshold
		o.PartSizeBytes = cfg.PartSize
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.FailTimeout = 30 * time.Second
	})
	return &S3Bucket{
		client:   client,
		creds:    awsCfg.Credentials,
		uploader: uploader,
		loc:      ObjectStoreURL{Scheme: "s3", Bucket: cfg.Bucket, Prefix: strings.Trim(cfg.Prefix, "/")},
		cfg:      cfg,
	}, nil
}

// String implements ObjectBucket.
func (b *S3Bucket) String() string { return b.loc.String() }

// Probe implements ObjectBucket: it resolves the credentials (UNAUTHENTICATED when the chain
// finds none), then reads a key that never exists, which S3 answers with NoSuchKey when the
// bucket is there and the credentials may read it.
func (b *S3Bucket) Probe(ctx context.Context) error {
	if b.creds == nil {
		return status.Error(codes.Unauthenticated, "no AWS credentials configured")
	}
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	_, err := b.creds.Retrieve(rctx)
	cancel()
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return status.FromContextError(ctxErr).Err()
		}
		return status.Errorf(codes.Unauthenticated, "no AWS credentials: the SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, shared config and credentials files, web identity, container or instance role) found none: %v", err)
	}
	r, _, err := b.Get(ctx, probeKey, 0, 0)
	if err == nil {
		r.Close()
		return nil
	}
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

// Stat implements ObjectBucket.
func (b *S3Bucket) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	defer cancel()
	out, err := b.client.HeadObject(rctx, &s3.HeadObjectInput{Bucket: &b.loc.Bucket, Key: aws.String(b.loc.key(key))})
	if err != nil {
		return ObjectInfo{}, requestError(ctx, err, classifyS3Error, fmt.Sprintf("Failed to stat %s/%s", b, key))
	}
	return ObjectInfo{Size: aws.ToInt64(out.ContentLength), Time: aws.ToTime(out.LastModified)}, nil
}

// Get implements ObjectBucket.
func (b *S3Bucket) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error) {
	in := &s3.GetObjectInput{Bucket: &b.loc.Bucket, Key: aws.String(b.loc.key(key))}
	if offset > 0 || length > 0 {
		r := fmt.Sprintf("bytes=%d-", offset)
		if length > 0 {
			r += fmt.Sprint(offset + length - 1)
		}
		in.Range = aws.String(r)
	}
	r, info, err := openWithTimeout(ctx, b.cfg.Timeout, func(ctx context.Context) (io.ReadCloser, ObjectInfo, error) {
		out, err := b.client.GetObject(ctx, in)
		if err != nil {
			return nil, ObjectInfo{}, err
		}
		info := ObjectInfo{Size: aws.ToInt64(out.ContentLength), Time: aws.ToTime(out.LastModified)}
		if cr := aws.ToString(out.ContentRange); cr != "" {
			// "bytes START-END/TOTAL": the object's size is TOTAL.
			var start, end, total int64
			if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &start, &end, &total); err == nil {
				info.Size = total
			}
		}
		return out.Body, info, nil
	})
	if err != nil {
		return nil, ObjectInfo{}, requestError(ctx, err, classifyS3Error, fmt.Sprintf("Failed to read %s/%s", b, key))
	}
	return r, info, nil
}

// Create implements ObjectBucket.
func (b *S3Bucket) Create(ctx context.Context, key string, r io.Reader, size int64) (bool, error) {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, size)
	defer cancel()
	var err error
	if size >= b.cfg.MultipartThreshold {
		_, err = b.uploader.UploadObject(rctx, &transfermanager.UploadObjectInput{
			Bucket: &b.loc.Bucket, Key: aws.String(b.loc.key(key)), Body: r, IfNoneMatch: aws.String("*"),
		})
	} else {
		_, err = b.client.PutObject(rctx, &s3.PutObjectInput{
			Bucket: &b.loc.Bucket, Key: aws.String(b.loc.key(key)), Body: r,
			ContentLength: aws.Int64(size), IfNoneMatch: aws.String("*"),
		})
	}
	if err == nil {
		return true, nil
	}
	switch s3HTTPStatus(err) {
	case http.StatusPreconditionFailed:
		return false, nil // Written before: the first object stays.
	case http.StatusConflict:
		// A concurrent conditional write of the same key is in progress. Ours is not needed
		// if that one landed; otherwise the caller retries.
		if _, serr := b.Stat(ctx, key); serr == nil {
			return false, nil
		}
	}
	return false, requestError(ctx, err, classifyS3Error, fmt.Sprintf("Failed to write %s/%s", b, key))
}

// Replace implements ObjectBucket.
func (b *S3Bucket) Replace(ctx context.Context, key string, data []byte) error {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, int64(len(data)))
	defer cancel()
	_, err := b.client.PutObject(rctx, &s3.PutObjectInput{
		Bucket: &b.loc.Bucket, Key: aws.String(b.loc.key(key)), Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	})
	return requestError(ctx, err, classifyS3Error, fmt.Sprintf("Failed to write %s/%s", b, key))
}

// Refresh implements ObjectBucket.
func (b *S3Bucket) Refresh(ctx context.Context, key string) error {
	info, err := b.Stat(ctx, key)
	if err != nil {
		return err
	}
	full := b.loc.key(key)
	source := url.PathEscape(b.loc.Bucket) + "/" + escapeS3Key(full)
	meta := map[string]string{"buildfleet-refreshed": b.cfg.Clock.Now().UTC().Format(time.RFC3339)}
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, info.Size)
	defer cancel()
	if info.Size <= b.cfg.CopyThreshold {
		_, err = b.client.CopyObject(rctx, &s3.CopyObjectInput{
			Bucket: &b.loc.Bucket, Key: aws.String(full), CopySource: aws.String(source),
			MetadataDirective: types.MetadataDirectiveReplace, Metadata: meta,
		})
	} else {
		err = b.copyInParts(rctx, full, source, info.Size, meta)
	}
	return requestError(ctx, err, classifyS3Error, fmt.Sprintf("Failed to refresh %s/%s", b, key))
}

// copyInParts copies an object larger than CopyThreshold onto itself with a multipart copy.
func (b *S3Bucket) copyInParts(ctx context.Context, key, source string, size int64, meta map[string]string) error {
	up, err := b.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.loc.Bucket, Key: &key, Metadata: meta})
	if err != nil {
		return err
	}
	part := b.cfg.CopyThreshold
	var parts []types.CompletedPart
	for n, off := int32(1), int64(0); off < size; n, off = n+1, off+part {
		end := min(off+part, size) - 1
		out, err := b.client.UploadPartCopy(ctx, &s3.UploadPartCopyInput{
			Bucket: &b.loc.Bucket, Key: &key, UploadId: up.UploadId, PartNumber: aws.Int32(n),
			CopySource: &source, CopySourceRange: aws.String(fmt.Sprintf("bytes=%d-%d", off, end)),
		})
		if err != nil {
			b.client.AbortMultipartUpload(context.WithoutCancel(ctx), &s3.AbortMultipartUploadInput{Bucket: &b.loc.Bucket, Key: &key, UploadId: up.UploadId})
			return err
		}
		parts = append(parts, types.CompletedPart{ETag: out.CopyPartResult.ETag, PartNumber: aws.Int32(n)})
	}
	_, err = b.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &b.loc.Bucket, Key: &key, UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	return err
}

// Delete implements ObjectBucket.
func (b *S3Bucket) Delete(ctx context.Context, key string) error {
	rctx, cancel := requestContext(ctx, b.cfg.Timeout, 0)
	defer cancel()
	_, err := b.client.DeleteObject(rctx, &s3.DeleteObjectInput{Bucket: &b.loc.Bucket, Key: aws.String(b.loc.key(key))})
	if err != nil && status.Code(requestError(ctx, err, classifyS3Error, "")) == codes.NotFound {
		return nil
	}
	return requestError(ctx, err, classifyS3Error, fmt.Sprintf("Failed to delete %s/%s", b, key))
}

// escapeS3Key escapes each segment of an object key for a CopySource header.
func escapeS3Key(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// s3HTTPStatus returns the HTTP status of a failed S3 call, or 0.
func s3HTTPStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// classifyS3Error maps S3's answers to gRPC codes. Only NoSuchKey (and HEAD's body-less 404,
// NotFound) mean the object is absent; other 404s name something else that is missing, such
// as the bucket (NoSuchBucket: FAILED_PRECONDITION) or the access key (versitygw's
// XAdminUserNotFound: PERMISSION_DENIED), and are errors.
func classifyS3Error(err error) (codes.Code, bool) {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return codes.NotFound, true
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return codes.NotFound, true
		case "NoSuchBucket":
			return codes.FailedPrecondition, true
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
			"XAdminUserNotFound", "InvalidClientTokenId", "AuthorizationHeaderMalformed":
			return codes.PermissionDenied, true
		}
	}
	switch st := s3HTTPStatus(err); {
	case st == http.StatusNotFound:
		return codes.FailedPrecondition, true
	case st == http.StatusForbidden || st == http.StatusUnauthorized:
		return codes.PermissionDenied, true
	case st == http.StatusRequestedRangeNotSatisfiable:
		return codes.OutOfRange, true
	case st >= 400 && st < 500 && st != http.StatusTooManyRequests && st != http.StatusRequestTimeout:
		return codes.Internal, true
	}
	return codes.Unavailable, false
}
