package worker_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// fakeCompleter records what the worker tells the platform, and what the scheduler thought
// of the worker when it was told the drain was complete.
type fakeCompleter struct {
	e  *env
	id string

	mu         sync.Mutex
	heartbeats int
	completes  int
	atComplete scheduler.WorkerInfo
}

func (c *fakeCompleter) Heartbeat(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.heartbeats++
	return nil
}

func (c *fakeCompleter) Complete(context.Context) error {
	info := c.e.workerState(c.id)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.completes++
	c.atComplete = info
	return nil
}

func (c *fakeCompleter) counts() (heartbeats, completes int, at scheduler.WorkerInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.heartbeats, c.completes, c.atComplete
}

// result returns what Run returned. In a bubble Run must have returned once everything has
// settled, without the clock moving; on a fake clock it waits for it in real time.
func (rw *runningWorker) result(t *testing.T) error {
	t.Helper()
	if rw.e.bubble {
		synctest.Wait()
		select {
		case err := <-rw.done:
			rw.done <- err // keep it for the cleanup
			return err
		default:
			t.Fatalf("Run has not returned once everything settled (clock at %v)", rw.e.clk.Now())
			return nil
		}
	}
	select {
	case err := <-rw.done:
		rw.done <- err // keep it for the cleanup
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("worker did not return")
		return nil
	}
}

// returned reports whether Run has returned.
func (rw *runningWorker) returned() bool {
	select {
	case err := <-rw.done:
		rw.done <- err
		return true
	default:
		return false
	}
}

// The drain story: a spot notice makes the worker report BOT_TERMINATING at once; it takes
// no new lease; the short action finishes and is reported; at the deadline minus the safety
// margin the long one is stopped and handed back; Run returns once the scheduler has
// acknowledged everything, before the deadline; a second worker completes the handed-back
// action (without it counting as a retry) and the one that queued meanwhile.
func TestDrainFinishesShortActionsAndHandsBackLongOnes(t *testing.T) {
	inBubble(t, scheduler.Config{NoRetries: true, SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g1 := newGateExecutor("w1", "short", "long")
		comp := &fakeCompleter{e: e, id: "w1"}
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 3, Completer: comp}, g1)
		short := e.execute(e.action("true", "short", 0))
		long := e.execute(e.action("true", "long", 0))
		e.settled("both actions run on w1", func() bool { return g1.hasStarted("short") && g1.hasStarted("long") })
		e.settled("the scheduler holds w1's long-poll", func() bool { return e.workerState("w1").LongPolling })

		deadline := e.clk.Now().Add(2 * time.Minute)
		w1.notices <- cloud.Notice{Source: "aws", Kind: cloud.SpotInterruption, Reason: "terminate", Deadline: deadline}
		// The held long-poll would only end when the clock moves, and it does not: the
		// scheduler hears of the drain because the worker cancels it and calls again at once.
		e.settled("the scheduler sees w1 draining", func() bool {
			info := e.workerState("w1")
			return info.State == scheduler.WorkerDraining && info.Status == "BOT_TERMINATING"
		})
		// The session carries the notice's deadline, kind and reason in worker.configs.
		if info := e.workerState("w1"); !info.DrainDeadline.Equal(deadline) || info.DrainKind != "spot-interruption" || info.DrainReason != "terminate" {
			t.Errorf("scheduler's view of the drain: deadline %v kind %q reason %q, want %v spot-interruption terminate",
				info.DrainDeadline, info.DrainKind, info.DrainReason, deadline)
		}

		third := e.execute(e.action("true", "third", 0))
		<-third.name // admitted and queued
		g1.open("short")
		if got := string(short.wait(t).GetResult().GetStdoutRaw()); got != "short ran on w1" {
			t.Errorf("short action: %q", got)
		}
		e.settled("the platform is heartbeaten while draining", func() bool { hb, _, _ := comp.counts(); return hb >= 1 })
		// A minute on, short of the stop point, the long action still runs and Run waits.
		e.clk.Advance(time.Minute)
		if w1.returned() || g1.hasStopped("long") {
			t.Fatal("Run returned, or stopped the long action, a minute before the stop point")
		}
		if hb, _, _ := comp.counts(); hb < 1+int(time.Minute/worker.DefaultCompleterHeartbeatInterval) {
			t.Errorf("platform heartbeaten %d times in the first minute of the drain, want one at once and one every %v", hb, worker.DefaultCompleterHeartbeatInterval)
		}

		e.clk.Set(deadline.Add(-worker.DefaultDrainSafetyMargin))
		if err := w1.result(t); err != nil {
			t.Fatalf("Run = %v, want nil after a clean drain", err)
		}
		if got, want := e.clk.Now(), deadline.Add(-worker.DefaultDrainSafetyMargin); !got.Equal(want) {
			t.Errorf("Run returned at %v, want at the stop point %v (nothing should take time)", got, want)
		}
		if !g1.hasStopped("long") {
			t.Error("the long action was not stopped at the stop point")
		}
		if g1.hasStarted("third") {
			t.Error("the draining worker started an action queued after the notice")
		}
		if _, completes, at := comp.counts(); completes != 1 || at.LeasesHeld != 0 || at.State != scheduler.WorkerDraining {
			t.Errorf("platform told %d times; scheduler's view of w1 then: %+v (want once, no lease held, draining)", completes, at)
		}

		g2 := newGateExecutor("w2")
		e.startWorker(worker.Config{WorkerID: "w2", Concurrency: 2}, g2)
		if got := string(long.wait(t).GetResult().GetStdoutRaw()); got != "long ran on w2" {
			t.Errorf("handed-back action: %q, want it run on w2", got)
		}
		if got := string(third.wait(t).GetResult().GetStdoutRaw()); got != "third ran on w2" {
			t.Errorf("queued action: %q, want it run on w2", got)
		}
	})
}

// A second notice whose deadline has passed (a second SIGTERM) stops everything at once: the
// lease is still handed back, and the worker returns without waiting for the deadline.
func TestSecondSignalStopsAtOnceAndHandsBack(t *testing.T) {
	inBubble(t, scheduler.Config{NoRetries: true, SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g1 := newGateExecutor("w1", "long")
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, g1)
		long := e.execute(e.action("true", "long", 0))
		e.settled("the action runs", func() bool { return g1.hasStarted("long") })
		w1.notices <- cloud.Notice{Source: "signal", Kind: cloud.Signal, Reason: "SIGTERM", Deadline: e.clk.Now().Add(30 * time.Second)}
		e.settled("the scheduler sees w1 draining", func() bool { return e.workerState("w1").State == scheduler.WorkerDraining })
		if w1.returned() {
			t.Fatal("Run returned while the action ran and the deadline was 30 s away")
		}
		start := e.clk.Now()
		w1.notices <- cloud.Notice{Source: "signal", Kind: cloud.Signal, Reason: "second signal (SIGTERM)", Deadline: e.clk.Now(), Immediate: true}
		if err := w1.result(t); err != nil {
			t.Fatalf("Run = %v, want nil: the hand-back was acknowledged", err)
		}
		if !e.clk.Now().Equal(start) {
			t.Errorf("Run returned %v after the second signal, want at once", e.clk.Now().Sub(start))
		}
		if !g1.hasStopped("long") {
			t.Error("the action was not stopped")
		}
		e.startWorker(worker.Config{WorkerID: "w2", Concurrency: 1}, newGateExecutor("w2"))
		if got := string(long.wait(t).GetResult().GetStdoutRaw()); got != "long ran on w2" {
			t.Errorf("handed-back action: %q, want it run on w2", got)
		}
	})
}

// A result computed while the scheduler is unreachable is held: a draining worker does not
// exit until the scheduler is back and has acknowledged it.
func TestDrainWaitsForAcknowledgement(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g1 := newGateExecutor("w1", "a")
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, g1)
		o := e.execute(e.action("true", "a", 0))
		e.settled("the action runs", func() bool { return g1.hasStarted("a") })
		e.down()
		w1.notices <- cloud.Notice{Source: "gcp", Kind: cloud.Preemption, Reason: "preempted", Deadline: e.clk.Now().Add(10 * time.Minute)}
		g1.open("a")
		e.settled("the action finished", func() bool { _, _, running, _ := g1.snapshot(); return running == 0 })
		// However long the scheduler stays away (here a minute, the worker retrying every
		// second), the draining worker holds the result and does not return.
		e.clk.Advance(time.Minute)
		if w1.returned() {
			t.Fatal("Run returned before the scheduler acknowledged the result")
		}
		e.up()
		back := e.clk.Now()
		e.advanceUntil(t, "the worker drained", time.Second, w1.returned)
		if err := w1.result(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		// The worker retries at least once a second while draining.
		if took := e.clk.Now().Sub(back); took > 2*time.Second {
			t.Errorf("the worker drained %v after the scheduler came back, want within its 1 s drain backoff", took)
		}
		if got := string(o.wait(t).GetResult().GetStdoutRaw()); got != "a ran on w1" {
			t.Errorf("result: %q", got)
		}
	})
}

// A drain that cannot reach the scheduler gives up before the deadline with DEADLINE_EXCEEDED
// rather than outliving the machine: at the deadline minus half the safety margin.
func TestDrainGivesUpAtDeadline(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g1 := newGateExecutor("w1", "a")
		comp := &fakeCompleter{e: e, id: "w1"}
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1, Completer: comp}, g1)
		e.execute(e.action("true", "a", 0))
		e.settled("the action runs", func() bool { return g1.hasStarted("a") })
		e.down()
		deadline := e.clk.Now().Add(30 * time.Second)
		w1.notices <- cloud.Notice{Source: "aws", Kind: cloud.ScaleIn, Reason: "Terminated", Deadline: deadline}
		giveUp := deadline.Add(-worker.DefaultDrainSafetyMargin / 2)
		e.clk.Set(giveUp.Add(-time.Millisecond))
		if w1.returned() {
			t.Fatalf("Run returned at %v, before the give-up point %v", e.clk.Now(), giveUp)
		}
		if !g1.hasStopped("a") {
			t.Error("the action was not stopped at the stop point")
		}
		e.clk.Advance(time.Millisecond)
		err := w1.result(t)
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("Run = %v, want DEADLINE_EXCEEDED", err)
		}
		if _, completes, _ := comp.counts(); completes != 1 {
			t.Errorf("platform told %d times, want 1", completes)
		}
	})
}

// Advisory notices do not drain unless configured to.
func TestSoftNoticeDoesNotDrainByDefault(t *testing.T) {
	inBubble(t, scheduler.Config{}, func(t *testing.T, e *env) {
		g := newGateExecutor("w1")
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, g)
		w1.notices <- cloud.Notice{Source: "aws", Kind: cloud.Rebalance, Reason: "rebalance recommendation", Soft: true}
		if got := string(e.execute(e.action("true", "after", 0)).wait(t).GetResult().GetStdoutRaw()); got != "after ran on w1" {
			t.Errorf("action after a soft notice: %q", got)
		}
		if info := e.workerState("w1"); info.State != scheduler.WorkerServing {
			t.Errorf("worker state %q after a soft notice, want serving", info.State)
		}

		g2 := newGateExecutor("w2")
		w2 := e.startWorker(worker.Config{WorkerID: "w2", Concurrency: 1, DrainOnSoftNotice: true}, g2)
		e.settled("w2 has a session", func() bool { return e.workerState("w2").State == scheduler.WorkerServing })
		w2.notices <- cloud.Notice{Source: "aws", Kind: cloud.Rebalance, Reason: "rebalance recommendation", Soft: true}
		if err := w2.result(t); err != nil {
			t.Fatalf("w2 Run = %v, want a clean drain", err)
		}
	})
}

// The drain story with the real runner: a running process is killed at the stop point, its
// lease handed back and run by another worker.
func TestDrainKillsRealProcessAtStopPoint(t *testing.T) {
	e := newEnv(t, scheduler.Config{NoRetries: true, SessionExpiry: time.Hour})
	w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1, DrainSafetyMargin: 15 * time.Second}, e.newRunner("w1"))
	pidFile := pidFIFO(t)
	long := e.execute(e.action("echo $$ > "+pidFile+" && exec sleep 60", "long", 0))
	pid := waitPID(t, pidFile)
	deadline := e.clk.Now().Add(time.Minute)
	w1.notices <- cloud.Notice{Source: "aws", Kind: cloud.SpotInterruption, Reason: "terminate", Deadline: deadline}
	// Past the stop point, 15 s before the deadline. Whether the worker reads the notice before
	// the clock moves (its stop timer fires) or after (the stop point has passed on arrival),
	// the action must be stopped now; the test needs no wait between the two steps.
	e.clk.Set(deadline.Add(-14 * time.Second))
	if err := w1.result(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if !exited(t, pid, 0) {
		t.Error("the action's process outlived the drain")
	}
	if info := e.workerState("w1"); info.State != scheduler.WorkerDraining || info.LeasesHeld != 0 {
		t.Errorf("scheduler's view of w1 after its drain: %+v, want draining with no lease", info)
	}
	e.startWorker(worker.Config{WorkerID: "w2", Concurrency: 1}, newGateExecutor("w2"))
	if got := string(long.wait(t).GetResult().GetStdoutRaw()); got != "long ran on w2" {
		t.Errorf("handed-back action: %q, want it run on w2", got)
	}
}

// A worker that holds nothing has nothing to hand back: when a notice comes while the
// scheduler cannot be reached, it finishes its drain at once instead of waiting out the
// deadline to be heard.
func TestIdleDrainWithSchedulerDownEndsAtOnce(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g := newGateExecutor("w1")
		comp := &fakeCompleter{e: e, id: "w1"}
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1, Completer: comp}, g)
		e.settled("the worker has a session", func() bool { return e.workerState("w1").BotID == "w1" })
		e.down()
		start := e.clk.Now()
		w1.notices <- cloud.Notice{Source: "signal", Kind: cloud.Signal, Reason: "SIGTERM", Deadline: start.Add(30 * time.Second)}
		if err := w1.result(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if !e.clk.Now().Equal(start) {
			t.Errorf("drain ended %v after the notice, want at once", e.clk.Now().Sub(start))
		}
		if _, completes, _ := comp.counts(); completes != 1 {
			t.Errorf("platform told %d times, want 1", completes)
		}
	})
}
