package scheduler_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// Config.Fence is asked synchronously: once it answers an error (a replica's etcd lease may
// have expired), the scheduler hands out no lease, accepts no result and queues nothing, even
// though nothing closed it; the calls fail UNAVAILABLE, so bots keep their results for the next
// leader and clients retry there.
func TestFencedSchedulerHandsOutNothingAndAcceptsNothing(t *testing.T) {
	var fenced atomic.Bool
	e := newEnv(t, scheduler.Config{Fence: func() error {
		if fenced.Load() {
			return errors.New("etcd lease renewal not confirmed in time")
		}
		return nil
	}})
	running := e.putAction("running")
	e.run("", running)
	b, _ := e.newBot("bot-1", 1)
	reply := b.update()
	if len(reply.Leases) != 1 {
		t.Fatalf("bot got %v, want the running action's lease", reply.Leases)
	}
	leaseID := reply.Leases[0].Id
	queued := e.putAction("queued")
	e.run("", queued)

	fenced.Store(true)
	if _, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{Parent: "farm", BotSession: &rwpb.BotSession{BotId: "bot-2", Status: rwpb.BotStatus_OK}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("CreateBotSession on a fenced scheduler: %v, want UNAVAILABLE", err)
	}
	res, _ := anypb.New(&repb.ActionResult{StdoutRaw: []byte("done")})
	if _, err := b.report(time.Second, &rwpb.Lease{Id: leaseID, State: rwpb.LeaseState_COMPLETED, Result: res}); status.Code(err) != codes.Unavailable {
		t.Fatalf("result reported to a fenced scheduler: %v, want UNAVAILABLE (the bot keeps it for the next leader)", err)
	}
	if got := e.ac.get("", running); got != nil {
		t.Fatalf("a fenced scheduler stored the result %v", got)
	}
	if n := e.metric("buildfleet_scheduler_leases_handed_out_total"); n != 1 {
		t.Fatalf("leases handed out %v, want only the one before the fence", n)
	}
	st, err := e.exec.Execute(e.ctx, &repb.ExecuteRequest{ActionDigest: e.putAction("new").Proto()})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Execute on a fenced scheduler: %v, want UNAVAILABLE", err)
	}
}
