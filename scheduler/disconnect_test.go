package scheduler_test

import (
	"context"
	"testing"
	"time"

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
	e.clk.Advance(2 * time.Second)
	if w := e.worker("mortal"); w.LeasesHeld != 1 {
		t.Fatalf("leases requeued before the grace ended: %+v", w)
	}
	e.clk.Advance(time.Second)
	waitFor(t, "the dead bot's session closed", func() bool { return e.worker("mortal").State == scheduler.WorkerGone })
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "disconnected"); n != 1 {
		t.Errorf("leases_requeued_total{disconnected} = %v, want 1", n)
	}
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
