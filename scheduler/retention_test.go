package scheduler_test

import (
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/scheduler"
)

// Finished operations are kept in memory up to MaxCompletedOperations; beyond it the oldest
// are forgotten first, whatever their age, and a WaitExecution on a forgotten name is answered
// from the action cache as after the age bound.
func TestFinishedOperationsAreBoundedInNumber(t *testing.T) {
	e := newEnv(t, scheduler.Config{CompletedRetention: time.Hour, MaxCompletedOperations: 2})
	b, _ := e.newBot("bot", 1)
	var names []string
	for _, script := range []string{"one", "two", "three"} {
		s, op := e.run("", e.putAction(script))
		reply := b.update()
		b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{}, codes.OK))
		recvDone(t, s)
		names = append(names, op.Name)
	}
	// Newest first: answering a forgotten name retains that answer too, pushing out the oldest.
	for i := len(names) - 1; i >= 0; i-- {
		name := names[i]
		ws, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		resp := responseOf(t, recvDone(t, ws))
		// The first is forgotten (answered from the cache), the last two are retained.
		if want := i == 0; resp.CachedResult != want || resp.Status.GetCode() != 0 {
			t.Errorf("operation %d: cached_result %v, status %v; want cached_result %v", i, resp.CachedResult, resp.Status, want)
		}
	}
}
