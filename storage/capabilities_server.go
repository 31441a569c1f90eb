package storage

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/bazelbuild/remote-apis/build/bazel/semver"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// capabilitiesServer answers GetCapabilities. Bazel and Pants refuse a server whose low (or
// deprecated) API version is above 2.0; 2.3 covers Command.output_paths.
type capabilitiesServer struct {
	repb.UnimplementedCapabilitiesServer
	opts ServiceOptions
}

// GetCapabilities implements repb.CapabilitiesServer.
func (c *capabilitiesServer) GetCapabilities(ctx context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	if err := digest.CheckInstanceName(req.GetInstanceName()); err != nil {
		return nil, err
	}
	sha256 := []repb.DigestFunction_Value{repb.DigestFunction_SHA256}
	zstd := []repb.Compressor_Value{repb.Compressor_ZSTD}
	return &repb.ServerCapabilities{
		CacheCapabilities: &repb.CacheCapabilities{
			DigestFunctions:               sha256,
			ActionCacheUpdateCapabilities: &repb.ActionCacheUpdateCapabilities{UpdateEnabled: c.mayWrite(ctx, req.GetInstanceName())},
			MaxBatchTotalSizeBytes:        c.opts.MaxBatchTotalSizeBytes,
			MaxCasBlobSizeBytes:           c.opts.MaxBlobSizeBytes,
			// Workers refuse input symlinks with absolute targets unless told otherwise.
			SymlinkAbsolutePathStrategy:     repb.SymlinkAbsolutePathStrategy_DISALLOWED,
			SupportedCompressors:            zstd,
			SupportedBatchUpdateCompressors: zstd,
		},
		ExecutionCapabilities: &repb.ExecutionCapabilities{
			DigestFunction:  repb.DigestFunction_SHA256,
			DigestFunctions: sha256,
			ExecEnabled:     c.opts.ExecutionEnabled,
		},
		DeprecatedApiVersion: &semver.SemVer{Major: 2, Minor: 0},
		LowApiVersion:        &semver.SemVer{Major: 2, Minor: 0},
		HighApiVersion:       &semver.SemVer{Major: 2, Minor: 3},
	}, nil
}

// mayWrite tells the caller whether it may update the action cache of instance, as the
// ActionCacheWritable hook decides (everyone when there is none).
func (c *capabilitiesServer) mayWrite(ctx context.Context, instance string) bool {
	return c.opts.ActionCacheWritable == nil || c.opts.ActionCacheWritable(ctx, instance)
}
