package worker_test

import (
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// TestDrainDeadlineReachesTheScheduler: the worker tells the scheduler its drain deadline, kind
// and reason with BOT_TERMINATING, and tells it again when a further notice brings the deadline
// forward.
func TestDrainDeadlineReachesTheScheduler(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		g := newGateExecutor("w1", "long")
		w1 := e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 2}, g)
		long := e.execute(e.action("true", "long", 0))
		e.settled("the action runs", func() bool { return g.hasStarted("long") })

		first := e.clk.Now().Add(2 * time.Minute)
		w1.notices <- cloud.Notice{Source: "gcp", Kind: cloud.Preemption, Reason: "instance/preempted TRUE", Deadline: first}
		e.settled("the scheduler sees the preemption deadline", func() bool {
			info := e.workerState("w1")
			return info.State == scheduler.WorkerDraining && info.DrainDeadline.Equal(first) &&
				info.DrainKind == "preemption" && info.DrainReason == "instance/preempted TRUE"
		})

		// SIGTERM arrives with a sooner deadline: the scheduler hears it.
		sooner := e.clk.Now().Add(30 * time.Second)
		w1.notices <- cloud.Notice{Source: "signal", Kind: cloud.Signal, Reason: "SIGTERM", Deadline: sooner}
		e.settled("the scheduler sees the sooner deadline", func() bool {
			return e.workerState("w1").DrainDeadline.Equal(sooner)
		})
		// A later one changes nothing.
		w1.notices <- cloud.Notice{Source: "aws", Kind: cloud.SpotInterruption, Reason: "terminate", Deadline: first}

		g.open("long")
		long.wait(t)
		if err := w1.result(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if info := e.workerState("w1"); !info.DrainDeadline.Equal(sooner) {
			t.Fatalf("deadline after a later notice %v, want %v", info.DrainDeadline, sooner)
		}
	})
}
