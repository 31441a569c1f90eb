package scheduler_test

import (
	"testing"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/scheduler"
)

// Three clients run one 5-second action; one cancels. Its operation ends with CANCELLED in
// ExecuteResponse.status and Operation.error unset (Execution.Execute: "the server MUST NOT set
// the error field of the Operation proto"); the other two get the result.
func TestCancelledJoinedOperationReportsCancelledInExecuteResponse(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("sleep 5")
	s1, _ := e.run("", d)
	s2, op2 := e.run("", d)
	s3, _ := e.run("", d)
	b, reply := e.newBot("bot", 1)
	if len(reply.Leases) != 1 {
		t.Fatalf("three joined clients got %d leases, want 1", len(reply.Leases))
	}
	id := reply.Leases[0].Id
	b.update(active(id))
	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: op2.Name}); err != nil {
		t.Fatal(err)
	}
	done := recvDone(t, s2)
	resp := responseOf(t, done) // fails on Operation.error
	if codes.Code(resp.GetStatus().GetCode()) != codes.Canceled || resp.GetStatus().GetMessage() != "Operation "+op2.Name+" was cancelled" {
		t.Fatalf("cancelled client's response status %v, want CANCELLED naming its operation", resp.GetStatus())
	}
	got, err := e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op2.Name})
	if err != nil || !cancelled(t, got) {
		t.Fatalf("GetOperation of the cancelled name: %v, %v", got, err)
	}

	b.update(completed(t, id, &repb.ActionResult{StdoutRaw: []byte("slept")}, codes.OK))
	for i, s := range []repb.Execution_ExecuteClient{s1, s3} {
		r := responseOf(t, recvDone(t, s))
		if r.GetStatus().GetCode() != 0 || string(r.GetResult().GetStdoutRaw()) != "slept" {
			t.Fatalf("client %d after another's cancel: %v", i, r)
		}
	}
	// The last client of an execution cancelling stops it: also CANCELLED in the response.
	s4, op4 := e.run("", e.putAction("alone"))
	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: op4.Name}); err != nil {
		t.Fatal(err)
	}
	if done := recvDone(t, s4); !cancelled(t, done) {
		t.Fatalf("sole client's cancelled operation %v", done)
	}
}

// A scheduler shutting down ends Execute streams with UNAVAILABLE (a stream status, which
// clients retry with WaitExecution), never with a done operation carrying Operation.error.
func TestShutdownEndsStreamsWithoutOperationError(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	s, op := e.run("", e.putAction("interrupted by a restart"))
	e.sched.Close()
	for {
		got, err := s.Recv()
		if err != nil {
			checkStatus(t, err, codes.Unavailable, "shutting down")
			break
		}
		if got.Done || got.GetError() != nil {
			t.Fatalf("shutdown ended the operation: %v", got)
		}
	}
	got, err := e.ops.WaitOperation(e.ctx, &longrunningpb.WaitOperationRequest{Name: op.Name})
	if err != nil || got.Done || got.GetError() != nil {
		t.Fatalf("WaitOperation after shutdown: %v, %v; want the operation, not done, no error", got, err)
	}
}
