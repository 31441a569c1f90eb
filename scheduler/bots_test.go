package scheduler_test

import (
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

func TestLeasesGoOnlyToBotsWithThePlatform(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	arm := e.putAction("arm", withPlatform("OSFamily", "linux", "ISA", "arm64"))
	// Pants sends its platform only in the deprecated Command.platform.
	gpu := e.putAction("gpu", withCommandPlatform("feature", "avx", "feature", "cuda"))
	plain := e.putAction("plain")
	e.run("", arm)
	e.run("", gpu)
	e.run("", plain)
	if n := e.metric("buildfleet_scheduler_queue_depth", "platform", "ISA=arm64,OSFamily=linux"); n != 1 {
		t.Fatalf("queue depth of the arm platform %v, want 1", n)
	}

	_, x86 := e.newBot("x86", 4, "OSFamily", "linux", "ISA", "x86-64", "feature", "avx")
	if len(x86.Leases) != 1 || leaseAction(t, x86.Leases[0]) != plain {
		t.Fatalf("x86 bot got %v, want only the platform-less action", x86.Leases)
	}
	_, armBot := e.newBot("arm", 4, "OSFamily", "linux", "ISA", "arm64")
	if len(armBot.Leases) != 1 || leaseAction(t, armBot.Leases[0]) != arm {
		t.Fatalf("arm bot got %v", armBot.Leases)
	}
	// A key required with several values needs all of them.
	_, gpuBot := e.newBot("gpu", 4, "feature", "avx", "feature", "cuda", "feature", "sse4")
	if len(gpuBot.Leases) != 1 || leaseAction(t, gpuBot.Leases[0]) != gpu {
		t.Fatalf("gpu bot got %v", gpuBot.Leases)
	}
	req := gpuBot.Leases[0].Requirements.GetDevices()[0].GetProperties()
	if len(req) != 2 || req[0].Key != "feature" || req[0].Value != "avx" || req[1].Value != "cuda" {
		t.Fatalf("lease requirements %v", req)
	}
	if n := e.metric("buildfleet_scheduler_queue_depth", "platform", "ISA=arm64,OSFamily=linux"); n != 0 {
		t.Fatalf("queue depth after leasing %v", n)
	}
}

func TestUnmatchablePlatformFailsAfterBoundedWait(t *testing.T) {
	e := newEnv(t, scheduler.Config{UnmatchedPlatformWait: time.Minute, SessionExpiry: time.Hour})
	e.newBot("linux", 1, "OSFamily", "linux")
	s, op := e.run("", e.putAction("win", withPlatform("OSFamily", "windows")))
	if op.Done {
		t.Fatalf("failed at once: %v", op)
	}
	e.clk.Advance(59 * time.Second)
	// A matching bot may still come: nothing happens before the bound.
	if got, err := e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: op.Name}); err != nil || got.Done {
		t.Fatalf("before the bound: %v, %v", got, err)
	}
	e.clk.Advance(time.Second)
	done := recvDone(t, s)
	resp := responseOf(t, done)
	if codes.Code(resp.Status.GetCode()) != codes.FailedPrecondition ||
		resp.Status.GetMessage() != "No connected worker can run action "+actionOf(t, done)+" within 1m0s: no worker has platform property OSFamily=windows" {
		t.Fatalf("status %v", resp.Status)
	}
}

func TestUnmatchedWaitEndsWhenAMatchingBotConnects(t *testing.T) {
	e := newEnv(t, scheduler.Config{UnmatchedPlatformWait: time.Minute, SessionExpiry: time.Hour})
	s, _ := e.run("", e.putAction("win", withPlatform("OSFamily", "windows")))
	e.clk.Advance(30 * time.Second)
	b, reply := e.newBot("win", 1, "OSFamily", "windows")
	if len(reply.Leases) != 1 {
		t.Fatalf("windows bot got %v", reply.Leases)
	}
	e.clk.Advance(time.Minute)
	b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{}, codes.OK))
	if resp := responseOf(t, recvDone(t, s)); resp.Status.GetCode() != 0 {
		t.Fatalf("status %v", resp.Status)
	}
}

func TestLongPollWakesOnNewWorkAndEndsBeforeDeadline(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	b, _ := e.newBot("bot", 1)

	// Nothing queued: the call is held.
	type result struct {
		s   *rwpb.BotSession
		err error
	}
	poll := func() chan result {
		ch := make(chan result, 1)
		go func() {
			s, err := b.report(30 * time.Second)
			ch <- result{s, err}
		}()
		waitFor(t, "the long-poll to be held", func() bool { return e.worker("bot").LongPolling })
		return ch
	}
	ch := poll()
	d := e.putAction("work")
	e.run("", d)
	r := <-ch
	if r.err != nil || len(r.s.Leases) != 1 || leaseAction(t, r.s.Leases[0]) != d {
		t.Fatalf("held call returned %v, %v; want the new lease", r.s, r.err)
	}

	// Holding its lease at capacity, the bot is held until the deadline margin (80 % of 30 s).
	ch = poll()
	e.clk.Advance(23 * time.Second)
	select {
	case r := <-ch:
		t.Fatalf("returned before 80%% of the deadline: %v %v", r.s, r.err)
	case <-time.After(20 * time.Millisecond):
	}
	e.clk.Advance(time.Second)
	r = <-ch
	if r.err != nil || len(r.s.Leases) != 1 || r.s.Leases[0].State != rwpb.LeaseState_PENDING {
		t.Fatalf("after the hold: %v, %v", r.s, r.err)
	}
	if got, want := r.s.ExpireTime.AsTime(), e.clk.Now().Add(scheduler.DefaultSessionExpiry); !got.Equal(want) {
		t.Fatalf("expire_time %v, want %v", got, want)
	}
	// The session did not expire while the call was held, although 24 s > 20 s passed.
	if w := e.worker("bot"); w.State != scheduler.WorkerServing || w.LeasesHeld != 1 {
		t.Fatalf("worker after hold: %+v", w)
	}
}

func TestExpiredSessionRequeuesUnderTheSameOperation(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("long")
	s, op := e.run("", d)
	a, reply := e.newBot("a", 1)
	id := reply.Leases[0].Id
	a.update(active(id))
	if got := recvUntil(t, s, repb.ExecutionStage_EXECUTING); stageOf(t, got) != repb.ExecutionStage_EXECUTING {
		t.Fatalf("want EXECUTING, got %v", got)
	}

	// Bot a vanishes. Nobody calls in: the scheduler's own timer expires the session.
	e.clk.Advance(scheduler.DefaultSessionExpiry)
	back := recvUntil(t, s, repb.ExecutionStage_QUEUED)
	if back.Done || back.Name != op.Name {
		t.Fatalf("after expiry the client saw %v, want %s QUEUED again", back, op.Name)
	}
	if w := e.worker("a"); w.State != scheduler.WorkerGone || w.LeasesHeld != 0 {
		t.Fatalf("expired worker %+v", w)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "expired"); n != 1 {
		t.Fatalf("requeued{expired} = %v", n)
	}

	bBot, reply := e.newBot("b", 1)
	if len(reply.Leases) != 1 || leaseAction(t, reply.Leases[0]) != d || reply.Leases[0].Id == id {
		t.Fatalf("bot b got %v", reply.Leases)
	}
	bBot.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{StdoutRaw: []byte("b")}, codes.OK))
	done := recvDone(t, s)
	if resp := responseOf(t, done); done.Name != op.Name || resp.Status.GetCode() != 0 || resp.Result.ExecutionMetadata.Worker != "b" {
		t.Fatalf("final %v", resp)
	}
}

func TestRetryLimitEndsInUnavailable(t *testing.T) {
	t.Run("expiry", func(t *testing.T) {
		e := newEnv(t, scheduler.Config{RetryLimit: 2})
		s, _ := e.run("", e.putAction("doomed"))
		for i := 0; i < 3; i++ {
			b, reply := e.newBot("bot-"+itoa(i), 1)
			if len(reply.Leases) != 1 {
				t.Fatalf("attempt %d: no lease", i)
			}
			b.update(active(reply.Leases[0].Id))
			e.clk.Advance(scheduler.DefaultSessionExpiry)
			waitFor(t, "the session to expire", func() bool { return e.worker(b.id).State == scheduler.WorkerGone })
		}
		resp := responseOf(t, recvDone(t, s))
		if codes.Code(resp.Status.GetCode()) != codes.Unavailable {
			t.Fatalf("status %v, want UNAVAILABLE", resp.Status)
		}
	})
	t.Run("internal errors", func(t *testing.T) {
		e := newEnv(t, scheduler.Config{RetryLimit: 1})
		s, _ := e.run("", e.putAction("flaky"))
		b, reply := e.newBot("bot", 1)
		reply = b.update(completed(t, reply.Leases[0].Id, nil, codes.Internal))
		if len(reply.Leases) != 1 {
			t.Fatalf("INTERNAL was not retried: %v", reply.Leases)
		}
		if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "retry"); n != 1 {
			t.Fatalf("requeued{retry} = %v", n)
		}
		reply = b.update(completed(t, reply.Leases[0].Id, nil, codes.Unavailable))
		if len(reply.Leases) != 0 {
			t.Fatalf("retried past the limit: %v", reply.Leases)
		}
		resp := responseOf(t, recvDone(t, s))
		if codes.Code(resp.Status.GetCode()) != codes.Unavailable {
			t.Fatalf("status %v, want UNAVAILABLE", resp.Status)
		}
	})
	t.Run("other errors complete", func(t *testing.T) {
		e := newEnv(t, scheduler.Config{})
		s, _ := e.run("", e.putAction("slow"))
		b, reply := e.newBot("bot", 1)
		b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{StderrRaw: []byte("partial")}, codes.DeadlineExceeded))
		resp := responseOf(t, recvDone(t, s))
		if codes.Code(resp.Status.GetCode()) != codes.DeadlineExceeded || string(resp.Result.StderrRaw) != "partial" {
			t.Fatalf("response %v", resp)
		}
	})
}

func TestDrainingBotHandsBackWithoutUsingARetry(t *testing.T) {
	e := newEnv(t, scheduler.Config{NoRetries: true})
	d := e.putAction("interrupted")
	s, op := e.run("", d)
	a, reply := e.newBot("spot", 2)
	id := reply.Leases[0].Id
	a.update(active(id))
	e.run("", e.putAction("queued behind"))

	// A spot notice: the bot reports BOT_TERMINATING; its lease goes on, it gets nothing new
	// although it has a free slot and work is queued.
	e.clk.Advance(time.Second)
	a.status = rwpb.BotStatus_BOT_TERMINATING
	reply = a.update()
	if len(reply.Leases) != 1 || reply.Leases[0].Id != id || reply.Leases[0].State != rwpb.LeaseState_ACTIVE {
		t.Fatalf("draining bot's reply %v, want only its active lease", reply.Leases)
	}
	reply = a.update()
	if len(reply.Leases) != 1 {
		t.Fatalf("draining bot got new work: %v", reply.Leases)
	}
	w := e.worker("spot")
	if w.State != scheduler.WorkerDraining || !w.DrainingSince.Equal(epoch.Add(time.Second)) {
		t.Fatalf("worker view %+v", w)
	}
	if n := e.metric("buildfleet_scheduler_drain_notices_total"); n != 1 {
		t.Fatalf("drain notices %v", n)
	}

	// It cannot finish in time and hands the lease back: requeued at once, no retry used (the
	// limit is zero here).
	reply = a.update(completed(t, id, nil, codes.Unavailable))
	if len(reply.Leases) != 0 {
		t.Fatalf("hand-back not acknowledged: %v", reply.Leases)
	}
	if back := recvUntil(t, s, repb.ExecutionStage_QUEUED); back.Done {
		t.Fatalf("hand-back failed the action: %v", back)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "handed-back"); n != 1 {
		t.Fatalf("requeued{handed-back} = %v", n)
	}
	b, reply := e.newBot("steady", 1)
	if len(reply.Leases) != 1 || leaseAction(t, reply.Leases[0]) != d {
		t.Fatalf("replacement bot got %v, want the handed-back action first", reply.Leases)
	}
	b.update(completed(t, reply.Leases[0].Id, &repb.ActionResult{}, codes.OK))
	done := recvDone(t, s)
	if resp := responseOf(t, done); done.Name != op.Name || resp.Status.GetCode() != 0 {
		t.Fatalf("final %v", resp)
	}
}

func TestTerminatingBotFinishesItsLeases(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	u, _ := e.newBot("u", 1)
	u.status = rwpb.BotStatus_UNHEALTHY
	u.update()
	s, _ := e.run("", e.putAction("finish me"))
	a, reply := e.newBot("a", 1)
	id := reply.Leases[0].Id
	a.status = rwpb.BotStatus_BOT_TERMINATING
	a.update(active(id))
	e.run("", e.putAction("next"))
	reply = a.update(completed(t, id, &repb.ActionResult{}, codes.OK))
	if len(reply.Leases) != 0 {
		t.Fatalf("terminating bot got %v", reply.Leases)
	}
	if resp := responseOf(t, recvDone(t, s)); resp.Status.GetCode() != 0 {
		t.Fatalf("result of a draining bot rejected: %v", resp)
	}
	// Unhealthy bots get nothing either.
	if reply := u.update(); len(reply.Leases) != 0 {
		t.Fatalf("unhealthy bot got %v", reply.Leases)
	}
	u.status = rwpb.BotStatus_OK
	if reply := u.update(); len(reply.Leases) != 1 {
		t.Fatalf("recovered bot got %v", reply.Leases)
	}
}

func TestFirstResultWins(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("race")
	s, _ := e.run("", d)
	a, reply := e.newBot("a", 1)
	idA := reply.Leases[0].Id
	a.update(active(idA))
	e.clk.Advance(scheduler.DefaultSessionExpiry) // a is cut off; its lease is requeued
	recvUntil(t, s, repb.ExecutionStage_QUEUED)
	b, reply := e.newBot("b", 1)
	idB := reply.Leases[0].Id
	b.update(active(idB))

	// a comes back with its result before b finishes: a's result is the one.
	reply = a.update(completed(t, idA, &repb.ActionResult{StdoutRaw: []byte("from a")}, codes.OK))
	if len(reply.Leases) != 0 {
		t.Fatalf("a's reply %v", reply.Leases)
	}
	done := recvDone(t, s)
	if resp := responseOf(t, done); string(resp.Result.StdoutRaw) != "from a" {
		t.Fatalf("result %v, want a's", resp.Result)
	}
	// b's lease vanishes; its late duplicate result is ignored.
	if reply := b.update(); len(reply.Leases) != 0 {
		t.Fatalf("b still holds %v", reply.Leases)
	}
	b.update(completed(t, idB, &repb.ActionResult{StdoutRaw: []byte("from b")}, codes.OK))
	if got := e.ac.get("", d); string(got.GetStdoutRaw()) != "from a" {
		t.Fatalf("action cache holds %v", got)
	}
}

func TestBotReturningAfterExpiryKeepsItsUntakenLease(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	s, op := e.run("", e.putAction("partitioned"))
	a, reply := e.newBot("a", 1)
	id := reply.Leases[0].Id
	a.update(active(id))
	e.clk.Advance(scheduler.DefaultSessionExpiry)
	recvUntil(t, s, repb.ExecutionStage_QUEUED)
	// The bot was only cut off and still runs the action; nobody else took it.
	reply = a.update()
	if len(reply.Leases) != 1 || reply.Leases[0].Id != id || reply.Leases[0].State != rwpb.LeaseState_ACTIVE {
		t.Fatalf("reply %v, want the lease re-attached", reply.Leases)
	}
	a.update(completed(t, id, &repb.ActionResult{}, codes.OK))
	if done := recvDone(t, s); done.Name != op.Name || responseOf(t, done).Status.GetCode() != 0 {
		t.Fatalf("final %v", done)
	}
}

func TestLeaseTheBotStopsReportingIsRequeued(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("forgotten")
	s, _ := e.run("", d)
	a, reply := e.newBot("a", 1)
	id := reply.Leases[0].Id
	a.update(active(id))
	// The bot restarts without its lease and reports none: the action is requeued and, as the
	// bot has a free slot again, handed straight back out as a new lease.
	a.leases, a.order = map[string]*rwpb.Lease{}, nil
	reply = a.update()
	if len(reply.Leases) != 1 || reply.Leases[0].Id == id || leaseAction(t, reply.Leases[0]) != d {
		t.Fatalf("reply %v, want a new lease of the action", reply.Leases)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "lost"); n != 1 {
		t.Fatalf("requeued{lost} = %v", n)
	}

	// A reply that never reached the bot: the PENDING lease is sent again once, then requeued.
	newID := reply.Leases[0].Id
	a.leases, a.order = map[string]*rwpb.Lease{}, nil
	reply = a.update()
	if len(reply.Leases) != 1 || reply.Leases[0].Id != newID || reply.Leases[0].State != rwpb.LeaseState_PENDING || reply.Leases[0].Payload == nil {
		t.Fatalf("lost reply not re-sent: %v", reply.Leases)
	}
	a.update(active(newID), completed(t, newID, &repb.ActionResult{}, codes.OK))
	if resp := responseOf(t, recvDone(t, s)); resp.Status.GetCode() != 0 {
		t.Fatalf("final %v", resp)
	}
}

func TestNewSessionOfTheSameBotReplacesTheOld(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("restart")
	e.run("", d)
	old, reply := e.newBot("same", 1)
	oldID := reply.Leases[0].Id
	old.update(active(oldID))
	_, reply = e.newBot("same", 1)
	if len(reply.Leases) != 1 || reply.Leases[0].Id == oldID || leaseAction(t, reply.Leases[0]) != d {
		t.Fatalf("new session got %v", reply.Leases)
	}
	_, err := old.report(time.Second)
	checkStatus(t, err, codes.FailedPrecondition, "was replaced")
}

func TestUpdateBotSessionValidation(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	_, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{Parent: "farm", BotSession: &rwpb.BotSession{}})
	checkStatus(t, err, codes.InvalidArgument, "bot_id is required")
	b, _ := e.newBot("v", 1)
	_, err = e.bots.UpdateBotSession(e.ctx, &rwpb.UpdateBotSessionRequest{Name: "other", BotSession: &rwpb.BotSession{Name: b.session, BotId: "v"}})
	checkStatus(t, err, codes.InvalidArgument, "does not match")
}

// actionOf returns the "hash/size" of an operation's action.
func actionOf(t *testing.T, op *longrunningpb.Operation) string {
	t.Helper()
	var md repb.ExecuteOperationMetadata
	if err := op.GetMetadata().UnmarshalTo(&md); err != nil {
		t.Fatal(err)
	}
	return md.ActionDigest.Hash + "/" + itoa(int(md.ActionDigest.SizeBytes))
}

func TestNewSessionCarryingAResultStillDeliversIt(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	s, _ := e.run("", e.putAction("reconnect"))
	a, reply := e.newBot("a", 1)
	id := reply.Leases[0].Id
	a.update(active(id))
	e.clk.Advance(scheduler.DefaultSessionExpiry)
	recvUntil(t, s, repb.ExecutionStage_QUEUED)
	// The bot reconnects with a fresh session, carrying the result it could not report.
	r, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{Parent: "farm", BotSession: &rwpb.BotSession{
		BotId: "a", Status: rwpb.BotStatus_OK,
		Leases: []*rwpb.Lease{completed(t, id, &repb.ActionResult{StdoutRaw: []byte("kept")}, codes.OK)},
	}})
	if err != nil || len(r.Leases) != 0 {
		t.Fatalf("CreateBotSession: %v, %v", r, err)
	}
	if resp := responseOf(t, recvDone(t, s)); string(resp.Result.StdoutRaw) != "kept" {
		t.Fatalf("result %v", resp.Result)
	}
}

func TestUnmatchedWithNoWorkerAtAll(t *testing.T) {
	e := newEnv(t, scheduler.Config{UnmatchedPlatformWait: 10 * time.Second})
	s, _ := e.run("", e.putAction("lonely", withPlatform("OSFamily", "linux")))
	e.clk.Advance(10 * time.Second)
	resp := responseOf(t, recvDone(t, s))
	if codes.Code(resp.Status.GetCode()) != codes.FailedPrecondition ||
		!strings.HasSuffix(resp.Status.GetMessage(), "no worker is connected (platform property OSFamily=linux required)") {
		t.Fatalf("status %v", resp.Status)
	}
}

func TestUnmatchedWaitRestartsWhenTheLastMatchingBotLeaves(t *testing.T) {
	e := newEnv(t, scheduler.Config{UnmatchedPlatformWait: time.Minute})
	// The only arm bot is busy, so the arm action waits in the queue.
	busy, _ := e.newBot("arm", 1, "ISA", "arm64")
	e.run("", e.putAction("first", withPlatform("ISA", "arm64")))
	if reply := busy.update(); len(reply.Leases) != 1 {
		t.Fatalf("arm bot got %v", reply.Leases)
	}
	s, _ := e.run("", e.putAction("second", withPlatform("ISA", "arm64")))
	// The bot disappears: its own lease is requeued and both actions wait for an arm bot, for
	// the bounded time only.
	e.clk.Advance(scheduler.DefaultSessionExpiry)
	waitFor(t, "the bot to be gone", func() bool { return e.worker("arm").State == scheduler.WorkerGone })
	e.clk.Advance(time.Minute)
	resp := responseOf(t, recvDone(t, s))
	if codes.Code(resp.Status.GetCode()) != codes.FailedPrecondition || !strings.Contains(resp.Status.GetMessage(), "ISA=arm64") {
		t.Fatalf("status %v", resp.Status)
	}
}
