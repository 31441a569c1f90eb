package storage_test

import (
	"context"
	"fmt"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// UpdateActionResult refuses every output path that is not a canonical relative path, in every
// field that carries one, and stores nothing (neither the entry nor inline data); a later
// GetActionResult misses. Symlink targets are not paths of the result: relative targets with
// ".." are kept as sent.
func TestUpdateActionResultRefusesNonCanonicalOutputPaths(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{})
	ctx := context.Background()
	result, file, _, tree := outputs(t, e.store)
	inline := []byte("inline data of a refused result")
	inlineDigest := digest.FromBytes(inline)

	fields := map[string]func(p string) *repb.ActionResult{
		"output_files": func(p string) *repb.ActionResult {
			return &repb.ActionResult{OutputFiles: []*repb.OutputFile{
				{Path: "inline", Digest: inlineDigest.Proto(), Contents: inline},
				{Path: p, Digest: file.Proto()}}}
		},
		"output_directories": func(p string) *repb.ActionResult {
			return &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: p, TreeDigest: tree.Proto()}}}
		},
		"output_symlinks": func(p string) *repb.ActionResult {
			return &repb.ActionResult{OutputSymlinks: []*repb.OutputSymlink{{Path: p, Target: "t"}}}
		},
		"output_file_symlinks": func(p string) *repb.ActionResult {
			return &repb.ActionResult{OutputFileSymlinks: []*repb.OutputSymlink{{Path: p, Target: "t"}}}
		},
		"output_directory_symlinks": func(p string) *repb.ActionResult {
			return &repb.ActionResult{OutputDirectorySymlinks: []*repb.OutputSymlink{{Path: p, Target: "t"}}}
		},
	}
	paths := map[string]string{
		"../../../../../../tmp/pwned": "contains '..'",
		"a/../../x":                   "contains '..'",
		"..":                          "contains '..'",
		"a/":                          "trailing slash",
		"a//b":                        "empty segment ('//')",
		"./a":                         "contains '.' segment",
		"a/./b":                       "contains '.' segment",
		"/etc/passwd":                 "absolute path",
	}
	i := 0
	for field, build := range fields {
		for p, why := range paths {
			i++
			action := digest.FromBytes([]byte(fmt.Sprintf("refused action %d", i)))
			_, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: build(p)})
			wantStatus(t, err, codes.InvalidArgument, fmt.Sprintf("Failed to update action result for %s: %s path %q: %s", action, field, p, why))
			_, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action.Proto()})
			wantStatus(t, err, codes.NotFound, "")
		}
	}
	if missing, err := e.store.FindMissing(ctx, []digest.Digest{inlineDigest}); err != nil || len(missing) != 1 {
		t.Fatalf("inline data of refused results was stored: missing = %v, %v", missing, err)
	}
	// Empty paths: refused for files and symlinks; an output directory "" is the working directory.
	for _, field := range []string{"output_files", "output_symlinks", "output_file_symlinks", "output_directory_symlinks"} {
		action := digest.FromBytes([]byte("empty " + field))
		_, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: fields[field]("")})
		wantStatus(t, err, codes.InvalidArgument, fmt.Sprintf("Failed to update action result for %s: %s path \"\": empty path", action, field))
	}

	// Canonical paths, the whole working directory and symlink targets leaving their directory
	// are accepted and served back unchanged.
	result.OutputDirectories = append(result.OutputDirectories, &repb.OutputDirectory{Path: "", TreeDigest: tree.Proto()})
	result.OutputSymlinks = []*repb.OutputSymlink{{Path: "out/link", Target: "../../shared/x"}}
	result.OutputFileSymlinks = []*repb.OutputSymlink{{Path: "out/.hidden/..x", Target: "./y"}}
	action := digest.FromBytes([]byte("accepted action"))
	if _, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: result}); err != nil {
		t.Fatal(err)
	}
	got, err := e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action.Proto()})
	if err != nil || got.GetOutputSymlinks()[0].GetTarget() != "../../shared/x" || len(got.GetOutputDirectories()) != 2 {
		t.Fatalf("GetActionResult = %v, %v", got, err)
	}
}
