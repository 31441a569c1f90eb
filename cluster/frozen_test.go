package cluster_test

import (
	"context"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/buildfleet/buildfleet/internal/clustertest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// A frozen leader (SIGSTOP: its TCP connections stay up, nothing answers, its etcd lease runs
// out) does not stall the calls a follower forwards to it: once the follower sees the leader
// change, a client's Execute stream continues as a WaitExecution on the next leader and a
// worker's held UpdateBotSession is sent again there, within about a session TTL, and the
// action completes once. The replicas run in this process, so the leader is frozen by pausing
// the TCP proxy its advertise address points at and closing its etcd client (no renewals).
func TestFrozenLeaderDoesNotStallForwardedCalls(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	sc := scheduler.Config{AdoptionWindow: time.Second, LongPollMax: time.Second}
	px := startProxy(t)
	a := startReplica(t, etcd, st, testCluster, sc, replicaOpts{advertise: px.addr})
	px.setBackends(a.addr)
	waitFor(t, "the first replica to lead", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, sc)
	waitFor(t, "the follower to see the leader", 10*time.Second, func() bool {
		l, _ := b.node.Leader()
		return l == px.addr
	})

	conn := b.conn(t)
	d := st.putAction(t, "sleep 1")
	stream, err := repb.NewExecutionClient(conn).Execute(context.Background(), &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
	if err != nil {
		t.Fatal(err)
	}
	if op := recvOp(t, stream); op.Name == "" {
		t.Fatalf("first message %v", op)
	}
	w := newBot(t, conn, "bot-1")
	if len(w.leases) != 1 {
		if _, err := w.update(2*time.Second, []*rwpb.Lease{}); err != nil || len(w.leases) != 1 {
			t.Fatalf("bot got leases %v, %v", w.leases, err)
		}
	}
	leaseID := w.leases[0].Id
	if n := a.counter("buildfleet_scheduler_leases_handed_out_total"); n != 1 {
		t.Fatalf("leader handed out %v leases, want 1", n)
	}
	// The client's stream stays forwarded to the leader while it is frozen. Messages and the
	// stream's end come through one channel, in the order they arrived (two channels would let
	// a select see the end of the stream before the last operation).
	type recv struct {
		op  *longrunningpb.Operation
		err error
	}
	recvs := make(chan recv, 10)
	go func() {
		for {
			op, err := stream.Recv()
			recvs <- recv{op, err}
			if err != nil {
				return
			}
		}
	}()

	// Freeze the leader: no byte from the follower reaches it, and it renews its etcd lease
	// no more.
	px.pause()
	a.cli.Close()
	frozen := time.Now()
	// The bot reports its lease through the follower: the follower forwards the long-poll to
	// the frozen leader, then, once the leader changes, to the next one (itself), which adopts
	// the lease. Without the move the call would hang until its deadline.
	reply, err := w.update(15*time.Second, nil)
	if err != nil {
		t.Fatalf("UpdateBotSession across the frozen leader: %v (after %s)", err, time.Since(frozen))
	}
	took := time.Since(frozen)
	t.Logf("FIGURE: leader frozen → worker's forwarded long-poll answered by the new leader: %s (session TTL %s)", took.Round(time.Millisecond), testCluster.SessionTTL)
	if !b.leads() {
		t.Fatal("the follower answered the bot without leading")
	}
	if limit := 2*testCluster.SessionTTL + sc.LongPollMax + time.Second; took > limit {
		t.Fatalf("the bot's long-poll moved to the new leader after %s, want within %s", took, limit)
	}
	if len(reply.Leases) != 1 || reply.Leases[0].Id != leaseID {
		t.Fatalf("after the failover the bot holds %v, want its lease %s kept", reply.Leases, leaseID)
	}
	if n := b.counter("buildfleet_scheduler_leases_adopted_total"); n != 1 {
		t.Fatalf("leases adopted %v, want 1", n)
	}
	// The client's stream moved too: it carries a message from the new leader well before the
	// result (the WaitExecution it continues as sends the operation's state first).
	select {
	case r := <-recvs:
		if r.err != nil {
			t.Fatalf("client's Execute stream failed across the frozen leader: %v", r.err)
		}
		if r.op.Done {
			t.Fatalf("operation done before the bot reported a result: %v", r.op)
		}
	case <-time.After(testCluster.SessionTTL):
		t.Fatalf("client's Execute stream still attached to the frozen leader %s after the failover", time.Since(frozen))
	}
	res, _ := anypb.New(&repb.ActionResult{StdoutRaw: []byte("ran once")})
	if _, err := w.update(5*time.Second, []*rwpb.Lease{{Id: leaseID, State: rwpb.LeaseState_COMPLETED, Result: res}}); err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		select {
		case r := <-recvs:
			if r.err != nil {
				t.Fatalf("client's Execute stream failed: %v", r.err)
			}
			if op := r.op; op.Done {
				resp := &repb.ExecuteResponse{}
				if err := op.GetResponse().UnmarshalTo(resp); err != nil {
					t.Fatal(err)
				}
				if string(resp.Result.GetStdoutRaw()) != "ran once" {
					t.Fatalf("result %v", resp)
				}
				done = true
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no result on the client's stream")
		}
	}
	if n := b.counter("buildfleet_scheduler_leases_handed_out_total"); n != 0 {
		t.Fatalf("new leader handed out %v leases: the action ran twice", n)
	}
	px.resume()
}
