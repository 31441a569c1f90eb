package scheduler_test

import (
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

func TestRestartedSchedulerRebuildsOperationsFromTheirNames(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("survives restarts")
	_, op := e.run("team/a", d)

	// The scheduler restarts and loses everything in memory.
	e.start(scheduler.Config{})

	// Bazel or Pants waits on the old name: it is queued again under that name, not NOT_FOUND.
	s, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: op.Name})
	if err != nil {
		t.Fatal(err)
	}
	first := recv(t, s)
	if first.Name != op.Name || first.Done || stageOf(t, first) != repb.ExecutionStage_QUEUED {
		t.Fatalf("after restart: %v", first)
	}
	// GetOperation on the same name finds the rebuilt one instead of queueing it twice.
	got, err := e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op.Name})
	if err != nil || got.Name != op.Name || got.Done {
		t.Fatalf("GetOperation: %v, %v", got, err)
	}
	b, reply := e.newBot("bot", 2)
	if len(reply.Leases) != 1 || leaseAction(t, reply.Leases[0]) != d {
		t.Fatalf("leases after restart %v", reply.Leases)
	}
	b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{StdoutRaw: []byte("ok")}, codes.OK))
	done := recvDone(t, s)
	if resp := responseOf(t, done); done.Name != op.Name || string(resp.Result.StdoutRaw) != "ok" {
		t.Fatalf("final %v", done)
	}
	if e.ac.get("team/a", d) == nil {
		t.Fatal("rebuilt operation's result not cached")
	}

	// After a second restart the action's result is in the action cache: the name is answered
	// from it instead of running the action again.
	e.start(scheduler.Config{})
	got, err = e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op.Name})
	if err != nil || !got.Done || got.Name != op.Name {
		t.Fatalf("GetOperation after a second restart: %v, %v", got, err)
	}
	if resp := responseOf(t, got); !resp.CachedResult || string(resp.Result.StdoutRaw) != "ok" {
		t.Fatalf("response after a second restart %v, want the cached result", resp)
	}
	if _, reply := e.newBot("bot2", 2); len(reply.Leases) != 0 {
		t.Fatalf("a cached operation was run again: %v", reply.Leases)
	}

	// An unknown name whose action has no cached result is rebuilt and queued.
	other := e.putAction("never finished")
	_, op2 := e.run("team/a", other)
	e.start(scheduler.Config{})
	got, err = e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op2.Name})
	if err != nil || got.Done || stageOf(t, got) != repb.ExecutionStage_QUEUED {
		t.Fatalf("GetOperation of an unfinished action after a restart: %v, %v", got, err)
	}
}

func TestOperationNamesAreValidated(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	for _, name := range []string{
		"",
		"nonsense",
		"operations/not-a-uuid/" + digest.Empty.Hash + "-0",
		"operations/8c7f0e2a-9f3c-4e5b-8a1d-2b6c4d8e0f11/xyz-3",
		"a/../b/operations/8c7f0e2a-9f3c-4e5b-8a1d-2b6c4d8e0f11/" + digest.Empty.Hash + "-0",
	} {
		s, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: name})
		if err == nil {
			_, err = s.Recv()
		}
		checkStatus(t, err, codes.InvalidArgument, "Invalid operation name")
		_, err = e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: name})
		checkStatus(t, err, codes.InvalidArgument, "Invalid operation name")
		_, err = e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: name})
		checkStatus(t, err, codes.InvalidArgument, "Invalid operation name")
	}
	// Well-formed but its action was never uploaded: nothing to rebuild from.
	absent := digest.FromBytes([]byte("absent"))
	name := "operations/8c7f0e2a-9f3c-4e5b-8a1d-2b6c4d8e0f11/" + absent.Hash + "-" + itoa(int(absent.Size))
	s, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: name})
	if err == nil {
		_, err = s.Recv()
	}
	checkStatus(t, err, codes.NotFound, "is not in the CAS")
	// Every call on that name agrees it does not exist (CancelOperation and DeleteOperation used
	// to answer OK).
	_, err = e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: name})
	checkStatus(t, err, codes.NotFound, "is not in the CAS")
	_, err = e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: name})
	checkStatus(t, err, codes.NotFound, "is not in the CAS")
	_, err = e.ops.DeleteOperation(e.ctx, &longrunningpb.DeleteOperationRequest{Name: name})
	checkStatus(t, err, codes.NotFound, "is not in the CAS")
	// An unknown name whose action is in the CAS could be rebuilt: cancelling or deleting it
	// is a no-op, not an error.
	forgotten := e.putAction("forgotten")
	name = "operations/8c7f0e2a-9f3c-4e5b-8a1d-2b6c4d8e0f11/" + forgotten.Hash + "-" + itoa(int(forgotten.Size))
	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: name}); err != nil {
		t.Errorf("CancelOperation of a rebuildable name: %v", err)
	}
	if _, err := e.ops.DeleteOperation(e.ctx, &longrunningpb.DeleteOperationRequest{Name: name}); err != nil {
		t.Errorf("DeleteOperation of a rebuildable name: %v", err)
	}
	_, err = e.ops.ListOperations(e.ctx, &longrunningpb.ListOperationsRequest{})
	checkStatus(t, err, codes.Unimplemented, "")
}

func TestCancelQueuedOperation(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	s, op := e.run("", e.putAction("never mind"))
	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: op.Name}); err != nil {
		t.Fatal(err)
	}
	done := recvDone(t, s)
	if !cancelled(t, done) {
		t.Fatalf("cancelled operation %v", done)
	}
	if _, reply := e.newBot("bot", 1); len(reply.Leases) != 0 {
		t.Fatalf("cancelled action leased: %v", reply.Leases)
	}
	if n := e.metric("buildfleet_scheduler_queue_depth", "platform", "default"); n != 0 {
		t.Fatalf("queue depth %v", n)
	}
}

func TestCancelRunningOperationWithdrawsItsLease(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	s, op := e.run("", e.putAction("pants gave up"))
	b, reply := e.newBot("bot", 1)
	id := reply.Leases[0].Id
	b.update(active(id))

	// The bot is long-polling with its lease; the cancel ends the hold with the lease gone.
	ch := make(chan *rwpb.BotSession, 1)
	go func() {
		r, err := b.report(30 * time.Second)
		if err != nil {
			t.Error(err)
		}
		ch <- r
	}()
	waitFor(t, "the long-poll to be held", func() bool { return e.worker("bot").LongPolling })
	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: op.Name}); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r == nil || len(r.Leases) != 0 {
		t.Fatalf("reply after cancel %v, want no leases", r)
	}
	if done := recvDone(t, s); !cancelled(t, done) {
		t.Fatalf("operation %v", done)
	}
	// A result arriving anyway is ignored.
	b.update(completed(t, id, &repb.ActionResult{}, codes.OK))
	got, err := e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op.Name})
	if err != nil || !cancelled(t, got) {
		t.Fatalf("GetOperation %v, %v", got, err)
	}
}

func TestWaitAndDeleteOperation(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	_, op := e.run("", e.putAction("wait for me"))
	// WaitOperation with a timeout returns the unfinished operation when it passes.
	ch := make(chan *longrunningpb.Operation, 1)
	before := e.clk.Pending()
	go func() {
		got, err := e.ops.WaitOperation(e.ctx, &longrunningpb.WaitOperationRequest{Name: op.Name, Timeout: durationpb.New(time.Minute)})
		if err != nil {
			t.Error(err)
		}
		ch <- got
	}()
	waitFor(t, "WaitOperation to arm its timeout", func() bool { return e.clk.Pending() > before })
	e.clk.Advance(time.Minute)
	if got := <-ch; got == nil || got.Done {
		t.Fatalf("WaitOperation after timeout: %v", got)
	}
	// Without a timeout it returns when the operation is done.
	go func() {
		got, err := e.ops.WaitOperation(e.ctx, &longrunningpb.WaitOperationRequest{Name: op.Name})
		if err != nil {
			t.Error(err)
		}
		ch <- got
	}()
	b, reply := e.newBot("bot", 1)
	b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{}, codes.OK))
	if got := <-ch; got == nil || !got.Done {
		t.Fatalf("WaitOperation: %v", got)
	}
	if _, err := e.ops.DeleteOperation(e.ctx, &longrunningpb.DeleteOperationRequest{Name: op.Name}); err != nil {
		t.Fatal(err)
	}
}

func TestFinishedOperationsAreForgottenAfterRetention(t *testing.T) {
	e := newEnv(t, scheduler.Config{CompletedRetention: time.Minute})
	d := e.putAction("old news")
	s, op := e.run("", d)
	b, reply := e.newBot("bot", 1)
	b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{}, codes.OK))
	recvDone(t, s)
	b.update()
	failed := e.putAction("exit 3")
	fs, fop := e.run("", failed)
	reply = b.update()
	b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{ExitCode: 3}, codes.OK))
	recvDone(t, fs)
	b.update()
	handed := e.metric("buildfleet_scheduler_leases_handed_out_total")
	e.clk.Advance(time.Minute)

	// Forgotten: WaitExecution on the old name is answered from the action cache, not
	// NOT_FOUND, and the action does not run again.
	ws, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: op.Name})
	if err != nil {
		t.Fatal(err)
	}
	done := recvDone(t, ws)
	if resp := responseOf(t, done); done.Name != op.Name || !resp.CachedResult || resp.Status.GetCode() != 0 {
		t.Fatalf("WaitExecution after retention: %v", done)
	}
	if reply := b.update(); len(reply.Leases) != 0 || e.metric("buildfleet_scheduler_leases_handed_out_total") != handed {
		t.Fatalf("a forgotten but cached operation ran again: %v", reply.Leases)
	}
	if n := e.metric("buildfleet_scheduler_actions_completed_total", "outcome", "cached"); n != 1 {
		t.Fatalf("actions_completed_total{cached} = %v", n)
	}

	// A failed action is not cached: its forgotten name is rebuilt and run again.
	ws, err = e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: fop.Name})
	if err != nil {
		t.Fatal(err)
	}
	if again := recv(t, ws); again.Done || again.Name != fop.Name {
		t.Fatalf("WaitExecution of a forgotten failed action: %v", again)
	}
	if reply := b.update(); len(reply.Leases) != 1 || leaseAction(t, reply.Leases[0]) != failed {
		t.Fatalf("forgotten failed action not run again: %v", reply.Leases)
	}
}

// Two clients joined one execution: the first one's CancelOperation ends only its own name;
// the action runs on for the second, and stops once the second cancels too.
func TestCancelOfOneJoinedClientLeavesTheOthers(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("shared by two builds")
	s1, op1 := e.run("", d)
	s2, op2 := e.run("", d)
	b, reply := e.newBot("bot", 1)
	if len(reply.Leases) != 1 {
		t.Fatalf("got %d leases for two joined clients, want 1", len(reply.Leases))
	}
	id := reply.Leases[0].Id
	b.update(active(id))

	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: op1.Name}); err != nil {
		t.Fatal(err)
	}
	if done := recvDone(t, s1); !cancelled(t, done) || done.Name != op1.Name {
		t.Fatalf("cancelling client's operation %v", done)
	}
	if r := b.update(active(id)); len(r.Leases) != 1 {
		t.Fatalf("lease withdrawn although another client still waits: %v", r.Leases)
	}
	got, err := e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op2.Name})
	if err != nil || got.Done {
		t.Fatalf("other client's operation after the first cancel: %v, %v", got, err)
	}

	b.update(completed(t, id, &repb.ActionResult{StdoutRaw: []byte("done")}, codes.OK))
	if r := responseOf(t, recvDone(t, s2)); string(r.GetResult().GetStdoutRaw()) != "done" {
		t.Fatalf("other client's response %v", r)
	}

	// When every client cancels, the execution stops.
	s3, op3 := e.run("", d)
	s4, op4 := e.run("", d)
	for _, name := range []string{op3.Name, op4.Name} {
		if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []repb.Execution_ExecuteClient{s3, s4} {
		if done := recvDone(t, s); !cancelled(t, done) {
			t.Fatalf("after both cancels: %v", done)
		}
	}
	if n := e.metric("buildfleet_scheduler_actions_completed_total", "outcome", "cancelled"); n != 1 {
		t.Fatalf("cancelled executions %v, want 1", n)
	}
}
