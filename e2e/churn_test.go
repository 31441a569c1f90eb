package e2e_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestBazelBuildUnderWorkerChurn runs the same remote build twice, undisturbed and with a
// worker SIGKILLed (and a fresh one started in its place) every 5 s, as spot churn would: the
// victim is picked at random, not by age, since the scheduler offers requeued work to the
// longest-waiting worker and killing always the oldest would chase the same action at the tail
// of the build. A killed worker's held long-poll ends with its process, so its leases are
// requeued after the short disconnect grace (default 2 s), not the 20 s session timeout: the
// disturbed build takes at most 1.5× the undisturbed one measured in the same run.
func TestBazelBuildUnderWorkerChurn(t *testing.T) {
	bazel := bazel4(t)
	s := startScheduler(t, "")
	workers := []*process{}
	next := 0
	spawn := func() {
		next++
		workers = append(workers, startWorker(t, s, fmt.Sprintf("churn-%d", next), "--worker-concurrency=4"))
	}
	for range 3 {
		spawn()
	}
	w := newWorkspace(t, bazel, 100)

	w.slowDown(time.Second)
	base := <-buildAsync(w, s.addr)
	if base.err != nil {
		t.Fatalf("undisturbed build: %v\n%s", base.err, tail(base.out, 40))
	}

	w.slowDown(1001 * time.Millisecond) // new actions, no cache hits
	done := buildAsync(w, s.addr)
	kills := 0
	var r buildResult
loop:
	for {
		select {
		case r = <-done:
			break loop
		case <-time.After(5 * time.Second):
			i := rand.IntN(len(workers))
			victim := workers[i]
			workers = append(workers[:i], workers[i+1:]...)
			t.Logf("SIGKILL %s", victim.name)
			victim.kill()
			kills++
			spawn()
		}
	}
	if r.err != nil {
		t.Fatalf("build with %d workers killed: %v\n%s", kills, r.err, tail(r.out, 40))
	}
	ratio := r.took.Seconds() / base.took.Seconds()
	t.Logf("undisturbed build %v; with %d workers SIGKILLed %v (%.2f×)", base.took.Round(time.Millisecond), kills, r.took.Round(time.Millisecond), ratio)
	if kills == 0 {
		t.Fatal("the build ended before any worker was killed")
	}
	if ratio > 1.5 {
		t.Errorf("the build under churn took %.2f× the undisturbed one, want at most 1.5×", ratio)
	}
}
