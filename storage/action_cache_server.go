package storage

import (
	"bytes"
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/relpath"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// maxInlineBytes bounds the stdout, stderr and output file contents inlined into one
// GetActionResult response, well inside the 4 MiB message size clients accept by default.
const maxInlineBytes = 1 << 20

// actionCacheServer implements the REAPI ActionCache service.
type actionCacheServer struct {
	repb.UnimplementedActionCacheServer
	cas  BlobStore
	ac   ActionCache
	opts ServiceOptions
}

// GetActionResult implements repb.ActionCacheServer. Small stdout, stderr and output files
// are inlined when the client asks for them.
func (a *actionCacheServer) GetActionResult(ctx context.Context, req *repb.GetActionResultRequest) (*repb.ActionResult, error) {
	if err := checkRequest(req.GetInstanceName(), req.GetDigestFunction()); err != nil {
		return nil, err
	}
	d, err := digest.FromProto(req.GetActionDigest())
	if err != nil {
		return nil, err
	}
	result, err := a.ac.Get(ctx, req.GetInstanceName(), d)
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, err
		}
		err = rpcstatus.WrapCode(err, codes.Internal, "Failed to get action result for %s", d)
		logRPCError(a.opts.Logger, a.opts.warnings, err, "GetActionResult failed")
		return nil, err
	}
	result = proto.Clone(result).(*repb.ActionResult)
	budget := int64(maxInlineBytes)
	inline := func(p *repb.Digest) []byte {
		if p == nil || p.GetSizeBytes() > budget || p.GetSizeBytes() == 0 {
			return nil
		}
		// REAPI: inlining MUST be omitted where it would make the answer exceed the message
		// size limit (16 bytes cover the field's tag and the growth of length prefixes).
		if int64(proto.Size(result))+p.GetSizeBytes()+16 > int64(a.opts.maxAnswerBytes()) {
			return nil
		}
		d, err := digest.FromProto(p)
		if err != nil {
			return nil
		}
		data, err := readBlob(ctx, a.cas, d)
		if err != nil {
			// Evicted since the completeness check: the client will find out when it reads.
			return nil
		}
		budget -= d.Size
		return data
	}
	if req.GetInlineStdout() && len(result.StdoutRaw) == 0 {
		result.StdoutRaw = inline(result.GetStdoutDigest())
	}
	if req.GetInlineStderr() && len(result.StderrRaw) == 0 {
		result.StderrRaw = inline(result.GetStderrDigest())
	}
	if len(req.GetInlineOutputFiles()) > 0 {
		wanted := make(map[string]bool, len(req.GetInlineOutputFiles()))
		for _, p := range req.GetInlineOutputFiles() {
			wanted[p] = true
		}
		for _, f := range result.GetOutputFiles() {
			if wanted[f.GetPath()] && len(f.Contents) == 0 {
				f.Contents = inline(f.GetDigest())
			}
		}
	}
	return result, nil
}

// UpdateActionResult implements repb.ActionCacheServer. Inline stdout, stderr and file contents
// are moved into the CAS; every output must then be in the CAS, or the update fails with
// FAILED_PRECONDITION naming the missing blobs.
func (a *actionCacheServer) UpdateActionResult(ctx context.Context, req *repb.UpdateActionResultRequest) (*repb.ActionResult, error) {
	if err := checkRequest(req.GetInstanceName(), req.GetDigestFunction()); err != nil {
		return nil, err
	}
	d, err := digest.FromProto(req.GetActionDigest())
	if err != nil {
		return nil, err
	}
	if req.GetActionResult() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "Failed to update action result for %s: missing action_result", d)
	}
	if a.opts.ActionCacheWritable != nil && !a.opts.ActionCacheWritable(ctx, req.GetInstanceName()) {
		return nil, status.Errorf(codes.PermissionDenied, "Failed to update action result for %s: this client may not write to the action cache of instance %q", d, req.GetInstanceName())
	}
	result := proto.Clone(req.GetActionResult()).(*repb.ActionResult)
	if err := a.internalize(ctx, result); err != nil {
		return nil, rpcstatus.WrapCode(err, codes.InvalidArgument, "Failed to update action result for %s", d)
	}
	if err := a.ac.Put(ctx, req.GetInstanceName(), d, result); err != nil {
		logRPCError(a.opts.Logger, a.opts.warnings, err, "UpdateActionResult failed")
		return nil, err
	}
	return result, nil
}

// internalize validates the paths and digests of result and moves its inline data into the
// CAS, so the stored result refers to blobs only. Every path and digest is checked before any
// inline data is stored.
func (a *actionCacheServer) internalize(ctx context.Context, result *repb.ActionResult) error {
	if err := checkResultPaths(result); err != nil {
		return err
	}
	for _, f := range result.GetOutputFiles() {
		if _, err := digest.FromProto(f.GetDigest()); err != nil {
			return rpcstatus.WrapCode(err, codes.InvalidArgument, "output file %q", f.GetPath())
		}
	}
	for _, dir := range result.GetOutputDirectories() {
		if _, err := digest.FromProto(dir.GetTreeDigest()); err != nil {
			return rpcstatus.WrapCode(err, codes.InvalidArgument, "output directory %q", dir.GetPath())
		}
		if dir.GetRootDirectoryDigest() != nil {
			if _, err := digest.FromProto(dir.GetRootDirectoryDigest()); err != nil {
				return rpcstatus.WrapCode(err, codes.InvalidArgument, "root directory of output directory %q", dir.GetPath())
			}
		}
	}
	for _, f := range result.GetOutputFiles() {
		if len(f.Contents) > 0 {
			if err := a.storeInline(ctx, f.GetDigest(), f.Contents, "output file "+f.GetPath()); err != nil {
				return err
			}
			f.Contents = nil
		}
	}
	var err error
	if result.StdoutDigest, err = a.internalizeLog(ctx, result.GetStdoutDigest(), result.GetStdoutRaw(), "stdout"); err != nil {
		return err
	}
	result.StdoutRaw = nil
	if result.StderrDigest, err = a.internalizeLog(ctx, result.GetStderrDigest(), result.GetStderrRaw(), "stderr"); err != nil {
		return err
	}
	result.StderrRaw = nil
	return nil
}

// internalizeLog validates a stdout or stderr digest and stores its inline bytes.
func (a *actionCacheServer) internalizeLog(ctx context.Context, p *repb.Digest, raw []byte, what string) (*repb.Digest, error) {
	if p != nil {
		if _, err := digest.FromProto(p); err != nil {
			return nil, rpcstatus.WrapCode(err, codes.InvalidArgument, "%s digest", what)
		}
	}
	if len(raw) == 0 {
		return p, nil
	}
	if p == nil {
		p = digest.FromBytes(raw).Proto()
	}
	return p, a.storeInline(ctx, p, raw, what)
}

// storeInline stores inline data after checking it against its digest.
func (a *actionCacheServer) storeInline(ctx context.Context, p *repb.Digest, data []byte, what string) error {
	d, err := digest.FromProto(p)
	if err != nil {
		return err
	}
	if actual := digest.FromBytes(data); actual != d {
		return status.Errorf(codes.InvalidArgument, "inline contents of %s have digest %s, not %s", what, actual, d)
	}
	return a.cas.Put(ctx, d, bytes.NewReader(data))
}

// checkResultPaths refuses output paths that are not canonical relative paths (relpath):
// absolute, empty, with a trailing slash, "//", "." or ".." segments. Only an output directory
// may have the empty path (the whole working directory, as REAPI allows for output_directories).
// Symlink targets are not paths of the result and are not checked: REAPI allows relative
// targets with "..".
func checkResultPaths(result *repb.ActionResult) error {
	check := func(field, p string) error {
		if err := relpath.Check(p); err != nil {
			return status.Errorf(codes.InvalidArgument, "%s path %q: %v", field, p, err)
		}
		return nil
	}
	for _, f := range result.GetOutputFiles() {
		if err := check("output_files", f.GetPath()); err != nil {
			return err
		}
	}
	for _, dir := range result.GetOutputDirectories() {
		if dir.GetPath() == "" {
			continue
		}
		if err := check("output_directories", dir.GetPath()); err != nil {
			return err
		}
	}
	for _, group := range []struct {
		field    string
		symlinks []*repb.OutputSymlink
	}{
		{"output_symlinks", result.GetOutputSymlinks()},
		{"output_file_symlinks", result.GetOutputFileSymlinks()},
		{"output_directory_symlinks", result.GetOutputDirectorySymlinks()},
	} {
		for _, l := range group.symlinks {
			if err := check(group.field, l.GetPath()); err != nil {
				return err
			}
		}
	}
	return nil
}
