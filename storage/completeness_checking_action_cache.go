package storage

import (
	"context"
	"fmt"
	"io"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/relpath"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// maxTreeSize bounds the size of an output directory Tree blob read into memory to check it.
const maxTreeSize = 64 << 20

// completenessCheckingActionCache is an ActionCache decorator that never returns a result whose
// outputs are not all in the CAS, and never stores one.
type completenessCheckingActionCache struct {
	ac  ActionCache
	cas BlobStore
}

// NewCompletenessCheckingActionCache wraps ac so that Get reports NOT_FOUND for a result any of
// whose outputs (output files, stdout and stderr, output directory Trees and every file in
// them) is missing from cas, and Put refuses such a result with FAILED_PRECONDITION carrying a
// PreconditionFailure of type MISSING per missing blob. A Tree whose entries are not single
// path segments ("..", "a/b", "" ...) is refused by Put with INVALID_ARGUMENT and is a miss
// for Get. Checking a hit also refreshes its
// outputs in cas, so a result in use keeps its outputs from eviction.
func NewCompletenessCheckingActionCache(ac ActionCache, cas BlobStore) ActionCache {
	return &completenessCheckingActionCache{ac: ac, cas: cas}
}

// Get implements ActionCache.
func (c *completenessCheckingActionCache) Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error) {
	result, err := c.ac.Get(ctx, instance, d)
	if err != nil {
		return nil, err
	}
	missing, err := c.missingOutputs(ctx, result)
	if err != nil {
		if code := status.Code(err); code == codes.NotFound || code == codes.InvalidArgument {
			return nil, status.Errorf(codes.NotFound, "Action result for %s not found: %s", d, status.Convert(err).Message())
		}
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to check outputs of action result for %s", d)
	}
	if len(missing) > 0 {
		return nil, status.Errorf(codes.NotFound, "Action result for %s not found: output %s is no longer in the CAS", d, missing[0])
	}
	return result, nil
}

// Put implements ActionCache.
func (c *completenessCheckingActionCache) Put(ctx context.Context, instance string, d digest.Digest, result *repb.ActionResult) error {
	missing, err := c.missingOutputs(ctx, result)
	if err != nil {
		return rpcstatus.WrapCode(err, codes.Internal, "Failed to check outputs of action result for %s", d)
	}
	if len(missing) > 0 {
		return rpcstatus.Missing(fmt.Sprintf("Failed to store action result for %s: output blob %s is missing from the CAS", d, missing[0]), missing)
	}
	return c.ac.Put(ctx, instance, d, result)
}

// missingOutputs returns the outputs of result that are missing from the CAS. A Tree that is
// present but unreadable is an INVALID_ARGUMENT error.
func (c *completenessCheckingActionCache) missingOutputs(ctx context.Context, result *repb.ActionResult) ([]digest.Digest, error) {
	var ds, trees []digest.Digest
	add := func(p *repb.Digest, what string) (digest.Digest, error) {
		d, err := digest.FromProto(p)
		if err != nil {
			return d, rpcstatus.WrapCode(err, codes.InvalidArgument, "Invalid digest of %s", what)
		}
		ds = append(ds, d)
		return d, nil
	}
	for _, f := range result.GetOutputFiles() {
		if _, err := add(f.GetDigest(), "output file "+f.GetPath()); err != nil {
			return nil, err
		}
	}
	for _, dir := range result.GetOutputDirectories() {
		d, err := add(dir.GetTreeDigest(), "output directory "+dir.GetPath())
		if err != nil {
			return nil, err
		}
		trees = append(trees, d)
	}
	if result.GetStdoutDigest() != nil {
		if _, err := add(result.GetStdoutDigest(), "stdout"); err != nil {
			return nil, err
		}
	}
	if result.GetStderrDigest() != nil {
		if _, err := add(result.GetStderrDigest(), "stderr"); err != nil {
			return nil, err
		}
	}
	missing, err := c.cas.FindMissing(ctx, ds)
	if err != nil || len(missing) > 0 {
		return missing, err
	}
	// Every Tree is present: the files inside must be too.
	var files []digest.Digest
	seen := make(map[digest.Digest]bool)
	for _, t := range trees {
		if seen[t] {
			continue
		}
		seen[t] = true
		tree, err := readTree(ctx, c.cas, t)
		if err != nil {
			return nil, err
		}
		for _, dir := range append([]*repb.Directory{tree.GetRoot()}, tree.GetChildren()...) {
			if err := checkTreeNames(t, dir); err != nil {
				return nil, err
			}
			for _, f := range dir.GetFiles() {
				d, err := digest.FromProto(f.GetDigest())
				if err != nil {
					return nil, rpcstatus.WrapCode(err, codes.InvalidArgument, "Invalid digest of file %s in output tree %s", f.GetName(), t)
				}
				files = append(files, d)
			}
		}
	}
	if len(files) == 0 {
		return nil, nil
	}
	return c.cas.FindMissing(ctx, files)
}

// checkTreeNames refuses a Directory of the output Tree t whose entries are not single path
// segments (relpath.CheckName): a client materialising "out/../../x" from a cached Tree would
// write outside its output directory. The error is INVALID_ARGUMENT naming the entry.
func checkTreeNames(t digest.Digest, dir *repb.Directory) error {
	check := func(kind, name string) error {
		if err := relpath.CheckName(name); err != nil {
			return status.Errorf(codes.InvalidArgument, "Output tree %s has a %s named %q: %v", t, kind, name, err)
		}
		return nil
	}
	for _, f := range dir.GetFiles() {
		if err := check("file", f.GetName()); err != nil {
			return err
		}
	}
	for _, d := range dir.GetDirectories() {
		if err := check("directory", d.GetName()); err != nil {
			return err
		}
	}
	for _, l := range dir.GetSymlinks() {
		if err := check("symlink", l.GetName()); err != nil {
			return err
		}
	}
	return nil
}

// readTree reads and parses the Tree blob t.
func readTree(ctx context.Context, cas BlobStore, t digest.Digest) (*repb.Tree, error) {
	if t.Size > maxTreeSize {
		return nil, status.Errorf(codes.InvalidArgument, "Output tree %s is larger than %d bytes", t, maxTreeSize)
	}
	r, err := cas.Get(ctx, t, 0, 0)
	if err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to read output tree %s", t)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to read output tree %s", t)
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(b, tree); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Output tree %s is not a valid Tree message: %v", t, err)
	}
	return tree, nil
}
