package scheduler_test

import (
	"fmt"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// bazelMetadata returns the RequestMetadata header pair Bazel sends for one action.
func bazelMetadata(t *testing.T, invocation, mnemonic, target string) []string {
	t.Helper()
	b, err := proto.Marshal(&repb.RequestMetadata{
		ToolDetails:      &repb.ToolDetails{ToolName: "bazel", ToolVersion: "4.2.3"},
		ToolInvocationId: invocation, CorrelatedInvocationsId: "req-1", ActionMnemonic: mnemonic, TargetId: target,
	})
	if err != nil {
		t.Fatal(err)
	}
	return []string{"build.bazel.remote.execution.v2.requestmetadata-bin", string(b)}
}

// A build told as a story: two actions of one invocation, one fails, one succeeds slowly; the
// build view groups them with the right counts and the failure first, the action view finds
// each with its worker, attempts and result, and the queue and throughput views follow.
func TestActivityViewsOfABuild(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	bad, good := e.putAction("exit 3"), e.putAction("true")
	sBad := e.execute(&repb.ExecuteRequest{ActionDigest: bad.Proto(), SkipCacheLookup: true}, bazelMetadata(t, "inv-1", "Genrule", "//:bad")...)
	recv(t, sBad)
	sGood := e.execute(&repb.ExecuteRequest{ActionDigest: good.Proto(), SkipCacheLookup: true}, bazelMetadata(t, "inv-1", "Genrule", "//:good")...)
	recv(t, sGood)

	if q := e.sched.Queue(); len(q) != 1 || q[0].Depth != 2 || q[0].Instance != "" || !q[0].OldestQueuedAt.Equal(epoch) {
		t.Fatalf("Queue() = %+v, want one group of 2 queued at %v", q, epoch)
	}
	if bs := e.sched.Builds(); len(bs) != 1 || bs[0].ID != "inv-1" || bs[0].Running[""] != 2 || bs[0].ToolName != "bazel" {
		t.Fatalf("Builds() while queued = %+v", bs)
	}

	w, reply := e.newBot("w1", 2)
	if len(reply.Leases) != 2 {
		t.Fatalf("bot got %d leases, want 2", len(reply.Leases))
	}
	w.update(active(reply.Leases[0].Id), active(reply.Leases[1].Id))
	leases := e.sched.Leases()[w.session]
	if len(leases) != 2 || !leases[0].Active || leases[0].Attempt != 1 || leases[0].Metadata.GetActionMnemonic() != "Genrule" {
		t.Fatalf("Leases() = %+v", leases)
	}
	e.clk.Advance(5 * time.Second)
	byAction := map[string]string{}
	for _, l := range reply.Leases {
		byAction[leaseAction(t, l).String()] = l.Id
	}
	w.update(completed(t, byAction[bad.String()], &repb.ActionResult{ExitCode: 3, StderrRaw: []byte("boom")}, codes.OK))
	e.clk.Advance(5 * time.Second)
	w.update(completed(t, byAction[good.String()], &repb.ActionResult{}, codes.OK))
	recvDone(t, sBad)
	recvDone(t, sGood)

	d, ok := e.sched.Build("inv-1")
	if !ok {
		t.Fatal("Build(inv-1) not found")
	}
	if c := d.Counts[""]; c != (scheduler.BuildCounts{Remote: 2, Succeeded: 1, Failed: 1}) {
		t.Fatalf("counts %+v, want 2 remote, 1 failed", c)
	}
	if len(d.Actions) != 2 || d.Actions[0].Action != bad || d.Actions[0].Outcome != scheduler.OutcomeFailed ||
		d.Actions[0].ExitCode != 3 || d.Actions[0].TargetID != "//:bad" {
		t.Fatalf("actions %+v, want the failure first", d.Actions)
	}
	if len(d.Slowest) != 2 || d.Slowest[0].Action != good || d.Slowest[0].Duration != 10*time.Second {
		t.Fatalf("slowest %+v, want the good action (10 s) first", d.Slowest)
	}
	if len(d.Live) != 0 || d.Running[""] != 0 {
		t.Fatalf("live %+v running %v after the build", d.Live, d.Running)
	}
	ex := e.sched.Executions(bad)
	if len(ex) != 1 || ex[0].Worker != "w1" || ex[0].Attempts != 1 || string(ex[0].Result.GetStderrRaw()) != "boom" {
		t.Fatalf("Executions(bad) = %+v", ex)
	}
	if got := e.sched.WorkerExecutions("w1", 10); len(got) != 2 || got[0].Action != good {
		t.Fatalf("WorkerExecutions(w1) = %+v", got)
	}
	var total scheduler.BuildCounts
	for _, b := range e.sched.Throughput() {
		c := b.Counts[""]
		total.Remote += c.Remote
		total.Failed += c.Failed
	}
	if total.Remote != 2 || total.Failed != 1 {
		t.Fatalf("throughput total %+v", total)
	}
}

// An interruption told as a story: a worker drains with a spot notice, finishes one action,
// hands the other back after it ran 30 s; a second worker vanishes without notice holding a
// lease that ran 10 s. Each interruption shows its kind, counts and the action-seconds lost.
func TestActivityInterruptions(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: time.Minute})
	a1, a2, a3 := e.putAction("one"), e.putAction("two"), e.putAction("three")
	e.run("", a1)
	e.run("", a2)
	spot, reply := e.newBot("spot", 2)
	spot.update(active(reply.Leases[0].Id), active(reply.Leases[1].Id))
	e.clk.Advance(30 * time.Second)
	deadline := e.clk.Now().Add(2 * time.Minute).UTC()
	spot.status = rwpb.BotStatus_BOT_TERMINATING
	spot.drainConfigs(deadline, "spot-interruption", "terminate")
	spot.update()
	spot.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{}, codes.OK))
	spot.update(completed(t, reply.Leases[1].Id, nil, codes.Unavailable))

	e.run("", a3)
	other, r2 := e.newBot("other", 1)
	if len(r2.Leases) != 1 {
		t.Fatalf("other got %d leases", len(r2.Leases))
	}
	other.update(active(r2.Leases[0].Id))
	e.clk.Advance(10 * time.Second)
	// spot and other both stop calling in; their sessions expire.
	e.clk.Advance(time.Minute)
	waitFor(t, "both sessions gone", func() bool {
		return e.worker("spot").State == scheduler.WorkerGone && e.worker("other").State == scheduler.WorkerGone
	})

	ins := e.sched.Interruptions()
	if len(ins) != 2 {
		t.Fatalf("Interruptions() = %+v, want 2", ins)
	}
	got := map[string]scheduler.Interruption{}
	for _, in := range ins {
		got[in.BotID] = in
	}
	s := got["spot"]
	if !s.Announced || s.Kind != "spot-interruption" || s.Reason != "terminate" || !s.Deadline.Equal(deadline) ||
		s.FinishedDuringDrain != 1 || s.HandedBack != 1 || s.Lost != 0 || s.LostWork != 30*time.Second || s.GoneAt.IsZero() {
		t.Fatalf("spot interruption %+v", s)
	}
	o := got["other"]
	if o.Announced || o.Kind != "" || o.Lost != 1 || o.LostWork != 70*time.Second || o.GoneAt.IsZero() {
		t.Fatalf("unannounced interruption %+v", o)
	}
}

// What the views remember is bounded: a flood of cache hits from many builds keeps the last
// 1000 executions, the 50 most recently active builds and 1000 actions of a build, while the
// counts stay exact.
func TestActivityIsBounded(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("cached")
	if err := e.ac.Put(e.ctx, "", d, &repb.ActionResult{}); err != nil {
		t.Fatal(err)
	}
	rac := e.sched.RecordingActionCache(e.ac)
	hit := func(invocation string) {
		md := bazelMetadata(t, invocation, "Genrule", "//:x")
		if _, err := rac.Get(metadata.NewIncomingContext(e.ctx, metadata.Pairs(md...)), "", d); err != nil {
			t.Fatal(err)
		}
		e.clk.Advance(time.Millisecond)
	}
	for i := 0; i < 60; i++ {
		hit(fmt.Sprintf("inv-%03d", i))
	}
	for i := 0; i < 1140; i++ {
		hit("inv-059")
	}
	if n := len(e.sched.Executions(d)); n != 1000 {
		t.Errorf("%d executions remembered, want the last 1000", n)
	}
	builds := e.sched.Builds()
	if len(builds) != 50 || builds[0].ID != "inv-059" {
		t.Fatalf("%d builds remembered, newest %q; want 50, inv-059", len(builds), builds[0].ID)
	}
	for _, b := range builds {
		want := 1
		if b.ID == "inv-059" {
			want = 1141
		}
		if b.ID < "inv-010" {
			t.Errorf("build %s should have been dropped (least recently active)", b.ID)
		}
		if c := b.Counts[""]; c.Cached != want || c.Finished() != want {
			t.Errorf("build %s counts %+v, want %d cached", b.ID, c, want)
		}
	}
	if bd, ok := e.sched.Build("inv-059"); !ok || len(bd.Actions) != 1000 {
		t.Errorf("build inv-059 lists %d actions, want the last 1000", len(bd.Actions))
	}
	if _, err := rac.Get(e.ctx, "", e.putAction("never cached")); status.Code(err) != codes.NotFound {
		t.Errorf("a miss: %v, want NOT_FOUND passed through", err)
	}
}
