package scheduler_test

import (
	"testing"
	"time"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// TestClosedSchedulerClearsItsGauges: a closed scheduler (with --ha=etcd, a leader whose term
// ended; it keeps serving as a follower) exports no stale queue or worker counts, since its
// queue and bots are the next leader's and a sum over the replicas must count the leader's
// only. Its counters stay, and calls it still receives do not bring the gauges back.
func TestClosedSchedulerClearsItsGauges(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	e.run("", e.putAction("leased"))
	b, _ := e.newBot("bot-1", 1)
	if len(b.leases) != 1 {
		t.Fatalf("bot holds %d leases, want 1", len(b.leases))
	}
	e.run("", e.putAction("queued"))
	gauges := func() map[string]float64 {
		g := e.slots()
		g["queue_depth"] = e.metric("buildfleet_scheduler_queue_depth", "platform", "default")
		g["serving"] = e.metric("buildfleet_scheduler_workers", "state", scheduler.WorkerServing)
		return g
	}
	if got, want := gauges(), map[string]float64{"busy": 1, "idle": 0, "draining": 0, "queue_depth": 1, "serving": 1}; !sameCounts(got, want) {
		t.Fatalf("gauges of the running scheduler %v, want %v", got, want)
	}

	e.sched.Close()
	zero := map[string]float64{"busy": 0, "idle": 0, "draining": 0, "queue_depth": 0, "serving": 0}
	if got := gauges(); !sameCounts(got, zero) {
		t.Fatalf("gauges of the closed scheduler %v, want all zero", got)
	}
	if n := e.metric("buildfleet_scheduler_leases_handed_out_total"); n != 1 {
		t.Fatalf("leases_handed_out_total of the closed scheduler = %v, want 1 (counters stay)", n)
	}
	// Another bot calls the closed scheduler (refused) and time passes every session timeout.
	_, _ = e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{Parent: "farm", BotSession: &rwpb.BotSession{BotId: "bot-2", Status: rwpb.BotStatus_OK}})
	e.clk.Advance(10 * time.Minute)
	if got := gauges(); !sameCounts(got, zero) {
		t.Fatalf("gauges of the closed scheduler after more calls %v, want all zero", got)
	}
}
