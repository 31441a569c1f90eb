package scheduler_test

import (
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/scheduler"
)

// drain runs every queued action on one single-slot bot and returns the actions in the order
// the bot received them.
func (e *env) drainOrder(n int) []digest.Digest {
	e.t.Helper()
	b, reply := e.newBot("serial", 1)
	var order []digest.Digest
	for len(order) < n {
		if len(reply.Leases) != 1 {
			e.t.Fatalf("after %d actions: leases %v", len(order), reply.Leases)
		}
		l := reply.Leases[0]
		order = append(order, leaseAction(e.t, l))
		reply = b.update(completed(e.t, l.Id, &repb.ActionResult{}, codes.OK))
	}
	return order
}

func checkOrder(t *testing.T, got []digest.Digest, names map[digest.Digest]string, want ...string) {
	t.Helper()
	var g []string
	for _, d := range got {
		g = append(g, names[d])
	}
	if len(g) != len(want) {
		t.Fatalf("order %v, want %v", g, want)
	}
	for i := range want {
		if g[i] != want[i] {
			t.Fatalf("order %v, want %v", g, want)
		}
	}
}

func TestFairQueueingBetweenInstances(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	names := map[digest.Digest]string{}
	put := func(instance, name string) {
		d := e.putAction(name)
		names[d] = name
		e.run(instance, d)
	}
	// A big build in one instance does not starve a small one arriving later.
	put("big", "big1")
	put("big", "big2")
	put("big", "big3")
	put("small", "small1")
	put("small", "small2")
	checkOrder(t, e.drainOrder(5), names, "big1", "small1", "big2", "small2", "big3")
}

func TestFairQueueingBetweenInvocationsThenPriority(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	names := map[digest.Digest]string{}
	put := func(header, invocation, name string, priority int32) {
		d := e.putAction(name)
		names[d] = name
		md, _ := proto.Marshal(&repb.RequestMetadata{ToolInvocationId: invocation, ToolDetails: &repb.ToolDetails{ToolName: "pants"}})
		s := e.execute(&repb.ExecuteRequest{
			ActionDigest: d.Proto(), SkipCacheLookup: true,
			ExecutionPolicy: &repb.ExecutionPolicy{Priority: priority},
		}, header, string(md))
		recv(t, s)
	}
	const bazel = "build.bazel.remote.execution.v2.requestmetadata-bin"
	const pants = "google.devtools.remoteexecution.v1test.requestmetadata-bin"
	put(bazel, "inv-a", "a1", 0)
	put(bazel, "inv-a", "a2", 0)
	put(bazel, "inv-a", "a3-urgent", -5) // lower value = higher priority
	put(pants, "inv-b", "b1", 0)
	put(pants, "inv-b", "b2", 0)
	checkOrder(t, e.drainOrder(5), names, "a3-urgent", "b1", "a1", "b2", "a2")
}
