package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	longrunningpb "cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// pantsClient does what Pants' remote execution client does, as CLIENTS.md describes it.
type pantsClient struct {
	t        *testing.T
	conn     *grpc.ClientConn
	instance string
	cas      repb.ContentAddressableStorageClient
	exec     repb.ExecutionClient
	ops      longrunningpb.OperationsClient
}

func newPantsClient(t *testing.T, addr, instance string) *pantsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &pantsClient{
		t: t, conn: conn, instance: instance,
		cas:  repb.NewContentAddressableStorageClient(conn),
		exec: repb.NewExecutionClient(conn),
		ops:  longrunningpb.NewOperationsClient(conn),
	}
}

// ctx returns a context carrying Pants' request metadata header.
func (c *pantsClient) ctx(parent context.Context) context.Context {
	md := &repb.RequestMetadata{
		ToolDetails:      &repb.ToolDetails{ToolName: "pants", ToolVersion: "2.24.0"},
		ToolInvocationId: "pants-run-1",
		ActionMnemonic:   "Process",
	}
	b, err := proto.Marshal(md)
	if err != nil {
		c.t.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(parent, "google.devtools.remoteexecution.v1test.requestmetadata-bin", string(b))
}

// upload stores blobs with BatchUpdateBlobs (as Pants does for small blobs) and returns the
// digest of each.
func (c *pantsClient) upload(blobs ...[]byte) []*repb.Digest {
	c.t.Helper()
	req := &repb.BatchUpdateBlobsRequest{InstanceName: c.instance}
	var ds []*repb.Digest
	for _, b := range blobs {
		d := digest.FromBytes(b).Proto()
		ds = append(ds, d)
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: d, Data: b})
	}
	resp, err := c.cas.BatchUpdateBlobs(c.ctx(context.Background()), req)
	if err != nil {
		c.t.Fatalf("BatchUpdateBlobs: %v", err)
	}
	for _, r := range resp.Responses {
		if codes.Code(r.Status.GetCode()) != codes.OK {
			c.t.Fatalf("BatchUpdateBlobs %s: %v", r.Digest.Hash, r.Status)
		}
	}
	return ds
}

func (c *pantsClient) uploadMessage(m proto.Message) *repb.Digest {
	c.t.Helper()
	b, _, err := digest.FromMessage(m)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.upload(b)[0]
}

func (c *pantsClient) read(d *repb.Digest) []byte {
	c.t.Helper()
	resp, err := c.cas.BatchReadBlobs(c.ctx(context.Background()), &repb.BatchReadBlobsRequest{InstanceName: c.instance, Digests: []*repb.Digest{d}})
	if err != nil || codes.Code(resp.Responses[0].Status.GetCode()) != codes.OK {
		c.t.Fatalf("BatchReadBlobs %v: %v %v", d, err, resp)
	}
	return resp.Responses[0].Data
}

// pantsWrapper is the __pants_wrapper__ script Pants adds to the input root when
// remote_execution_append_only_caches_base_path is set.
func pantsWrapper(base, name, relPath string) []byte {
	return []byte(fmt.Sprintf(`#!/bin/sh
/bin/mkdir -p %[1]s/%[2]s
/bin/mkdir -p "$(/usr/bin/dirname %[3]s)"
/bin/ln -s %[1]s/%[2]s %[3]s
cd work
exec "$@"
`, base, name, relPath))
}

// action builds and uploads an action the way Pants does: the wrapper prepended to argv, the
// platform only in Command.platform, outputs only in output_paths, PANTS_CACHE_KEY_* env.
func (c *pantsClient) action(base, script string, timeout time.Duration) *repb.Digest {
	c.t.Helper()
	wrapper := pantsWrapper(base, "pip", "work/.cache/pip")
	marker := []byte("# an input file\n")
	wd := c.upload(wrapper, marker)
	workDir := c.uploadMessage(&repb.Directory{Files: []*repb.FileNode{{Name: "input.txt", Digest: wd[1]}}})
	root := c.uploadMessage(&repb.Directory{
		Files:       []*repb.FileNode{{Name: "__pants_wrapper__", Digest: wd[0], IsExecutable: true}},
		Directories: []*repb.DirectoryNode{{Name: "work", Digest: workDir}},
	})
	cmd := &repb.Command{
		Arguments: []string{"./__pants_wrapper__", "/bin/sh", "-c", script},
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{
			{Name: "PANTS_CACHE_KEY_EXECUTION_SLOT", Value: "0"},
			{Name: "PATH", Value: "/usr/bin:/bin"},
		},
		OutputPaths: []string{"work/out", "work/result.txt"},
		Platform:    &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}}},
	}
	action := &repb.Action{CommandDigest: c.uploadMessage(cmd), InputRootDigest: root}
	if timeout > 0 {
		action.Timeout = durationpb.New(timeout)
	}
	return c.uploadMessage(action)
}

// execute runs Execute with skip_cache_lookup (as Pants always does) and returns the final
// response, following the stream and falling back to WaitExecution as Pants does.
func (c *pantsClient) execute(ctx context.Context, ad *repb.Digest, onName func(string)) *repb.ExecuteResponse {
	c.t.Helper()
	stream, err := c.exec.Execute(c.ctx(ctx), &repb.ExecuteRequest{InstanceName: c.instance, ActionDigest: ad, SkipCacheLookup: true})
	if err != nil {
		c.t.Fatalf("Execute: %v", err)
	}
	for {
		op, err := stream.Recv()
		if err != nil {
			c.t.Fatalf("Execute stream: %v", err)
		}
		if onName != nil {
			onName(op.Name)
			onName = nil
		}
		if !op.Done {
			continue
		}
		if e := op.GetError(); e != nil {
			c.t.Fatalf("operation failed: %v", e)
		}
		resp := &repb.ExecuteResponse{}
		if err := op.GetResponse().UnmarshalTo(resp); err != nil {
			c.t.Fatal(err)
		}
		return resp
	}
}

// TestPantsShapedExecution runs Pants-shaped actions on a real scheduler and worker: the
// append-only cache wrapper, output_paths, Command.platform, skip_cache_lookup, and a
// CancelOperation that kills the running action.
func TestPantsShapedExecution(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	s := startScheduler(t, "")
	base := filepath.Join(t.TempDir(), "toolchain-caches")
	startWorker(t, s, "pants-worker", "--worker-concurrency=2", "--append-only-caches-base-path="+base)
	c := newPantsClient(t, s.addr, "pants")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	script := `mkdir -p out && echo run >> .cache/pip/runs && wc -l < .cache/pip/runs > result.txt && cp input.txt out/copy.txt && echo "$PANTS_CACHE_KEY_EXECUTION_SLOT" > out/slot`
	first := c.execute(ctx, c.action(base, script, time.Minute), nil)
	if first.Status.GetCode() != 0 || first.Result.GetExitCode() != 0 {
		t.Fatalf("first run: status %v exit %d stderr %q", first.Status, first.Result.GetExitCode(), c.read(first.Result.StderrDigest))
	}
	if first.CachedResult {
		t.Fatal("skip_cache_lookup run reported cached_result")
	}
	files := map[string]*repb.OutputFile{}
	for _, f := range first.Result.OutputFiles {
		files[f.Path] = f
	}
	if f := files["work/result.txt"]; f == nil || strings.TrimSpace(string(c.read(f.Digest))) != "1" {
		t.Fatalf("work/result.txt missing or wrong in %v", first.Result.OutputFiles)
	}
	if len(first.Result.OutputDirectories) != 1 || first.Result.OutputDirectories[0].Path != "work/out" {
		t.Fatalf("output directories = %v, want work/out", first.Result.OutputDirectories)
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(c.read(first.Result.OutputDirectories[0].TreeDigest), tree); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range tree.Root.Files {
		names[f.Name] = true
	}
	if !names["copy.txt"] || !names["slot"] {
		t.Fatalf("tree root files = %v", tree.Root.Files)
	}

	// The append-only cache persists across actions on the worker: the second run sees the first.
	second := c.execute(ctx, c.action(base, script+" && true", time.Minute), nil)
	var result string
	for _, f := range second.Result.OutputFiles {
		if f.Path == "work/result.txt" {
			result = strings.TrimSpace(string(c.read(f.Digest)))
		}
	}
	if result != "2" {
		t.Fatalf("second run saw %q runs in the append-only cache, want 2", result)
	}
	if b, err := os.ReadFile(filepath.Join(base, "pip", "runs")); err != nil || strings.Count(string(b), "run") != 2 {
		t.Fatalf("append-only cache on the worker: %q, %v", b, err)
	}

	// CancelOperation stops a running action: its process disappears.
	pidFile := filepath.Join(base, "pip", "sleeper.pid")
	long := c.action(base, `echo $$ > .cache/pip/sleeper.pid && exec sleep 300`, 10*time.Minute)
	names2 := make(chan string, 1)
	execCtx, execCancel := context.WithCancel(ctx)
	defer execCancel()
	go func() {
		stream, err := c.exec.Execute(c.ctx(execCtx), &repb.ExecuteRequest{InstanceName: c.instance, ActionDigest: long, SkipCacheLookup: true})
		if err != nil {
			return
		}
		if op, err := stream.Recv(); err == nil {
			names2 <- op.Name
		}
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	var opName string
	select {
	case opName = <-names2:
	case <-ctx.Done():
		t.Fatal("no operation name from Execute")
	}
	pid := waitForPid(t, pidFile, time.Minute)
	if _, err := c.ops.CancelOperation(c.ctx(ctx), &longrunningpb.CancelOperationRequest{Name: opName}); err != nil {
		t.Fatalf("CancelOperation(%s): %v", opName, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("action process %d still alive 30 s after CancelOperation", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitForPid(t *testing.T, path string, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s after %v", path, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
