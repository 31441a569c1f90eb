package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3GetObjectAPI is the one call of the S3 client that S3Source uses.
type S3GetObjectAPI interface {
	GetObject(ctx context.Context, in *s3.GetObjectInput, opts ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

// S3Source fetches s3://BUCKET/KEY URLs.
type S3Source struct {
	// Client is the S3 client.
	Client S3GetObjectAPI
}

// NewS3Source creates an S3Source with the SDK's default credential chain (environment,
// shared config, the instance role through IMDSv2) and the region from the environment or,
// failing that, the instance's own region. AWS_ENDPOINT_URL_S3 points it at an S3-compatible
// store.
func NewS3Source(ctx context.Context) (Source, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithEC2IMDSRegion())
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	return &S3Source{Client: s3.NewFromConfig(cfg)}, nil
}

// Open gets the object. A missing bucket or key is permanent.
func (s *S3Source) Open(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	bucket, key := u.Host, strings.TrimPrefix(u.Path, "/")
	out, err := s.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		err = fmt.Errorf("s3 GetObject s3://%s/%s: %w", bucket, key, err)
		var noKey *types.NoSuchKey
		var noBucket *types.NoSuchBucket
		if errors.As(err, &noKey) || errors.As(err, &noBucket) {
			return nil, 0, Permanent(err)
		}
		return nil, 0, err
	}
	size := int64(-1)
	if out.ContentLength != nil {
		size = *out.ContentLength
	}
	return out.Body, size, nil
}
