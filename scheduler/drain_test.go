package scheduler_test

import (
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// drainConfigs returns the bot's worker with the drain keys set.
func (b *bot) drainConfigs(deadline time.Time, kind, reason string) {
	w := proto.Clone(b.worker).(*rwpb.Worker)
	w.Configs = append(w.Configs,
		&rwpb.Worker_Config{Key: scheduler.ConfigDrainDeadline, Value: deadline.Format(time.RFC3339Nano)},
		&rwpb.Worker_Config{Key: scheduler.ConfigDrainKind, Value: kind},
		&rwpb.Worker_Config{Key: scheduler.ConfigDrainReason, Value: reason},
	)
	b.worker = w
}

// slots returns the worker_slots gauge by state.
func (e *env) slots() map[string]float64 {
	return map[string]float64{
		"busy":     e.metric("buildfleet_scheduler_worker_slots", "state", "busy"),
		"idle":     e.metric("buildfleet_scheduler_worker_slots", "state", "idle"),
		"draining": e.metric("buildfleet_scheduler_worker_slots", "state", "draining"),
	}
}

func sameCounts(got, want map[string]float64) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return len(got) == len(want)
}

// TestDrainStory follows one spot worker through a drain as the scheduler sees it: its state,
// deadline and reason in the worker view, and every drain metric.
func TestDrainStory(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: 20 * time.Second})
	short, long := e.putAction("sleep 1"), e.putAction("sleep 60")
	ss, _ := e.run("", short)
	ls, lop := e.run("", long)
	a, reply := e.newBot("spot", 4)
	if len(reply.Leases) != 2 {
		t.Fatalf("spot bot got %v, want both actions", reply.Leases)
	}
	ids := map[string]string{}
	for _, l := range reply.Leases {
		ids[leaseAction(t, l).String()] = l.Id
	}
	shortID, longID := ids[short.String()], ids[long.String()]
	a.update(active(shortID), active(longID))
	steady, _ := e.newBot("steady", 2)

	// Serving: 2 busy slots and 2 idle on the spot bot, 2 idle on the steady one.
	if got, want := e.slots(), map[string]float64{"busy": 2, "idle": 4, "draining": 0}; !sameCounts(got, want) {
		t.Fatalf("slots while serving %v, want %v", got, want)
	}
	if n := e.metric("buildfleet_scheduler_workers", "state", "serving"); n != 2 {
		t.Fatalf("workers{serving} = %v", n)
	}

	// The spot notice: BOT_TERMINATING with its deadline and kind in the worker configs.
	e.clk.Advance(time.Second)
	deadline := e.clk.Now().Add(2 * time.Minute)
	a.status = rwpb.BotStatus_BOT_TERMINATING
	a.drainConfigs(deadline, "spot-interruption", "terminate")
	e.run("", e.putAction("queued after the notice"))
	if reply := a.update(); len(reply.Leases) != 2 {
		t.Fatalf("draining bot's reply %v, want only its two leases", reply.Leases)
	}
	w := e.worker("spot")
	if w.State != scheduler.WorkerDraining || !w.DrainingSince.Equal(epoch.Add(time.Second)) ||
		!w.DrainDeadline.Equal(deadline) || w.DrainKind != "spot-interruption" || w.DrainReason != "terminate" {
		t.Fatalf("worker view %+v", w)
	}
	if n := e.metric("buildfleet_scheduler_drain_notices_total", "kind", "spot-interruption"); n != 1 {
		t.Fatalf("drain_notices_total{spot-interruption} = %v", n)
	}
	// The queued action went to the steady bot, not to the draining one's free slots.
	if reply := steady.update(); len(reply.Leases) != 1 {
		t.Fatalf("steady bot got %v", reply.Leases)
	}
	if got, want := e.slots(), map[string]float64{"busy": 1, "idle": 1, "draining": 2}; !sameCounts(got, want) {
		t.Fatalf("slots while draining %v, want %v", got, want)
	}

	// A second notice brings the deadline forward; the view follows, the notice is not
	// counted twice.
	sooner := deadline.Add(-time.Minute)
	a.drainConfigs(sooner, "spot-interruption", "terminate")
	a.update()
	if w := e.worker("spot"); !w.DrainDeadline.Equal(sooner) {
		t.Fatalf("deadline after a sooner notice %v, want %v", w.DrainDeadline, sooner)
	}
	if n := e.metric("buildfleet_scheduler_drain_notices_total", "kind", "spot-interruption"); n != 1 {
		t.Fatalf("drain_notices_total counted a repeated report: %v", n)
	}

	// The short action finishes during the drain; the long one is handed back.
	a.update(completed(t, shortID, &repb.ActionResult{}, codes.OK))
	if resp := responseOf(t, recvDone(t, ss)); resp.Status.GetCode() != 0 {
		t.Fatalf("short action %v", resp)
	}
	a.update(completed(t, longID, nil, codes.Unavailable))
	if back := recvUntil(t, ls, repb.ExecutionStage_QUEUED); back.Done {
		t.Fatalf("hand-back failed the action: %v", back)
	}
	if n := e.metric("buildfleet_scheduler_drain_actions_finished_total"); n != 1 {
		t.Fatalf("drain_actions_finished_total = %v, want 1", n)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "handed-back"); n != 1 {
		t.Fatalf("leases_requeued_total{handed-back} = %v", n)
	}
	if got, want := e.slots(), map[string]float64{"busy": 1, "idle": 1, "draining": 0}; !sameCounts(got, want) {
		t.Fatalf("slots after the drain %v, want %v", got, want)
	}
	// The steady bot takes the handed-back action.
	reply = steady.update()
	if got, want := e.slots(), map[string]float64{"busy": 2, "idle": 0, "draining": 0}; !sameCounts(got, want) {
		t.Fatalf("slots once the steady bot took it %v, want %v", got, want)
	}
	var longLease string
	for _, l := range reply.Leases {
		if leaseAction(t, l) == long {
			longLease = l.Id
		}
	}
	if longLease == "" {
		t.Fatalf("handed-back action not offered to the steady bot: %v", reply.Leases)
	}
	steady.update(completed(t, longLease, &repb.ActionResult{}, codes.OK))
	if done := recvDone(t, ls); done.Name != lop.Name || responseOf(t, done).Status.GetCode() != 0 {
		t.Fatalf("long action %v", done)
	}
	if n := e.metric("buildfleet_scheduler_drain_actions_finished_total"); n != 1 {
		t.Fatalf("a serving bot's result counted as finished during drain: %v", n)
	}

	// The drained bot goes away without a word: its session expires and it shows as gone. It
	// held nothing, so nothing is lost to expiry.
	e.clk.Advance(15 * time.Second)
	steady.update()
	e.clk.Advance(6 * time.Second)
	w = e.worker("spot")
	if w.State != scheduler.WorkerGone || w.GoneSince.IsZero() {
		t.Fatalf("drained bot after expiry %+v", w)
	}
	if n := e.metric("buildfleet_scheduler_workers", "state", "gone"); n != 1 {
		t.Fatalf("workers{gone} = %v", n)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "expired"); n != 0 {
		t.Fatalf("leases_requeued_total{expired} = %v", n)
	}
}

// TestLeasesLostToExpiryAreCounted: a bot that vanishes without draining loses its leases to
// session expiry, counted apart from hand-backs.
func TestLeasesLostToExpiryAreCounted(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: 5 * time.Second})
	s, _ := e.run("", e.putAction("sleep 60"))
	a, reply := e.newBot("vanishing", 2)
	a.update(active(reply.Leases[0].Id))
	if got, want := e.slots(), map[string]float64{"busy": 1, "idle": 1, "draining": 0}; !sameCounts(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	e.clk.Advance(6 * time.Second)
	if back := recvUntil(t, s, repb.ExecutionStage_QUEUED); back.Done {
		t.Fatalf("expiry failed the action: %v", back)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "expired"); n != 1 {
		t.Fatalf("leases_requeued_total{expired} = %v", n)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "handed-back"); n != 0 {
		t.Fatalf("leases_requeued_total{handed-back} = %v", n)
	}
	if got, want := e.slots(), map[string]float64{"busy": 0, "idle": 0, "draining": 0}; !sameCounts(got, want) {
		t.Fatalf("slots after expiry %v, want %v", got, want)
	}
	if n := e.metric("buildfleet_scheduler_queue_depth", "platform", "default"); n != 1 {
		t.Fatalf("queue_depth{default} = %v", n)
	}
}

// TestDrainKindLabels: notices are labelled by the kind the bot gives, with unknown kinds
// folded into "other" and missing ones into "unspecified"; a bot that opens its session already
// terminating is counted too.
func TestDrainKindLabels(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	deadline := epoch.Add(30 * time.Second)
	for _, c := range []struct{ bot, kind string }{
		{"gce", "preemption"}, {"k8s", "signal"}, {"odd", "meteor-strike"}, {"plain", ""},
	} {
		b, _ := e.newBot(c.bot, 1)
		b.status = rwpb.BotStatus_BOT_TERMINATING
		if c.kind != "" {
			b.drainConfigs(deadline, c.kind, "because")
		}
		b.update()
	}
	// A bot that opens its session already terminating (it restarted mid-drain).
	w := &rwpb.Worker{Configs: []*rwpb.Worker_Config{
		{Key: "capacity", Value: "1"},
		{Key: scheduler.ConfigDrainDeadline, Value: deadline.Format(time.RFC3339)},
		{Key: scheduler.ConfigDrainKind, Value: "preemption"},
	}}
	if _, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{BotSession: &rwpb.BotSession{
		BotId: "late", Status: rwpb.BotStatus_BOT_TERMINATING, Worker: w,
	}}); err != nil {
		t.Fatal(err)
	}
	for kind, want := range map[string]float64{"preemption": 2, "signal": 1, "other": 1, "unspecified": 1} {
		if n := e.metric("buildfleet_scheduler_drain_notices_total", "kind", kind); n != want {
			t.Errorf("drain_notices_total{kind=%q} = %v, want %v", kind, n, want)
		}
	}
	if w := e.worker("late"); w.State != scheduler.WorkerDraining || !w.DrainDeadline.Equal(deadline) || w.DrainKind != "preemption" {
		t.Fatalf("late bot %+v", w)
	}
	if w := e.worker("plain"); w.State != scheduler.WorkerDraining || !w.DrainDeadline.IsZero() {
		t.Fatalf("bot without drain configs %+v", w)
	}
	if n := e.metric("buildfleet_scheduler_workers", "state", "draining"); n != 5 {
		t.Fatalf("workers{draining} = %v", n)
	}
}
