package scheduler_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/scheduler"
)

// A new leader starts empty. The bot running an action reports its lease; the leader adopts it
// (no second run), the client's WaitExecution on its old name joins it and gets the result.
func TestNewLeaderAdoptsReportedLeasesInsteadOfRunningThemAgain(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("runs across a failover")
	_, op := e.run("team/a", d)
	b, reply := e.newBot("bot", 2)
	if len(reply.Leases) != 1 {
		t.Fatalf("leases %v", reply.Leases)
	}
	id := reply.Leases[0].Id
	if !strings.HasPrefix(id, "team/a/leases/") || !strings.HasSuffix(id, "/"+d.Hash+"-"+strconv.FormatInt(d.Size, 10)) {
		t.Fatalf("lease id %q does not carry the instance and the action digest %s", id, d)
	}
	b.update(active(id))

	// Failover: the new leader knows nothing, and holds new work for 5 s.
	e.start(scheduler.Config{AdoptionWindow: 5 * time.Second})
	s, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: op.Name})
	if err != nil {
		t.Fatal(err)
	}
	// The client asked first: its request waits for the window instead of queueing the action.
	waitFor(t, "WaitExecution to wait for the adoption window", func() bool { return e.clk.Pending() > 0 })

	// The bot calls in with its old session and lease: adopted, still ACTIVE, no new lease.
	got := b.update()
	if len(got.Leases) != 1 || got.Leases[0].Id != id {
		t.Fatalf("reply after failover %v: the adopted lease should be kept", got.Leases)
	}
	first := recvUntil(t, s, repb.ExecutionStage_EXECUTING)
	if first.Name != op.Name {
		t.Fatalf("WaitExecution renamed the operation: %v", first)
	}
	if n := e.metric("buildfleet_scheduler_leases_adopted_total"); n != 1 {
		t.Fatalf("leases adopted = %v, want 1", n)
	}
	// A second bot gets nothing to do: the action is not queued again.
	if _, reply := e.newBot("bot2", 2); len(reply.Leases) != 0 {
		t.Fatalf("adopted action handed out again: %v", reply.Leases)
	}

	b.update(completed(t, id, &repb.ActionResult{StdoutRaw: []byte("once")}, codes.OK))
	done := recvDone(t, s)
	if resp := responseOf(t, done); string(resp.Result.StdoutRaw) != "once" {
		t.Fatalf("final %v", done)
	}
	if e.ac.get("team/a", d) == nil {
		t.Fatal("adopted lease's result not cached")
	}
	if n := e.metric("buildfleet_scheduler_leases_handed_out_total"); n != 0 {
		t.Fatalf("new leader handed out %v leases, want 0", n)
	}
}

// A result that reaches the new leader before any client asks is accepted and cached: the
// clients' old names are answered from the action cache.
func TestNewLeaderAcceptsResultsOfLeasesItNeverHandedOut(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("finished during the failover")
	_, op := e.run("", d)
	b, reply := e.newBot("bot", 1)
	id := reply.Leases[0].Id
	b.update(active(id))

	e.start(scheduler.Config{AdoptionWindow: 5 * time.Second})
	b.update(completed(t, id, &repb.ActionResult{StdoutRaw: []byte("done")}, codes.OK))
	waitFor(t, "the adopted result to be cached", func() bool { return e.ac.get("", d) != nil })
	s, err := e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: op.Name})
	if err != nil {
		t.Fatal(err)
	}
	done := recvDone(t, s)
	if resp := responseOf(t, done); string(resp.Result.StdoutRaw) != "done" {
		t.Fatalf("final %v", done)
	}

	// A client whose request crosses the adopted result (it missed the action cache just
	// before the result was written) joins the adopted execution: here the action cache has
	// lost the entry, and the action still does not run again.
	e.ac.mu.Lock()
	delete(e.ac.results, "|"+d.String())
	e.ac.mu.Unlock()
	e.clk.Advance(5 * time.Second)
	s2 := e.execute(&repb.ExecuteRequest{ActionDigest: d.Proto()})
	if resp := responseOf(t, recvDone(t, s2)); string(resp.Result.GetStdoutRaw()) != "done" || resp.CachedResult {
		t.Fatalf("Execute after the adopted result: %v", resp)
	}
	if _, reply := e.newBot("bot2", 1); len(reply.Leases) != 0 {
		t.Fatalf("the adopted action was run again: %v", reply.Leases)
	}
}

// During the adoption window a fresh Execute is held, not queued; once the window is over it
// is queued and leased as usual. Lease ids that name no action are dropped, as before.
func TestAdoptionWindowHoldsNewWork(t *testing.T) {
	e := newEnv(t, scheduler.Config{AdoptionWindow: 3 * time.Second})
	b, _ := e.newBot("bot", 1)
	if got := b.update(active("not-a-buildfleet-lease")); len(got.Leases) != 0 {
		t.Fatalf("an unknown lease id that names no action was kept: %v", got.Leases)
	}
	d := e.putAction("queued after the window")
	timers := e.clk.Pending()
	s := e.execute(&repb.ExecuteRequest{ActionDigest: d.Proto()})
	waitFor(t, "Execute to wait for the adoption window", func() bool { return e.clk.Pending() > timers })
	if got := b.update(); len(got.Leases) != 0 {
		t.Fatalf("leased during the adoption window: %v", got.Leases)
	}
	e.clk.Advance(3 * time.Second)
	recvUntil(t, s, repb.ExecutionStage_QUEUED)
	if got := b.update(); len(got.Leases) != 1 || leaseAction(t, got.Leases[0]) != d {
		t.Fatalf("after the window: %v", got.Leases)
	}
}

// In single-process mode (no adoption window) a restarted scheduler runs a do-not-cache action
// once when the bot still running it reports its lease, whether the client's WaitExecution on
// its old name or the bot's report comes first. Such actions are never joined by Execute, but
// the old name is that very execution.
func TestRestartAdoptsDoNotCacheLeaseInEitherOrder(t *testing.T) {
	for _, clientFirst := range []bool{false, true} {
		t.Run("clientFirst="+strconv.FormatBool(clientFirst), func(t *testing.T) {
			e := newEnv(t, scheduler.Config{})
			d := e.putAction("not cached, runs across a restart", doNotCache())
			_, op := e.run("", d)
			b, reply := e.newBot("bot", 1)
			if len(reply.Leases) != 1 {
				t.Fatalf("leases %v", reply.Leases)
			}
			id := reply.Leases[0].Id
			b.update(active(id))

			e.start(scheduler.Config{})
			var s repb.Execution_WaitExecutionClient
			wait := func() {
				var err error
				if s, err = e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: op.Name}); err != nil {
					t.Fatal(err)
				}
			}
			if clientFirst {
				wait()
				recvUntil(t, s, repb.ExecutionStage_QUEUED)
			}
			if got := b.update(); len(got.Leases) != 1 || got.Leases[0].Id != id {
				t.Fatalf("reply after the restart %v: the adopted lease should be kept, alone", got.Leases)
			}
			if !clientFirst {
				wait()
			}
			if first := recvUntil(t, s, repb.ExecutionStage_EXECUTING); first.Name != op.Name {
				t.Fatalf("WaitExecution renamed the operation: %v", first)
			}
			if _, reply := e.newBot("bot2", 1); len(reply.Leases) != 0 {
				t.Fatalf("the adopted action was handed out again: %v", reply.Leases)
			}
			b.update(completed(t, id, &repb.ActionResult{StdoutRaw: []byte("once")}, codes.OK))
			if resp := responseOf(t, recvDone(t, s)); string(resp.Result.GetStdoutRaw()) != "once" {
				t.Fatalf("final %v", resp)
			}
			if n := e.metric("buildfleet_scheduler_leases_handed_out_total"); n != 0 {
				t.Fatalf("restarted scheduler handed out %v leases, want 0", n)
			}
			if n := e.metric("buildfleet_scheduler_leases_adopted_total"); n != 1 {
				t.Fatalf("leases adopted = %v, want 1", n)
			}
		})
	}
}
