package cluster_test

import (
	"context"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/buildfleet/buildfleet/internal/clustertest"
	"github.com/buildfleet/buildfleet/scheduler"
)

// BenchmarkNoOpExecuteThroughFollower measures a no-op Execute (an action cache hit: one
// message, done) sent straight to the leader and through a follower, alternately in the same
// loop on a real etcd, and reports both latencies and their ratio (follower/leader).
func BenchmarkNoOpExecuteThroughFollower(b *testing.B) {
	etcd := clustertest.StartEtcd(b)
	st := newShared(b)
	leader := startReplica(b, etcd, st, testCluster, scheduler.Config{})
	waitFor(b, "a leader", 10*time.Second, leader.leads)
	follower := startReplica(b, etcd, st, testCluster, scheduler.Config{})
	waitFor(b, "the follower to see the leader", 10*time.Second, func() bool { l, _ := follower.node.Leader(); return l == leader.addr })

	d := st.putAction(b, "no-op")
	if err := st.ac.Put(context.Background(), "", d, &repb.ActionResult{ExitCode: 0}); err != nil {
		b.Fatal(err)
	}
	req := &repb.ExecuteRequest{ActionDigest: d.Proto()}
	direct := repb.NewExecutionClient(leader.conn(b))
	forwarded := repb.NewExecutionClient(follower.conn(b))
	execute := func(c repb.ExecutionClient) time.Duration {
		start := time.Now()
		s, err := c.Execute(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		op := recvOp(b, s)
		if !op.Done {
			b.Fatalf("no-op Execute not done at once: %v", op)
		}
		return time.Since(start)
	}
	execute(direct)
	execute(forwarded)
	var viaLeader, viaFollower time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		viaLeader += execute(direct)
		viaFollower += execute(forwarded)
	}
	b.StopTimer()
	b.ReportMetric(float64(viaLeader.Microseconds())/float64(b.N), "leader-µs/op")
	b.ReportMetric(float64(viaFollower.Microseconds())/float64(b.N), "follower-µs/op")
	b.ReportMetric(float64(viaFollower)/float64(viaLeader), "follower/leader")
}
