package console_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// workerState returns the state of bot id's newest session ("" if unknown).
func (e *env) workerState(id string) string {
	state := ""
	for _, wi := range e.sched.Workers() {
		if wi.BotID == id {
			state = wi.State
		}
	}
	return state
}

// A worker that finished draining (BOT_TERMINATING, lease handed back and acknowledged) and
// exits is gone once the disconnect grace passes, not when its session expires, and its
// interruption says it drained. A killed worker, whose held call ends with its connection, is
// gone as fast and is labelled "connection lost", not "session expired".
func TestSessionEndsAreShownAsTheyHappened(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	d1, d2 := e.putAction("/bin/sleep", "1"), e.putAction("/bin/sleep", "2")
	e.execute("", d1, "inv-d", "Genrule", "//:one")
	drained, leases := e.newBot("drained-1", 1)
	if len(leases) != 1 {
		t.Fatalf("drained-1 got %d leases", len(leases))
	}
	drained.update(active(leases[0].Id))
	e.clk.Advance(10 * time.Second)
	drained.drainWith("spot-interruption", "terminate", e.clk.Now().Add(2*time.Minute))
	drained.update(&rwpb.Lease{Id: leases[0].Id, State: rwpb.LeaseState_COMPLETED, Status: statusUnavailable()})
	// The worker exits: it never calls again.
	e.clk.Advance(scheduler.DefaultDisconnectGrace)
	if st := e.workerState("drained-1"); st != scheduler.WorkerGone {
		t.Fatalf("drained worker %s after the disconnect grace, want gone", st)
	}

	// The killed worker holds the action again and long-polls when it is killed.
	e.execute("", d2, "inv-d", "Genrule", "//:two")
	killed, kl := e.newBot("killed-1", 2)
	if len(kl) != 2 {
		t.Fatalf("killed-1 got %d leases", len(kl))
	}
	killed.update(active(kl[0].Id), active(kl[1].Id))
	ctx, kill := context.WithTimeout(e.ctx, 30*time.Second)
	done := make(chan error, 1)
	go func() {
		_, err := e.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: killed.session, BotSession: &rwpb.BotSession{
			Name: killed.session, BotId: killed.id, Status: rwpb.BotStatus_OK, Worker: killed.worker,
			Leases: []*rwpb.Lease{active(kl[0].Id), active(kl[1].Id)}}})
		done <- err
	}()
	polling := func() bool {
		for _, wi := range e.sched.Workers() {
			if wi.BotID == "killed-1" && wi.LongPolling {
				return true
			}
		}
		return false
	}
	for !polling() {
		select {
		case err := <-done:
			t.Fatalf("the held call ended early: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	kill()
	<-done
	// The scheduler sees the call end (and starts the disconnect grace) a moment later.
	for polling() {
		time.Sleep(time.Millisecond)
	}
	for i := 0; e.workerState("killed-1") != scheduler.WorkerGone; i++ {
		if i == 30 {
			t.Fatal("killed worker not gone 30 s after its connection ended")
		}
		e.clk.Advance(time.Second)
	}

	fleet := page(t, h, "/console/fleet")
	tl := fleet[strings.Index(fleet, `id="interruptions"`):]
	row := func(bot string) string {
		r := tl[strings.Index(tl, `>`+bot+`</a>`):]
		return r[:strings.Index(r, "</tr>")]
	}
	contains(t, "drained worker's interruption", row("drained-1"), "spot-interruption", "· drained")
	contains(t, "killed worker's interruption", row("killed-1"), "no notice", "connection lost")
	if strings.Contains(tl, "session expired") {
		t.Errorf("an interruption says session expired:\n%s", tl)
	}
	worker := page(t, h, "/console/workers/killed-1")
	contains(t, "killed worker page", worker, "no notice (connection lost)")
}

// An action whose first worker vanished (its session expired) and which a second worker then
// ran lists the lost first attempt in its executions table, with the worker and the reason.
func TestActionPageListsLostAttempts(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	d := e.putAction("/bin/echo", "again")
	s := e.execute("", d, "inv-l", "Genrule", "//:again")
	k1, l1 := e.newBot("vanished-1", 1)
	if len(l1) != 1 {
		t.Fatalf("vanished-1 got %d leases", len(l1))
	}
	k1.update(active(l1[0].Id))
	e.clk.Advance(2 * time.Minute) // past the session expiry: the action is queued again
	if st := e.workerState("vanished-1"); st != scheduler.WorkerGone {
		t.Fatalf("vanished-1 is %s, want gone", st)
	}
	w2, l2 := e.newBot("rescuer-1", 1)
	if len(l2) != 1 {
		t.Fatalf("rescuer-1 got %d leases", len(l2))
	}
	w2.update(active(l2[0].Id))
	e.clk.Advance(5 * time.Second)
	w2.update(e.completed(l2[0].Id, &repb.ActionResult{StdoutRaw: []byte("again\n")}))
	drain(t, s)

	body := page(t, h, fmt.Sprintf("/console/actions/%s/%d", d.Hash, d.Size))
	i := strings.Index(body, `class="lost-attempt"`)
	if i < 0 {
		t.Fatalf("action page lists no lost attempt:\n%s", body)
	}
	row := body[i:]
	row = row[:strings.Index(row, "</tr>")]
	contains(t, "lost attempt row", row, ">expired<", `href="/console/workers/vanished-1"`, "attempt 1", "stopped updating its session")
	contains(t, "action page", body, `href="/console/workers/rescuer-1"`, `<td class="num">2</td>`)
}
