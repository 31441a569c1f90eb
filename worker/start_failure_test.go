package worker_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// countingExecutor counts the runs of its Executor.
type countingExecutor struct {
	worker.Executor
	runs atomic.Int32
}

func (c *countingExecutor) Run(ctx context.Context, d digest.Digest, a *repb.Action) (*repb.ActionResult, error) {
	c.runs.Add(1)
	return c.Executor.Run(ctx, d, a)
}

// A command that cannot start for reasons of its own (argv too long for the kernel: E2BIG; a
// missing or non-executable argv[0]) fails the same way on every worker: it is reported once,
// as INVALID_ARGUMENT in the ExecuteResponse, after one attempt, and nothing is cached.
func TestDeterministicStartFailuresAreReportedOnce(t *testing.T) {
	cases := map[string][]string{
		"E2BIG":          {"/bin/sh", "-c", "true", strings.Repeat("x", 200<<10)},
		"missing":        {"/nonexistent/buildfleet-tool"},
		"not executable": {"/etc/passwd"},
	}
	for name, argv := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, scheduler.Config{})
			ex := &countingExecutor{Executor: e.newRunner("w1")}
			e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, ex)
			cmd := &repb.Command{Arguments: argv}
			d := e.put(&repb.Action{CommandDigest: e.put(cmd).Proto(), InputRootDigest: e.put(&repb.Directory{}).Proto()})
			resp := e.execute(d).wait(t)
			if code := codes.Code(resp.GetStatus().GetCode()); code != codes.InvalidArgument || !strings.Contains(resp.GetStatus().GetMessage(), "Failed to start command") {
				t.Fatalf("status %v, want INVALID_ARGUMENT naming the start failure", resp.GetStatus())
			}
			if n := ex.runs.Load(); n != 1 {
				t.Errorf("the action ran %d times, want once", n)
			}
			if r, err := e.ac.Get(context.Background(), "", d); err == nil {
				t.Errorf("a failed start was cached: %v", r)
			}
		})
	}
}
