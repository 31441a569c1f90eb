package worker_test

import (
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// While the scheduler is unreachable the worker holds the result it computed, retries with
// backoff, and reports it once the scheduler is back; the client gets it.
func TestWorkerDeliversResultsAfterSchedulerOutage(t *testing.T) {
	// The outage cuts the worker's connection while the scheduler keeps its state (a network
	// outage): with a disconnect grace as long as the session's life, the lease waits for the
	// worker to come back.
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour, DisconnectGrace: time.Hour, NoRetries: true}, func(t *testing.T, e *env) {
		g := newGateExecutor("w1", "a")
		e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, g)
		o := e.execute(e.action("true", "a", 0))
		e.settled("the action runs", func() bool { return g.hasStarted("a") })
		e.down()
		g.open("a")
		e.settled("the action finished", func() bool { _, _, running, _ := g.snapshot(); return running == 0 })
		// The worker retries in vain for a minute meanwhile; the client hears nothing.
		e.clk.Advance(time.Minute)
		select {
		case r := <-o.done:
			t.Fatalf("the client got %v / %v while the scheduler was down", r.resp, r.err)
		default:
		}
		e.up()
		done := make(chan opResult, 1)
		e.advanceUntil(t, "the client has the result", time.Second, func() bool {
			select {
			case r := <-o.done:
				done <- r
				return true
			default:
				return false
			}
		})
		r := <-done
		if r.err != nil || string(r.resp.GetResult().GetStdoutRaw()) != "a ran on w1" {
			t.Fatalf("result after the outage: %v, %v", r.resp, r.err)
		}
		if started, _, _, _ := g.snapshot(); len(started) != 1 {
			t.Errorf("actions started: %v, want the one run only once", started)
		}
		if info := e.workerState("w1"); info.State != scheduler.WorkerServing || info.LeasesHeld != 0 {
			t.Errorf("scheduler's view after the outage: %+v", info)
		}
	})
}

// A scheduler that restarted has forgotten the session and its leases: the worker goes on
// with a session the new scheduler knows, drops the lease it no longer has (stopping the
// action), and runs the action again when the client's WaitExecution requeues it.
func TestWorkerSurvivesSchedulerRestart(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g := newGateExecutor("w1", "a")
		e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, g)
		o := e.execute(e.action("true", "a", 0))
		e.settled("the action runs", func() bool { return g.hasStarted("a") })
		e.restart()
		// The new scheduler never handed out the worker's lease; the lease id names the action, so it
		// adopts the running lease instead of running the action a second time.
		e.advanceUntil(t, "the new scheduler adopts the running lease", time.Second, func() bool {
			info := e.workerState("w1")
			return info.State == scheduler.WorkerServing && info.LeasesHeld == 1
		})
		g.open("a")
		if got := string(o.wait(t).GetResult().GetStdoutRaw()); got != "a ran on w1" {
			t.Errorf("result after the restart: %q", got)
		}
		if started, stopped, _, _ := g.snapshot(); len(started) != 1 || len(stopped) != 0 {
			t.Errorf("after the restart the action started %v and stopped %v times, want once and never", started, stopped)
		}
	})
}

// The long-poll keeps the session alive: minutes of (fake) time pass while an action runs, far
// beyond the session expiry, and the lease is never lost.
func TestLongPollKeepsSessionAlive(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: 20 * time.Second, NoRetries: true}, func(t *testing.T, e *env) {
		g := newGateExecutor("w1", "a")
		e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, g)
		o := e.execute(e.action("true", "a", 0))
		e.settled("the action runs", func() bool { return g.hasStarted("a") })
		// Every second for five minutes, the scheduler sees w1 serving with its lease.
		for range 300 {
			e.clk.Advance(time.Second)
			if info := e.workerState("w1"); info.State != scheduler.WorkerServing || info.LeasesHeld != 1 {
				t.Fatalf("at %v the scheduler sees %+v, want w1 serving with its lease", e.clk.Now(), info)
			}
		}
		g.open("a")
		if got := string(o.wait(t).GetResult().GetStdoutRaw()); got != "a ran on w1" {
			t.Errorf("result: %q", got)
		}
		if _, stopped, _, _ := g.snapshot(); len(stopped) != 0 {
			t.Errorf("actions stopped: %v", stopped)
		}
	})
}
