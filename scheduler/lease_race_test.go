package scheduler_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// A bot has one call in flight: when it sends a new one, it has given up on the call the
// scheduler is holding. That call ends at once with ABORTED and no lease; work that arrives
// goes into the reply of the call the bot is waiting on. Before, the abandoned call stayed held
// and could carry the lease in a reply nobody read.
func TestSupersededLongPollEndsWithoutLeases(t *testing.T) {
	e := newEnv(t, scheduler.Config{SessionExpiry: time.Hour})
	b, _ := e.newBot("bot", 1)
	type reply struct {
		s   *rwpb.BotSession
		err error
	}
	first := make(chan reply, 1)
	go func() { s, err := b.report(30 * time.Second); first <- reply{s, err} }()
	waitFor(t, "the first call is held", func() bool { return e.worker("bot").LongPolling })

	// The bot gives up on the first call and sends a second (the same session, same leases).
	second := make(chan reply, 1)
	go func() { s, err := b.report(30 * time.Second); second <- reply{s, err} }()
	select {
	case r := <-first:
		checkStatus(t, r.err, codes.Aborted, "superseded")
	case <-time.After(10 * time.Second):
		t.Fatal("the superseded call is still held")
	}
	waitFor(t, "the second call is held", func() bool { return e.worker("bot").LongPolling })

	d := e.putAction("work")
	e.run("", d)
	r := <-second
	if r.err != nil || len(r.s.Leases) != 1 || leaseAction(t, r.s.Leases[0]) != d {
		t.Fatalf("second call = %v, %v; want the lease", r.s, r.err)
	}
	if n := e.metric("buildfleet_scheduler_leases_requeued_total", "reason", "lost"); n != 0 {
		t.Errorf("%v leases requeued as lost", n)
	}
}
