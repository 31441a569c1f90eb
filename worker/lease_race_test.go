package worker_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// The lost-lease race under load: a worker reports a finished action, and while that call is on
// its way another action finishes. The scheduler answers a report at once, and its reply
// carries the next lease. A worker that cancelled the call to send the newer news lost that
// reply and the lease in it (the scheduler counted it "never acknowledged" once the bot missed
// it twice, and requeued it). The worker now lets a prompt call finish and sends its news next.
func TestWorkerDoesNotAbandonAReportCarryingNewLeases(t *testing.T) {
	inBubble(t, scheduler.Config{SessionExpiry: time.Hour}, func(t *testing.T, e *env) {
		var (
			once      sync.Once
			arrived   = make(chan struct{})
			release   = make(chan struct{})
			cancelled = make(chan struct{})
		)
		e.unary = func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			r, ok := req.(*rwpb.UpdateBotSessionRequest)
			first := false
			if ok {
				for _, l := range r.GetBotSession().GetLeases() {
					if l.GetState() == rwpb.LeaseState_COMPLETED {
						once.Do(func() { first = true })
					}
				}
			}
			if first {
				// The first report of a finished action is held "on the wire" until the test
				// releases it.
				close(arrived)
				select {
				case <-release:
				case <-ctx.Done():
					close(cancelled)
					<-release
				}
			}
			return handler(ctx, req)
		}
		e.down()
		e.up()

		g := newGateExecutor("w1", "a", "b")
		e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 2}, g)
		oa, ob := e.execute(e.action("true", "a", 0)), e.execute(e.action("true", "b", 0))
		e.settled("a and b run", func() bool { _, _, running, _ := g.snapshot(); return running == 2 })
		oc := e.execute(e.action("true", "c", 0))

		g.open("a")
		<-arrived
		// While the report of a is in flight, b finishes too.
		g.open("b")
		e.settled("b finished", func() bool { _, _, running, _ := g.snapshot(); return running == 0 })
		// Once everything has settled (the clock has not moved, so no deadline has passed), the
		// report of a is still in flight: the worker has not cancelled it.
		synctest.Wait()
		select {
		case <-cancelled:
			close(release)
			t.Fatal("the worker cancelled its report of a (whose reply carries the lease of c) to report b")
		default:
		}
		close(release)
		for name, o := range map[string]*op{"a": oa, "b": ob, "c": oc} {
			if resp := o.wait(t); string(resp.GetResult().GetStdoutRaw()) != name+" ran on w1" {
				t.Fatalf("result of %s: %v", name, resp.GetResult())
			}
		}
		if started, _, _, _ := g.snapshot(); len(started) != 3 {
			t.Errorf("actions started %v, want each of a, b, c once", started)
		}
	})
}
