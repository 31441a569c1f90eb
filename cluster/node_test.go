package cluster_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/clustertest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

var testCluster = cluster.Config{SessionTTL: 2 * time.Second, RetryInterval: 50 * time.Millisecond}

// The story of a failover, on a real etcd: a client and a bot talk to the follower, which
// forwards to the leader; the leader crashes while the bot runs the action. The follower holds
// the calls, wins the election, adopts the bot's lease instead of running the action again, and
// the client's Execute stream (through the follower) ends with the result, never an error.
func TestFollowerForwardsAndTakesOverWithoutRerunning(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	sc := scheduler.Config{AdoptionWindow: time.Second}
	a := startReplica(t, etcd, st, testCluster, sc)
	waitFor(t, "the first replica to lead", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, sc)
	waitFor(t, "the second replica to see the leader", 10*time.Second, func() bool {
		l, _ := b.node.Leader()
		return l == a.addr
	})
	if b.leads() {
		t.Fatal("two replicas lead")
	}

	conn := b.conn(t)
	exec := repb.NewExecutionClient(conn)
	d := st.putAction(t, "sleep 1")
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-test", "kept")
	stream, err := exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
	if err != nil {
		t.Fatal(err)
	}
	first := recvOp(t, stream)
	if first.Name == "" {
		t.Fatalf("first message %v", first)
	}
	// The client's metadata reached the leader with the call.
	if got := <-a.headers; got != "kept+forwarded" {
		t.Fatalf("leader received x-test %q, want the client's value, forwarded", got)
	}
	w := newBot(t, conn, "bot-1")
	if len(w.leases) != 1 {
		if _, err := w.update(time.Second, []*rwpb.Lease{}); err != nil || len(w.leases) != 1 {
			t.Fatalf("bot got leases %v, %v", w.leases, err)
		}
	}
	leaseID := w.leases[0].Id
	if _, err := w.update(time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if n := a.counter("buildfleet_scheduler_leases_handed_out_total"); n != 1 {
		t.Fatalf("leader handed out %v leases, want 1", n)
	}

	// The leader dies without resigning.
	killed := time.Now()
	a.crash()
	elected := make(chan time.Duration, 1)
	go func() {
		for !b.leads() {
			time.Sleep(5 * time.Millisecond)
		}
		elected <- time.Since(killed)
	}()
	// The bot keeps reporting its lease through the follower: the call is held until a leader
	// is elected, then adopted (and held as a long-poll: nothing changed for the bot).
	reply, err := w.update(8*time.Second, nil)
	if err != nil {
		t.Fatalf("UpdateBotSession across the failover: %v", err)
	}
	if !b.leads() {
		t.Fatal("the follower answered the bot without leading")
	}
	t.Logf("kill → follower leads: %s (session TTL %s)", <-elected, testCluster.SessionTTL)
	if len(reply.Leases) != 1 || reply.Leases[0].Id != leaseID {
		t.Fatalf("after the failover the bot holds %v, want its lease %s kept", reply.Leases, leaseID)
	}
	if n := b.counter("buildfleet_scheduler_leases_adopted_total"); n != 1 {
		t.Fatalf("leases adopted %v, want 1", n)
	}
	res, _ := anypb.New(&repb.ActionResult{StdoutRaw: []byte("ran once")})
	if _, err := w.update(5*time.Second, []*rwpb.Lease{{Id: leaseID, State: rwpb.LeaseState_COMPLETED, Result: res}}); err != nil {
		t.Fatal(err)
	}
	var last *repb.ExecuteResponse
	for {
		op, err := stream.Recv()
		if err != nil {
			t.Fatalf("client's Execute stream failed across the failover: %v", err)
		}
		if op.Done {
			last = &repb.ExecuteResponse{}
			if err := op.GetResponse().UnmarshalTo(last); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if string(last.Result.GetStdoutRaw()) != "ran once" {
		t.Fatalf("result %v", last)
	}
	if n := b.counter("buildfleet_scheduler_leases_handed_out_total"); n != 0 {
		t.Fatalf("new leader handed out %v leases: the action ran twice", n)
	}
}

// While no replica leads, calls are held and then served by the first leader, not failed.
// A call forwarded by another replica to one that does not lead is answered UNAVAILABLE at once.
func TestCallsAreHeldUntilALeaderIsElected(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, scheduler.Config{})
	waitFor(t, "the follower to see the leader", 10*time.Second, func() bool { l, _ := b.node.Leader(); return l == a.addr })

	fwd := metadata.AppendToOutgoingContext(context.Background(), "x-buildfleet-forwarded", "1")
	_, err := rwpb.NewBotsClient(b.conn(t)).CreateBotSession(fwd, &rwpb.CreateBotSessionRequest{BotSession: &rwpb.BotSession{BotId: "x"}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("forwarded call at a follower: %v, want UNAVAILABLE", err)
	}

	a.crash()
	start := time.Now()
	w := newBot(t, b.conn(t), "bot-held") // held until b leads
	if !b.leads() || w.session == "" {
		t.Fatalf("bot session %q opened while the follower does not lead", w.session)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("held %s", el)
	}
}

// etcd frozen (SIGSTOP) past the session TTL: the leader stops leading before its lease can
// expire; at no moment do two replicas lead; once etcd is back, one replica leads again and
// the CAS is served throughout.
func TestFrozenEtcdFencesTheLeader(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, scheduler.Config{})
	waitFor(t, "the follower to see the leader", 10*time.Second, func() bool { l, _ := b.node.Leader(); return l == a.addr })

	var both atomic.Bool
	// silent is a /readyz view that says the leader is unreachable but lists no problem.
	var silent atomic.Value
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if a.leads() && b.leads() {
				both.Store(true)
			}
			for _, r := range []*replica{a, b} {
				if s := r.node.Status(); !s.LeaderReachable && len(s.Problems) == 0 {
					silent.Store(s)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	etcd.Pause()
	paused := time.Now()
	waitFor(t, "the leader to step down", 2*testCluster.SessionTTL, func() bool { return !a.leads() })
	t.Logf("leader stepped down %s after etcd froze (TTL %s)", time.Since(paused), testCluster.SessionTTL)
	if time.Since(paused) > testCluster.SessionTTL {
		t.Fatalf("leader kept leading %s with etcd frozen, past the TTL %s", time.Since(paused), testCluster.SessionTTL)
	}
	// The replica that stepped down, its session gone, names no leader (not itself).
	waitFor(t, "the stepped-down leader to stop naming itself leader", testCluster.SessionTTL, func() bool {
		s := a.node.Status()
		return s.Leader != a.addr && !s.EtcdSession
	})
	if s := a.node.Status(); s.LeaderReachable || !strings.Contains(strings.Join(s.Problems, ";"), "no leader known") {
		t.Fatalf("status of the stepped-down leader with etcd frozen: %+v", s)
	}
	// The CAS keeps being served by both replicas.
	d := st.putAction(t, "cas while etcd is frozen")
	for _, r := range []*replica{a, b} {
		resp, err := repb.NewContentAddressableStorageClient(r.conn(t)).FindMissingBlobs(context.Background(),
			&repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d.Proto()}})
		if err != nil || len(resp.MissingBlobDigests) != 0 {
			t.Fatalf("FindMissingBlobs on %s with etcd frozen: %v, %v", r.addr, resp, err)
		}
	}
	time.Sleep(testCluster.SessionTTL) // etcd stays frozen past the TTL
	etcd.Resume()
	waitFor(t, "a leader after etcd resumed", 20*time.Second, func() bool { return a.leads() || b.leads() })
	close(stop)
	<-sampled
	if both.Load() {
		t.Fatal("two replicas led at the same time")
	}
	if s := silent.Load(); s != nil {
		t.Fatalf("a replica's status said the leader is unreachable without a problem in words: %+v", s)
	}
}

// etcd restarted (down for longer than the session TTL): a leader is elected again about a
// session TTL after etcd answers, not after the etcd client's reconnection backoff or the
// lease of the replica that stepped down running out on its own.
func TestLeaderIsElectedSoonAfterEtcdRestarts(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, scheduler.Config{})
	waitFor(t, "the follower to see the leader", 10*time.Second, func() bool { l, _ := b.node.Leader(); return l == a.addr })

	back := etcd.Restart(t, 5*testCluster.SessionTTL)
	waitFor(t, "a leader after etcd restarted", 30*time.Second, func() bool { return a.leads() || b.leads() })
	took := time.Since(back)
	t.Logf("FIGURE: etcd answering again → a replica leads: %s (session TTL %s)", took.Round(time.Millisecond), testCluster.SessionTTL)
	if took > testCluster.SessionTTL*3/2 {
		t.Fatalf("a leader was elected %s after etcd came back, want about the session TTL %s", took, testCluster.SessionTTL)
	}
}
