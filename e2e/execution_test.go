package e2e_test

import (
	"strings"
	"testing"
	"time"
)

// remoteBuild builds a 200-genrule workspace locally, then remotely on two buildfleet workers
// with the given Bazel, and expects identical outputs with every action run remotely.
func remoteBuild(t *testing.T, bazel string) {
	s := startScheduler(t, "")
	startWorker(t, s, "w1", "--worker-concurrency=4")
	startWorker(t, s, "w2", "--worker-concurrency=4")
	w := newWorkspace(t, bazel, 200)

	w.build("--spawn_strategy=local", "--genrule_strategy=local")
	local := w.outputs()

	w.clean()
	remote := processCounts(t, w.build("--remote_executor=grpc://"+s.addr, "--remote_instance_name=e2e", "--jobs=32"))
	if remote["remote"] != w.rules {
		t.Fatalf("remote build: %v, want %d remote", remote, w.rules)
	}
	sameOutputs(t, local, w.outputs())

	// The scheduler is also the cache: a clean rebuild is all cache hits.
	w.clean()
	again := processCounts(t, w.build("--remote_executor=grpc://"+s.addr, "--remote_instance_name=e2e", "--jobs=32"))
	if again["remote cache hit"] != w.rules {
		t.Fatalf("rebuild: %v, want %d remote cache hits", again, w.rules)
	}
}

func TestBazel4RemoteExecution(t *testing.T) { remoteBuild(t, bazel4(t)) }

func TestBazel2RemoteExecution(t *testing.T) { remoteBuild(t, bazel2(t)) }

// TestBazelSurvivesKilledWorker kills one of two workers with SIGKILL in the middle of a remote
// build; its leases expire and run on the other worker, and the build succeeds.
func TestBazelSurvivesKilledWorker(t *testing.T) {
	bazel := bazel4(t)
	s := startScheduler(t, "", "--session-timeout=3s")
	victim := startWorker(t, s, "victim", "--worker-concurrency=4")
	startWorker(t, s, "survivor", "--worker-concurrency=4")
	w := newWorkspace(t, bazel, 200)
	// Slow actions down so the kill lands mid-build.
	w.slowDown(300 * time.Millisecond)

	w.build("--spawn_strategy=local", "--genrule_strategy=local")
	local := w.outputs()
	w.clean()

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := w.run("build", "--incompatible_strict_action_env", "--color=no", "--curses=no",
			"--remote_executor=grpc://"+s.addr, "--remote_instance_name=e2e", "--jobs=32", w.target)
		done <- result{out, err}
	}()
	// Wait until the victim is running actions, then kill it without warning.
	deadline := time.Now().Add(90 * time.Second)
	for !victim.logContains("Lease accepted") {
		if time.Now().After(deadline) {
			t.Fatal("victim never started a lease")
		}
		time.Sleep(100 * time.Millisecond)
	}
	victim.kill()
	t.Log("victim killed with SIGKILL")

	r := <-done
	if r.err != nil {
		t.Fatalf("build failed after a worker was killed: %v\n%s", r.err, tail(r.out, 60))
	}
	counts := processCounts(t, r.out)
	if counts["remote"] != w.rules {
		t.Fatalf("build: %v, want %d remote", counts, w.rules)
	}
	if !strings.Contains(r.out, "Build completed successfully") {
		t.Fatalf("no success line:\n%s", tail(r.out, 20))
	}
	sameOutputs(t, local, w.outputs())
}
