package runner_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
)

func TestRunOutputsFilesDirectoriesSymlinks(t *testing.T) {
	f := newFixture(t, nil)
	cmd := shell(`echo hello; echo oops >&2
mkdir -p out/dir/sub out/dir/empty
echo a > out/dir/a; echo b > out/dir/sub/b; echo a > out/dir/sub/a2
ln -s a out/dir/rel
printf x > out/file; chmod 755 out/file
ln -s ../in/data out/link
cat in/data > out/copy`, "out/file", "out/dir", "out/link", "out/missing", "out/copy")
	res := f.mustRun(cmd, map[string]entry{"in/data": {content: "input data"}})

	if got := f.stdout(res); got != "hello\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := f.stderr(res); got != "oops\n" {
		t.Errorf("stderr = %q", got)
	}
	if res.GetExitCode() != 0 {
		t.Errorf("exit code = %d", res.GetExitCode())
	}
	want := []*repb.OutputFile{
		{Path: "out/file", Digest: digest.FromBytes([]byte("x")).Proto(), IsExecutable: true},
		{Path: "out/copy", Digest: digest.FromBytes([]byte("input data")).Proto()},
	}
	if len(res.GetOutputFiles()) != len(want) {
		t.Fatalf("output files = %v", res.GetOutputFiles())
	}
	for i, w := range want {
		if !proto.Equal(res.GetOutputFiles()[i], w) {
			t.Errorf("output file %d = %v, want %v", i, res.GetOutputFiles()[i], w)
		}
		if string(f.cas.get(t, w.Digest)) == "" {
			t.Errorf("output %s not uploaded", w.Path)
		}
	}
	if got := res.GetOutputSymlinks(); len(got) != 1 || !proto.Equal(got[0], &repb.OutputSymlink{Path: "out/link", Target: "../in/data"}) {
		t.Errorf("output symlinks = %v", got)
	}
	if len(res.GetOutputFileSymlinks())+len(res.GetOutputDirectorySymlinks()) != 0 {
		t.Errorf("old-style symlink fields filled for an output_paths client: %v", res)
	}

	if len(res.GetOutputDirectories()) != 1 {
		t.Fatalf("output directories = %v", res.GetOutputDirectories())
	}
	od := res.GetOutputDirectories()[0]
	if od.GetPath() != "out/dir" || !od.GetIsTopologicallySorted() {
		t.Errorf("output directory = %v", od)
	}
	var tree repb.Tree
	f.cas.getMessage(t, od.GetTreeDigest(), &tree)
	a := digest.FromBytes([]byte("a\n")).Proto()
	sub := &repb.Directory{Files: []*repb.FileNode{
		{Name: "a2", Digest: a},
		{Name: "b", Digest: digest.FromBytes([]byte("b\n")).Proto()},
	}}
	empty := &repb.Directory{}
	_, subD, _ := digest.FromMessage(sub)
	_, emptyD, _ := digest.FromMessage(empty)
	wantRoot := &repb.Directory{
		Files:       []*repb.FileNode{{Name: "a", Digest: a}},
		Directories: []*repb.DirectoryNode{{Name: "empty", Digest: emptyD.Proto()}, {Name: "sub", Digest: subD.Proto()}},
		Symlinks:    []*repb.SymlinkNode{{Name: "rel", Target: "a"}},
	}
	if !proto.Equal(tree.GetRoot(), wantRoot) {
		t.Errorf("tree root = %v\nwant %v", tree.GetRoot(), wantRoot)
	}
	if len(tree.GetChildren()) != 2 {
		t.Fatalf("tree children = %v", tree.GetChildren())
	}
	for _, c := range tree.GetChildren() {
		if !proto.Equal(c, sub) && !proto.Equal(c, empty) {
			t.Errorf("unexpected tree child %v", c)
		}
	}
	f.cas.get(t, a) // The files inside the tree are uploaded too.

	md := res.GetExecutionMetadata()
	if md.GetWorker() != "worker-1" {
		t.Errorf("worker = %q", md.GetWorker())
	}
	for name, ts := range map[string]interface{ AsTime() time.Time }{
		"worker_start": md.GetWorkerStartTimestamp(), "worker_completed": md.GetWorkerCompletedTimestamp(),
		"input_fetch_start": md.GetInputFetchStartTimestamp(), "input_fetch_completed": md.GetInputFetchCompletedTimestamp(),
		"execution_start": md.GetExecutionStartTimestamp(), "execution_completed": md.GetExecutionCompletedTimestamp(),
		"output_upload_start": md.GetOutputUploadStartTimestamp(), "output_upload_completed": md.GetOutputUploadCompletedTimestamp(),
	} {
		if !ts.AsTime().Equal(epoch) {
			t.Errorf("%s = %v, want the injected clock's %v", name, ts.AsTime(), epoch)
		}
	}
	if md.GetQueuedTimestamp() != nil {
		t.Errorf("queued timestamp set by the runner: %v", md.GetQueuedTimestamp())
	}
}

func TestRunOldStyleOutputs(t *testing.T) {
	f := newFixture(t, nil)
	cmd := &repb.Command{
		Arguments: []string{"/bin/sh", "-c", `echo f > deep/nested/f
mkdir d; echo x > d/x
ln -s f deep/nested/flink
ln -s d dlink`},
		OutputFiles:       []string{"deep/nested/f", "deep/nested/flink", "absent"},
		OutputDirectories: []string{"d", "dlink", "nothere/dir"},
	}
	res := f.mustRun(cmd, nil)
	if got := res.GetOutputFiles(); len(got) != 1 || got[0].GetPath() != "deep/nested/f" {
		t.Errorf("output files = %v", got)
	}
	if got := res.GetOutputFileSymlinks(); len(got) != 1 || !proto.Equal(got[0], &repb.OutputSymlink{Path: "deep/nested/flink", Target: "f"}) {
		t.Errorf("output file symlinks = %v", got)
	}
	if got := res.GetOutputDirectorySymlinks(); len(got) != 1 || !proto.Equal(got[0], &repb.OutputSymlink{Path: "dlink", Target: "d"}) {
		t.Errorf("output directory symlinks = %v", got)
	}
	if len(res.GetOutputSymlinks()) != 0 {
		t.Errorf("output_symlinks filled for an old client: %v", res.GetOutputSymlinks())
	}
	if got := res.GetOutputDirectories(); len(got) != 1 || got[0].GetPath() != "d" {
		t.Fatalf("output directories = %v", got)
	}
	var tree repb.Tree
	f.cas.getMessage(t, res.GetOutputDirectories()[0].GetTreeDigest(), &tree)
	if len(tree.GetRoot().GetFiles()) != 1 || tree.GetRoot().GetFiles()[0].GetName() != "x" {
		t.Errorf("tree = %v", &tree)
	}
}

func TestRunDirectoryOnlyFormat(t *testing.T) {
	f := newFixture(t, nil)
	cmd := shell("mkdir -p o/s; echo 1 > o/s/f", "o")
	cmd.OutputDirectoryFormat = repb.Command_DIRECTORY_ONLY
	res := f.mustRun(cmd, nil)
	od := res.GetOutputDirectories()[0]
	if od.GetTreeDigest() != nil {
		t.Errorf("tree digest set for DIRECTORY_ONLY: %v", od)
	}
	var root, sub repb.Directory
	f.cas.getMessage(t, od.GetRootDirectoryDigest(), &root)
	f.cas.getMessage(t, root.GetDirectories()[0].GetDigest(), &sub)
	if sub.GetFiles()[0].GetName() != "f" {
		t.Errorf("sub = %v", &sub)
	}
}

// An output_directory_format the worker does not know is read as TREE_ONLY (REAPI: the worker
// "SHOULD interpret this field as TREE_ONLY"), so the directory still reaches the client.
func TestRunUnknownDirectoryFormatIsTreeOnly(t *testing.T) {
	f := newFixture(t, nil)
	cmd := shell("mkdir -p o/s; echo 1 > o/s/f", "o")
	cmd.OutputDirectoryFormat = repb.Command_OutputDirectoryFormat(42)
	od := f.mustRun(cmd, nil).GetOutputDirectories()[0]
	if od.GetTreeDigest() == nil || od.GetRootDirectoryDigest() != nil {
		t.Fatalf("unknown format gave %v, want a tree digest only", od)
	}
	var tree repb.Tree
	f.cas.getMessage(t, od.GetTreeDigest(), &tree)
	if len(tree.GetChildren()) != 1 || tree.GetChildren()[0].GetFiles()[0].GetName() != "f" {
		t.Fatalf("tree = %v", &tree)
	}
}

func TestRunSymlinkOutputPointingOutsideIsNotFollowed(t *testing.T) {
	f := newFixture(t, nil)
	secret, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Skip(err)
	}
	const outside = "../../../../../../../../../../../../../../../../etc/passwd"
	res := f.mustRun(shell("ln -s "+outside+" out; mkdir d; ln -s "+outside+" d/s", "out", "d"), nil)
	if got := res.GetOutputSymlinks(); len(got) != 1 || got[0].GetTarget() != outside {
		t.Errorf("symlinks = %v", got)
	}
	var tree repb.Tree
	f.cas.getMessage(t, res.GetOutputDirectories()[0].GetTreeDigest(), &tree)
	if s := tree.GetRoot().GetSymlinks(); len(s) != 1 || s[0].GetTarget() != outside || len(tree.GetRoot().GetFiles()) != 0 {
		t.Errorf("tree root = %v", tree.GetRoot())
	}
	if f.cas.uploadsOf(digest.FromBytes(secret)) != 0 {
		t.Error("the symlink target's content was uploaded")
	}
}

// The scheduler advertises SymlinkAbsolutePathStrategy DISALLOWED: "If an action tries to
// create an output symlink with an absolute target, a FAILED_PRECONDITION will be returned",
// whether the symlink is an output itself or inside an output directory.
func TestRunAbsoluteOutputSymlinkIsFailedPrecondition(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		script, output, name string
	}{
		{"ln -s /etc/passwd link", "link", "link"},
		{"mkdir d; ln -s /etc d/abs", "d", "d/abs"},
	} {
		_, err := f.run(context.Background(), shell(tc.script, tc.output), nil, 0)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), fmt.Sprintf("Output symlink %q has the absolute target", tc.name)) {
			t.Errorf("%s: %v, want FAILED_PRECONDITION naming %s", tc.script, err, tc.name)
		}
	}
}

func TestRunUploadsLargeAndManyOutputs(t *testing.T) {
	f := newFixture(t, nil)
	// 6 MiB needs ByteStream Write; twelve 700 KiB files need several batches under 4 MiB
	// (the test server refuses larger ones); an output already in the CAS is not sent again.
	f.cas.put([]byte("already there\n"))
	res := f.mustRun(shell(`head -c 6291456 /dev/zero > big
mkdir many; for i in 0 1 2 3 4 5 6 7 8 9 10 11; do head -c 716800 /dev/zero | tr '\0' "\\$i" > many/$i; done
echo already there > old`, "big", "many", "old"), nil)
	if got := res.GetOutputFiles(); len(got) != 2 || got[0].GetDigest().GetSizeBytes() != 6<<20 {
		t.Fatalf("output files = %v", got)
	}
	if b := f.cas.get(t, res.GetOutputFiles()[0].GetDigest()); len(b) != 6<<20 {
		t.Errorf("big output has %d bytes in the CAS", len(b))
	}
	if f.cas.callCount("Write") != 1 {
		t.Errorf("ByteStream Write called %d times, want 1", f.cas.callCount("Write"))
	}
	if n := f.cas.callCount("BatchUpdateBlobs"); n < 3 {
		t.Errorf("BatchUpdateBlobs called %d times, want at least 3 batches", n)
	}
	if n := f.cas.uploadsOf(digest.FromBytes([]byte("already there\n"))); n != 0 {
		t.Errorf("blob already in the CAS uploaded %d times", n)
	}
	var tree repb.Tree
	f.cas.getMessage(t, res.GetOutputDirectories()[0].GetTreeDigest(), &tree)
	if len(tree.GetRoot().GetFiles()) != 12 {
		t.Fatalf("tree root = %v", tree.GetRoot())
	}
	for _, fn := range tree.GetRoot().GetFiles() {
		if len(f.cas.get(t, fn.GetDigest())) != 700<<10 {
			t.Errorf("output %s not uploaded whole", fn.GetName())
		}
	}
}
