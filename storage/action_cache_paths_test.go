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

// The names inside an output directory's Tree are REAPI Directory entries: "Every child in the
// directory must have a path of exactly one segment". UpdateActionResult refuses a Tree with
// any other name, for files, directories and symlinks, in the root and in children, and stores
// nothing: a client building "out/../../evil" from a cached Tree would write outside its
// output directory.
func TestUpdateActionResultRefusesTreesWithUnsafeNames(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{})
	ctx := context.Background()
	content := []byte("hello")
	fd := digest.FromBytes(content)
	storeBlobs(t, e.store, content)
	empty := &repb.Directory{}
	_, emptyDigest, _ := digest.FromMessage(empty)
	names := map[string]string{
		"../../evil": "not a single path segment",
		"a/b":        "not a single path segment",
		".":          "contains '.' segment",
		"..":         "contains '..'",
		"":           "empty path",
		"n\x00ul":    "contains NUL",
	}
	nodes := map[string]func(name string) *repb.Directory{
		"file": func(name string) *repb.Directory {
			return &repb.Directory{Files: []*repb.FileNode{{Name: name, Digest: fd.Proto()}}}
		},
		"directory": func(name string) *repb.Directory {
			return &repb.Directory{Directories: []*repb.DirectoryNode{{Name: name, Digest: emptyDigest.Proto()}}}
		},
		"symlink": func(name string) *repb.Directory {
			return &repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: name, Target: "t"}}}
		},
	}
	i := 0
	for kind, node := range nodes {
		for name, why := range names {
			for _, inChild := range []bool{false, true} {
				i++
				tree := &repb.Tree{Root: node(name), Children: []*repb.Directory{empty}}
				if inChild {
					child := node(name)
					_, cd, _ := digest.FromMessage(child)
					tree = &repb.Tree{Root: &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: cd.Proto()}}}, Children: []*repb.Directory{child, empty}}
				}
				tb, td, err := digest.FromMessage(tree)
				if err != nil {
					t.Fatal(err)
				}
				storeBlobs(t, e.store, tb)
				action := digest.FromBytes([]byte(fmt.Sprintf("tree action %d", i)))
				_, err = e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: &repb.ActionResult{
					OutputDirectories: []*repb.OutputDirectory{{Path: "out", TreeDigest: td.Proto()}}}})
				wantStatus(t, err, codes.InvalidArgument, fmt.Sprintf("Failed to check outputs of action result for %s: Output tree %s has a %s named %q: %s", action, td, kind, name, why))
				_, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action.Proto()})
				wantStatus(t, err, codes.NotFound, "")
			}
		}
	}
	// A Tree with ordinary names (dots inside a name are fine) is accepted.
	good := &repb.Tree{Root: &repb.Directory{Files: []*repb.FileNode{{Name: "..x.", Digest: fd.Proto()}}}}
	gb, gd, _ := digest.FromMessage(good)
	storeBlobs(t, e.store, gb)
	action := digest.FromBytes([]byte("good tree action"))
	if _, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: &repb.ActionResult{
		OutputDirectories: []*repb.OutputDirectory{{Path: "out", TreeDigest: gd.Proto()}}}}); err != nil {
		t.Fatal(err)
	}
}
