package scheduler_test

import (
	"context"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// A bot whose process dies ends its held long-poll at once (its connection closes: the call is
// cancelled). Unless it calls again within DisconnectGrace, its session is closed and its
// leases requeued then, not after the whole SessionExpiry. A bot that cancels a call and calls
// again at once (to report news) keeps its session.
func TestDisconnectedBotLosesItsLeasesAfterTheGrace(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: time.Hour, DisconnectGrace: 3 * time.Second})
	e.run("", e.putAction("work"))
	b, reply := e.newBot("mortal", 1)
	if len(reply.Leases) != 1 {
		t.Fatalf("bot got %v", reply.Leases)
	}
	lease := reply.Leases[0].Id
	b.update(active(lease))

	// A live bot cancels its held call and calls again at once: nothing happens.
	hold(t, e, b)
	b.update(active(lease))
	e.clk.Advance(10 * time.Second)
	if w := e.worker("mortal"); w.State != scheduler.WorkerServing || w.LeasesHeld != 1 {
		t.Fatalf("a bot that called again lost its session: %+v", w)
	}

	// The bot dies in its held call.
	hold(t, e, b)
	wantLeaseRequeuedAfterGrace(t, e, "mortal")
	// Another bot gets the action at once.
	_, other := e.newBot("heir", 1)
	if len(other.Leases) != 1 {
		t.Fatalf("the requeued action did not go to the next bot: %v", other.Leases)
	}
}

// hold sends a long-poll for bot b, waits until the scheduler holds it, and cancels it, as a
// connection that closes does.
func hold(t *testing.T, e *env, b *bot) {
	t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() {
		var leases []*rwpb.Lease
		for _, id := range b.order {
			leases = append(leases, &rwpb.Lease{Id: id, State: rwpb.LeaseState_ACTIVE})
		}
		_, err := e.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: b.session,
			BotSession: &rwpb.BotSession{Name: b.session, BotId: b.id, Status: b.status, Worker: b.worker, Leases: leases}})
		done <- err
	}()
	waitFor(t, "the call is held", func() bool { return e.worker(b.id).LongPolling })
	cancel()
	<-done
	waitFor(t, "the scheduler saw the call end", func() bool { return !e.worker(b.id).LongPolling })
}

// A draining worker cancels its held long-poll and reports its drain at once, so the scheduler
// can answer the drain report before it has seen the held call end. Whichever of the two calls
// ends last, the drained bot's session is closed after DisconnectGrace, as drained, not after the
// whole SessionExpiry.
func TestDrainedBotIsClosedAfterTheGraceWhenItsCallsOverlap(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: time.Hour, DisconnectGrace: 3 * time.Second})
	b, _ := e.newBot("spot", 1)
	held := make(chan error, 1)
	go func() { _, err := b.report(30 * time.Second); held <- err }()
	waitFor(t, "the long-poll is held", func() bool { return e.worker("spot").LongPolling })

	// The drain report is answered in one hold of the scheduler's lock; the held call, woken
	// by it, ends only afterwards.
	b.status = rwpb.BotStatus_BOT_TERMINATING
	if reply := b.update(); reply.Status != rwpb.BotStatus_BOT_TERMINATING || len(reply.Leases) != 0 {
		t.Fatalf("drain report answered %v", reply)
	}
	checkStatus(t, <-held, codes.Aborted, "superseded")

	// The worker exits without another call.
	e.clk.Advance(2 * time.Second)
	if w := e.worker("spot"); w.State != scheduler.WorkerDraining {
		t.Fatalf("drained bot closed before the grace ended: %+v", w)
	}
	e.clk.Advance(time.Second)
	waitFor(t, "the drained bot's session closed", func() bool { return e.worker("spot").State == scheduler.WorkerGone })
}

// A bot reports a result and the scheduler's write to the action cache is slow, so the bot gives
// up on that call and calls again; then its process dies in the new, held call. The scheduler
// sees the held call end before the slow one: the lease the bot still held is requeued after
// DisconnectGrace all the same, not after the whole SessionExpiry.
func TestKilledBotLosesItsLeasesAfterTheGraceWhenItsCallsOverlap(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: time.Hour, DisconnectGrace: 3 * time.Second})
	finished, running := e.putAction("finished"), e.putAction("running")
	fs, _ := e.run("", finished)
	e.run("", running)
	b, reply := e.newBot("mortal", 2)
	ids := map[digest.Digest]string{}
	for _, l := range reply.Leases {
		ids[leaseAction(t, l)] = l.Id
	}
	if len(ids) != 2 {
		t.Fatalf("bot got %v, want both actions", reply.Leases)
	}
	b.update(active(ids[finished]), active(ids[running]))

	// The result's call is held in the action cache write, outside the scheduler's lock.
	entered, release := e.ac.holdPuts()
	result := completed(t, ids[finished], &repb.ActionResult{}, codes.OK)
	slow := make(chan error, 1)
	go func() { _, err := b.report(30*time.Second, result); slow <- err }()
	<-entered

	// The bot calls again holding the other lease; that call is held, then the bot dies.
	timers := e.clk.Pending()
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	held := make(chan error, 1)
	go func() {
		_, err := e.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: b.session,
			BotSession: &rwpb.BotSession{Name: b.session, BotId: b.id, Status: b.status, Worker: b.worker,
				Leases: []*rwpb.Lease{active(ids[running])}}})
		held <- err
	}()
	waitFor(t, "the new call is held", func() bool { return e.clk.Pending() > timers })
	cancel()
	checkStatus(t, <-held, codes.Canceled, "")
	waitFor(t, "the scheduler saw the held call end", func() bool { return e.clk.Pending() == timers })

	// Only now does the slow call end (superseded); the result it carried is accepted.
	release()
	checkStatus(t, <-slow, codes.Aborted, "superseded")
	if resp := responseOf(t, recvDone(t, fs)); resp.Status.GetCode() != 0 {
		t.Fatalf("finished action %v", resp)
	}

	wantLeaseRequeuedAfterGrace(t, e, "mortal")
}

// wantLeaseRequeuedAfterGrace checks, on a scheduler with a 3 s DisconnectGrace whose bot
// (holding one lease) just ended its last call, that the lease is kept for 2 s and requeued as
// disconnected once the grace has passed.
func wantLeaseRequeuedAfterGrace(t *testing.T, e *env, bot string) {
	t.Helper()
	e.clk.Advance(2 * time.Second)
	if w := e.worker(bot); w.LeasesHeld != 1 {
		t.Fatalf("lease requeued before the grace ended: %+v", w)
	}
	e.clk.Advance(time.Second)
	waitFor(t, "the dead bot's session closed", func() bool { return e.worker(bot).State == scheduler.WorkerGone })
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "disconnected"); n != 1 {
		t.Errorf("leases_requeued_total{disconnected} = %v, want 1", n)
	}
}
