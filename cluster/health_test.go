package cluster_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/clustertest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

func readyz(t testing.TB, r *replica) (int, cluster.Status) {
	t.Helper()
	resp, err := http.Get("http://" + r.httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st cluster.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, st
}

// A replica started with an advertise address that does not reach it (nothing listens there,
// or another replica does) would make the others forward every call to the wrong place if it
// led. It checks the address with its own node id before campaigning, so it never leads: it
// logs an error naming the address, /readyz says so, and it keeps serving as a follower; the
// good replica leads and the cluster works through every replica.
func TestReplicaWithWrongAdvertiseAddressNeverLeads(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	dead := clustertest.FreeAddr(t) // nothing listens there
	// The bad replica starts first: without the check it would win the election.
	bad := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{advertise: dead, http: true})
	waitFor(t, "the bad replica to check its address", 10*time.Second, func() bool {
		_, s := readyz(t, bad)
		return len(s.Problems) > 0 && strings.Contains(strings.Join(s.Problems, ";"), "advertise address "+dead+" unreachable")
	})
	good := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true})
	waitFor(t, "the good replica to lead", 10*time.Second, good.leads)
	// A replica advertising the good replica's address reaches another replica there.
	twin := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{advertise: good.addr, http: true})
	waitFor(t, "the twin to check its address", 10*time.Second, func() bool {
		_, s := readyz(t, twin)
		return s.NodeID != "" && strings.Contains(strings.Join(s.Problems, ";"), "another scheduler replica answers there")
	})
	for _, r := range []*replica{bad, twin} {
		waitFor(t, "the follower to see the leader", 10*time.Second, func() bool { l, _ := r.node.Leader(); return l == good.addr })
		code, s := readyz(t, r)
		if code != http.StatusOK || s.Role != "follower" || s.AdvertiseOK || s.Leader != good.addr {
			t.Errorf("/readyz of %s = %d %+v, want a ready follower whose advertise address is not OK", r.addr, code, s)
		}
		if !strings.Contains(r.logs.String(), "--advertise-address "+r.node.Status().AdvertiseAddress+" does not reach this replica") {
			t.Errorf("replica %s logged no error naming its advertise address:\n%s", r.addr, r.logs.String())
		}
	}
	// Calls through every replica reach the good leader.
	for i, r := range []*replica{bad, good, twin} {
		d := st.putAction(t, "through replica "+r.addr)
		s, err := repb.NewExecutionClient(r.conn(t)).Execute(context.Background(), &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
		if err != nil {
			t.Fatal(err)
		}
		if op := recvOp(t, s); op.Name == "" {
			t.Fatalf("Execute through %s: %v", r.addr, op)
		}
		w := newBot(t, r.conn(t), "bot-"+string(rune('a'+i)))
		if len(w.leases) == 0 {
			if _, err := w.update(time.Second, []*rwpb.Lease{}); err != nil {
				t.Fatal(err)
			}
		}
		if len(w.leases) != 1 {
			t.Fatalf("bot through %s got leases %v, want the queued action", r.addr, w.leases)
		}
	}
	// The bad replicas never led, even after the leader resigns: the twin and the bad replica
	// cannot take over, so calls wait for a good replica.
	good.stop()
	time.Sleep(2 * testCluster.SessionTTL)
	if bad.node.Terms() != 0 || twin.node.Terms() != 0 {
		t.Fatalf("a replica with a wrong advertise address led (terms %d, %d)", bad.node.Terms(), twin.node.Terms())
	}
}

// A follower that cannot reach the leader (the network between them cut while the leader
// keeps its etcd session and still reaches itself) logs it with the leader's address and, after twice the session TTL, answers /readyz 503
// with "cannot reach leader", so a load balancer's HTTP check takes it out.
func TestFollowerReportsAnUnreachableLeader(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	network := newCuttableNet()
	b := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true, net: network})
	waitFor(t, "the follower to see the leader", 10*time.Second, func() bool { l, _ := b.node.Leader(); return l == a.addr })
	waitFor(t, "the follower to reach the leader", 10*time.Second, func() bool { _, s := readyz(t, b); return s.LeaderReachable })
	if code, s := readyz(t, b); code != http.StatusOK || !s.Ready || !s.EtcdSession || !s.AdvertiseOK {
		t.Fatalf("/readyz of a healthy follower = %d %+v", code, s)
	}

	network.cutOff(a.addr) // the leader keeps its etcd session but the follower cannot reach it
	ctx, cancel := context.WithTimeout(context.Background(), testCluster.SessionTTL)
	_, err := rwpb.NewBotsClient(b.conn(t)).CreateBotSession(ctx, &rwpb.CreateBotSessionRequest{BotSession: &rwpb.BotSession{BotId: "x"}})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call through the follower to an unreachable leader: %v, want it held until its deadline", err)
	}
	waitFor(t, "the follower to turn unready", 5*testCluster.SessionTTL, func() bool { code, _ := readyz(t, b); return code == http.StatusServiceUnavailable })
	_, s := readyz(t, b)
	if s.LeaderReachable || !strings.Contains(strings.Join(s.Problems, ";"), "cannot reach leader "+a.addr) {
		t.Fatalf("/readyz of the cut-off follower: %+v", s)
	}
	logs := b.logs.String()
	if !strings.Contains(logs, "Forwarding a call to the scheduler leader failed") || !strings.Contains(logs, `"leader":"`+a.addr+`"`) {
		t.Fatalf("follower logged no failed forward naming the leader %s:\n%s", a.addr, logs)
	}
	if n := strings.Count(logs, "Cannot reach the scheduler leader"); n > 2 {
		t.Fatalf("%d warnings about the unreachable leader in %s: not rate-limited", n, 5*testCluster.SessionTTL)
	}
}

// Followers answer /workers with the leader's worker view, fetched from the leader's HTTP
// address; the X-Buildfleet-Leader header names the leader.
func TestFollowerServesTheLeadersWorkerView(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true})
	waitFor(t, "the follower to see the leader", 10*time.Second, func() bool { l, _ := b.node.Leader(); return l == a.addr })
	newBot(t, a.conn(t), "bot-seen")
	resp, err := http.Get("http://" + b.httpAddr + "/workers")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "bot-seen") || resp.Header.Get("X-Buildfleet-Leader") != a.addr {
		t.Fatalf("follower /workers = %d %q (leader header %q), want the leader's view", resp.StatusCode, body, resp.Header.Get("X-Buildfleet-Leader"))
	}
}

// The fence is checked synchronously: once the clock passes the validity of the last confirmed
// renewal, the term's scheduler refuses to hand out a lease at once, before the fence's timer
// goroutine has stepped the replica down (after a SIGCONT both run at the same moment).
func TestFenceIsCheckedWithoutWaitingForTheTimer(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	clk := clock.NewFake(time.Now())
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{clk: clk})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	a.mu.Lock()
	sched, fence := a.scheds[0], a.fences[0]
	a.mu.Unlock()
	if err := fence(); err != nil {
		t.Fatalf("fence of a fresh term: %v", err)
	}
	_, _, bots := sched.Services()
	d := st.putAction(t, "queued before the freeze")
	s, err := repb.NewExecutionClient(a.conn(t)).Execute(context.Background(), &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
	if err != nil {
		t.Fatal(err)
	}
	recvOp(t, s)

	clk.Advance(testCluster.SessionTTL) // the process "wakes up" past its lease's validity
	reply, err := bots.CreateBotSession(context.Background(), &rwpb.CreateBotSessionRequest{BotSession: &rwpb.BotSession{BotId: "woken", Status: rwpb.BotStatus_OK}})
	if status.Code(err) != codes.Unavailable || len(reply.GetLeases()) != 0 {
		t.Fatalf("CreateBotSession on the expired term: %v, %v; want UNAVAILABLE and no lease", reply, err)
	}
	if fence() == nil {
		t.Fatal("fence reports a valid term past its validity")
	}
	if n := a.counter("buildfleet_scheduler_leases_handed_out_total"); n != 0 {
		t.Fatalf("the expired term handed out %v leases", n)
	}
}

// etcd frozen past the session TTL: the leader steps down, and a follower, its own session gone
// too, stops naming the former leader as a reachable leader in /readyz (the former leader still
// answers, but that it does not lead) for as long as etcd is away, while staying ready; once etcd
// is back, the follower names the new leader again.
func TestFollowerDoesNotNameAStaleLeaderWhileEtcdIsAway(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true})
	waitFor(t, "a leader", 10*time.Second, a.leads)
	b := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{http: true})
	waitFor(t, "the follower to reach the leader", 10*time.Second, func() bool {
		_, s := readyz(t, b)
		return s.Leader == a.addr && s.LeaderReachable
	})

	etcd.Pause()
	t.Cleanup(etcd.Resume) // before the replicas stop, should the test end early
	waitFor(t, "the leader to step down", 2*testCluster.SessionTTL, func() bool { return !a.leads() })
	waitFor(t, "the follower to lose its etcd session", 3*testCluster.SessionTTL, func() bool { return !b.node.Status().EtcdSession })
	waitFor(t, "the follower to stop naming the former leader", testCluster.SessionTTL, func() bool {
		_, s := readyz(t, b)
		return s.Leader != a.addr && !s.LeaderReachable
	})
	// For the rest of the outage it never names it again, and stays ready (every replica is
	// in the same state: a load balancer must keep the cache served).
	for end := time.Now().Add(testCluster.SessionTTL); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		code, s := readyz(t, b)
		if code != http.StatusOK || s.Leader != "" || s.LeaderReachable || !strings.Contains(strings.Join(s.Problems, ";"), "scheduler calls are held") {
			t.Fatalf("/readyz of a follower with etcd frozen and the leader stepped down = %d %+v", code, s)
		}
	}

	etcd.Resume()
	waitFor(t, "a leader after etcd resumed", 20*time.Second, func() bool { return a.leads() || b.leads() })
	leader, follower := a, b
	if b.leads() {
		leader, follower = b, a
	}
	waitFor(t, "the follower to name the new leader", 10*time.Second, func() bool {
		code, s := readyz(t, follower)
		return code == http.StatusOK && s.Leader == leader.addr && s.LeaderReachable && s.EtcdSession
	})
}
