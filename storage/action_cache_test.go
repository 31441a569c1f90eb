package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

func TestDiskActionCacheIsolationAndRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	ac, err := storage.NewDiskActionCache(dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	action := digest.FromBytes([]byte("action"))
	r1 := &repb.ActionResult{ExitCode: 1}
	r2 := &repb.ActionResult{ExitCode: 2}
	if err := ac.Put(ctx, "team-a", action, r1); err != nil {
		t.Fatal(err)
	}
	if err := ac.Put(ctx, "team-b", action, r2); err != nil {
		t.Fatal(err)
	}
	_, err = ac.Get(ctx, "", action)
	wantCode(t, err, codes.NotFound, "default instance sees another instance's entry")
	// Instance names that concatenate alike stay apart.
	if err := ac.Put(ctx, "team-a/x", action, r2); err != nil {
		t.Fatal(err)
	}

	ac, err = storage.NewDiskActionCache(dir, zerolog.Nop()) // A restart.
	if err != nil {
		t.Fatal(err)
	}
	for instance, want := range map[string]*repb.ActionResult{"team-a": r1, "team-b": r2, "team-a/x": r2} {
		got, err := ac.Get(ctx, instance, action)
		if err != nil || !proto.Equal(got, want) {
			t.Fatalf("Get(%s) after restart = %v, %v; want %v", instance, got, err, want)
		}
	}
	// An overwrite replaces the entry.
	if err := ac.Put(ctx, "team-a", action, r2); err != nil {
		t.Fatal(err)
	}
	if got, _ := ac.Get(ctx, "team-a", action); got.GetExitCode() != 2 {
		t.Fatalf("overwritten entry = %v", got)
	}
}

// outputs stores a file, stdout and an output directory with one file, and returns a result
// naming them, plus the digests of the directory's file and Tree.
func outputs(t testing.TB, s storage.BlobStore) (result *repb.ActionResult, file, treeFile, tree digest.Digest) {
	t.Helper()
	file = mustPut(t, s, []byte("output file"))
	stdout := mustPut(t, s, []byte("stdout text"))
	treeFile = mustPut(t, s, []byte("file inside the output directory"))
	b, tree, err := digest.FromMessage(&repb.Tree{
		Root:     &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: digest.Empty.Proto()}}},
		Children: []*repb.Directory{{Files: []*repb.FileNode{{Name: "f", Digest: treeFile.Proto()}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, b)
	return &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: "out/a.txt", Digest: file.Proto()}},
		OutputDirectories: []*repb.OutputDirectory{{Path: "out/dir", TreeDigest: tree.Proto()}},
		StdoutDigest:      stdout.Proto(),
		ExitCode:          0,
	}, file, treeFile, tree
}

func TestCompletenessCheckingActionCache(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// Room for the outputs and one more 2000-byte blob only after evicting something.
	cas := openStore(t, dir+"/cas", 2500)
	defer cas.Close()
	disk, err := storage.NewDiskActionCache(dir+"/ac", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ac := storage.NewCompletenessCheckingActionCache(disk, cas)
	result, file, treeFile, tree := outputs(t, cas)
	action := digest.FromBytes([]byte("action"))
	if err := ac.Put(ctx, "", action, result); err != nil {
		t.Fatal(err)
	}
	if got, err := ac.Get(ctx, "", action); err != nil || !proto.Equal(got, result) {
		t.Fatalf("Get = %v, %v", got, err)
	}

	// Missing outputs cannot be written.
	_, ghost := randomBlob(t, 42)
	broken := proto.Clone(result).(*repb.ActionResult)
	broken.OutputFiles = append(broken.OutputFiles, &repb.OutputFile{Path: "ghost", Digest: ghost.Proto()})
	err = ac.Put(ctx, "", digest.FromBytes([]byte("other")), broken)
	wantMissing(t, err, fmt.Sprintf("Failed to store action result for %s: output blob %s is missing from the CAS", digest.FromBytes([]byte("other")), ghost), ghost)

	// Evict the file inside the output directory: the entry becomes a miss.
	cas2 := openStore(t, t.TempDir(), 1<<20)
	defer cas2.Close()
	acOther := storage.NewCompletenessCheckingActionCache(disk, cas2)
	_, err = acOther.Get(ctx, "", action)
	wantCode(t, err, codes.NotFound, "outputs absent from another CAS")

	// Refresh everything but the Tree's file, then push it out with a new blob.
	missing(t, cas, file, tree)
	mustPut(t, cas, []byte("stdout text")) // Refreshes stdout.
	big, _ := randomBlob(t, 2500-int(file.Size+tree.Size+int64(len("stdout text")))-int(treeFile.Size)+1)
	mustPut(t, cas, big)
	if m := missing(t, cas, treeFile); !m[treeFile] {
		t.Fatal("test setup: the tree's file was not evicted")
	}
	_, err = ac.Get(ctx, "", action)
	wantStatus(t, err, codes.NotFound, fmt.Sprintf("Action result for %s not found: output %s is no longer in the CAS", action, treeFile))
}

// wantMissing checks for FAILED_PRECONDITION with message msg and MISSING violations for ds.
func wantMissing(t testing.TB, err error, msg string, ds ...digest.Digest) {
	t.Helper()
	wantStatus(t, err, codes.FailedPrecondition, msg)
	var subjects []string
	for _, d := range status.Convert(err).Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetType() != "MISSING" {
					t.Errorf("violation type %q, want MISSING", v.GetType())
				}
				subjects = append(subjects, v.GetSubject())
			}
		}
	}
	if len(subjects) != len(ds) {
		t.Fatalf("violations %v, want %d", subjects, len(ds))
	}
	for i, d := range ds {
		if subjects[i] != d.MissingSubject() {
			t.Errorf("violation %d subject %q, want %q", i, subjects[i], d.MissingSubject())
		}
	}
}

func TestActionCacheService(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{})
	ctx := context.Background()
	result, file, _, _ := outputs(t, e.store)
	action := digest.FromBytes([]byte("action"))
	stored, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: "a", ActionDigest: action.Proto(), ActionResult: result})
	if err != nil || !proto.Equal(stored, result) {
		t.Fatalf("UpdateActionResult = %v, %v", stored, err)
	}
	got, err := e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "a", ActionDigest: action.Proto()})
	if err != nil || !proto.Equal(got, result) {
		t.Fatalf("GetActionResult = %v, %v", got, err)
	}
	_, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "b", ActionDigest: action.Proto()})
	wantStatus(t, err, codes.NotFound, fmt.Sprintf("Action result for %s not found", action))

	// Inlining on request.
	got, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "a", ActionDigest: action.Proto(),
		InlineStdout: true, InlineStderr: true, InlineOutputFiles: []string{"out/a.txt"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.GetStdoutRaw()) != "stdout text" || string(got.GetOutputFiles()[0].GetContents()) != "output file" || got.GetOutputFiles()[0].GetDigest().GetHash() != file.Hash {
		t.Fatalf("inlined result = %v", got)
	}

	// Inline data in an update goes to the CAS; the stored result names blobs only.
	withRaw := &repb.ActionResult{
		StdoutRaw:   []byte("raw stdout"),
		StderrRaw:   []byte("raw stderr"),
		OutputFiles: []*repb.OutputFile{{Path: "inline.txt", Digest: digest.FromBytes([]byte("inline")).Proto(), Contents: []byte("inline")}},
	}
	action2 := digest.FromBytes([]byte("action2"))
	stored, err = e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action2.Proto(), ActionResult: withRaw})
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.GetStdoutRaw()) != 0 || stored.GetStdoutDigest().GetHash() != digest.FromBytes([]byte("raw stdout")).Hash || len(stored.GetOutputFiles()[0].GetContents()) != 0 {
		t.Fatalf("stored result kept inline data: %v", stored)
	}
	if got := readAll(t, e.store, digest.FromBytes([]byte("raw stderr")), 0, 0); string(got) != "raw stderr" {
		t.Fatalf("stderr not in CAS: %q", got)
	}

	// Outputs missing from the CAS are refused, and nothing is stored.
	_, ghost := randomBlob(t, 42)
	action3 := digest.FromBytes([]byte("action3"))
	_, err = e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action3.Proto(),
		ActionResult: &repb.ActionResult{StderrDigest: ghost.Proto()}})
	wantMissing(t, err, fmt.Sprintf("Failed to store action result for %s: output blob %s is missing from the CAS", action3, ghost), ghost)
	_, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action3.Proto()})
	wantStatus(t, err, codes.NotFound, "")

	for _, tc := range []struct {
		name string
		req  *repb.UpdateActionResultRequest
		msg  string
	}{
		{"malformed output digest", &repb.UpdateActionResultRequest{ActionDigest: action3.Proto(), ActionResult: &repb.ActionResult{
			OutputFiles: []*repb.OutputFile{{Path: "x", Digest: &repb.Digest{Hash: "12", SizeBytes: 1}}}}},
			fmt.Sprintf("Failed to update action result for %s: output file \"x\": Invalid digest 12/1: hash has length 2, want 64 (SHA-256)", action3)},
		{"missing tree digest", &repb.UpdateActionResultRequest{ActionDigest: action3.Proto(), ActionResult: &repb.ActionResult{
			OutputDirectories: []*repb.OutputDirectory{{Path: "d"}}}},
			fmt.Sprintf("Failed to update action result for %s: output directory \"d\": Missing digest", action3)},
		{"inline contents mismatch", &repb.UpdateActionResultRequest{ActionDigest: action3.Proto(), ActionResult: &repb.ActionResult{
			OutputFiles: []*repb.OutputFile{{Path: "x", Digest: file.Proto(), Contents: []byte("lies")}}}},
			fmt.Sprintf("Failed to update action result for %s: inline contents of output file x have digest %s, not %s", action3, digest.FromBytes([]byte("lies")), file)},
		{"absolute path", &repb.UpdateActionResultRequest{ActionDigest: action3.Proto(), ActionResult: &repb.ActionResult{
			OutputFiles: []*repb.OutputFile{{Path: "/etc/passwd", Digest: file.Proto()}}}},
			fmt.Sprintf("Failed to update action result for %s: output_files path \"/etc/passwd\": absolute path", action3)},
		{"no result", &repb.UpdateActionResultRequest{ActionDigest: action3.Proto()},
			fmt.Sprintf("Failed to update action result for %s: missing action_result", action3)},
		{"bad action digest", &repb.UpdateActionResultRequest{ActionDigest: &repb.Digest{Hash: "zz"}, ActionResult: &repb.ActionResult{}},
			"Invalid digest zz/0: hash has length 2, want 64 (SHA-256)"},
		{"digest function", &repb.UpdateActionResultRequest{ActionDigest: action3.Proto(), ActionResult: &repb.ActionResult{}, DigestFunction: repb.DigestFunction_BLAKE3},
			"Unsupported digest function BLAKE3: this server supports SHA256 only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.acc.UpdateActionResult(ctx, tc.req)
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}
	_, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: &repb.Digest{Hash: action.Hash, SizeBytes: -1}})
	wantStatus(t, err, codes.InvalidArgument, "")
	_, err = e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "..", ActionDigest: action.Proto()})
	wantStatus(t, err, codes.InvalidArgument, "")
}

func TestActionCacheServiceEvictedOutputsAreMisses(t *testing.T) {
	e := newTestEnv(t, 3000, storage.ServiceOptions{})
	ctx := context.Background()
	out, outDigest := randomBlob(t, 1000)
	mustPut(t, e.store, out)
	action := digest.FromBytes([]byte("action"))
	result := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "o", Digest: outDigest.Proto()}}}
	if _, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: result}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		b, _ := randomBlob(t, 1000)
		mustPut(t, e.store, b)
	}
	_, err := e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action.Proto()})
	wantStatus(t, err, codes.NotFound, fmt.Sprintf("Action result for %s not found: output %s is no longer in the CAS", action, outDigest))
	// Re-uploading the output makes the entry whole again.
	mustPut(t, e.store, out)
	if got, err := e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action.Proto()}); err != nil || !bytes.Equal([]byte(got.GetOutputFiles()[0].GetDigest().GetHash()), []byte(outDigest.Hash)) {
		t.Fatalf("after re-upload: %v, %v", got, err)
	}
}

func TestActionCacheServiceWritableHook(t *testing.T) {
	e := newTestEnv(t, 1<<20, storage.ServiceOptions{
		ActionCacheWritable: func(ctx context.Context, instance string) bool { return instance == "ci" },
	})
	ctx := context.Background()
	action := digest.FromBytes([]byte("action"))
	_, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: "dev", ActionDigest: action.Proto(), ActionResult: &repb.ActionResult{}})
	wantStatus(t, err, codes.PermissionDenied, fmt.Sprintf("Failed to update action result for %s: this client may not write to the action cache of instance \"dev\"", action))
	if _, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: "ci", ActionDigest: action.Proto(), ActionResult: &repb.ActionResult{ExitCode: 3}}); err != nil {
		t.Fatal(err)
	}
	got, err := e.acc.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "ci", ActionDigest: action.Proto()})
	if err != nil || got.GetExitCode() != 3 {
		t.Fatalf("GetActionResult = %v, %v", got, err)
	}
}
