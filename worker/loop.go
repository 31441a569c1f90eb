package worker

import (
	"context"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// phase is the worker's drain state.
type phase int

const (
	serving phase = iota
	draining
)

func (p phase) String() string {
	if p == serving {
		return "serving"
	}
	return "draining"
}

// outcome is what an action's goroutine reports when the action ends.
type outcome struct {
	l      *lease
	result *repb.ActionResult
	err    error
}

// loop is the state of one Run: the session, its leases, the call in flight and the drain.
// Everything is owned by the goroutine running loop.run; actions and calls report back over
// channels.
type loop struct {
	w   *Worker
	cfg Config
	clk clock.Clock
	log zerolog.Logger

	phase      phase
	name       string
	needCreate bool
	// notFound counts NOT_FOUND answers since the last successful update, so that a scheduler
	// that keeps forgetting the session is retried with backoff.
	notFound int
	leases   map[string]*lease
	// running counts action goroutines that have not reported back, including those of
	// withdrawn or handed-back leases that are still stopping; Run waits for all of them.
	running int
	// version counts changes the scheduler must hear; a held long-poll sent at an older
	// version is cancelled and sent again so that completions are reported without waiting for
	// it to end (a prompt call is not: see call.prompt).
	version uint64
	// ttl is how long the scheduler keeps the session alive after a call, learned from the
	// expire_time of its replies (zero until known).
	ttl time.Duration
	// reportTimeout is the deadline of drain reports; it grows when the scheduler is slow.
	reportTimeout time.Duration

	outcomes   chan outcome
	calls      chan callResult
	call       *call
	callBase   context.Context
	stopCalls  context.CancelFunc
	actionBase context.Context
	stopAction context.CancelFunc

	backoff      backoff
	retryTimer   clock.Timer
	retryC       <-chan time.Time
	refreshTimer clock.Timer
	refreshC     <-chan time.Time
	// paceTimer delays a call that would tell the scheduler nothing new (see minPollInterval);
	// a change after paceVersion is sent at once.
	paceTimer   clock.Timer
	paceC       <-chan time.Time
	paceVersion uint64

	// Drain state.
	deadline time.Time
	// drainNotice is the notice that started the drain (its deadline is l.deadline).
	drainNotice      cloud.Notice
	stopTimer        clock.Timer
	stopC            <-chan time.Time
	finalTimer       clock.Timer
	finalC           <-chan time.Time
	hbTicker         clock.Ticker
	hbC              <-chan time.Time
	terminatingAcked bool
	// lastCallFailed is true while the last call to the scheduler failed (it is unreachable or
	// refused the call).
	lastCallFailed bool
}

func newLoop(w *Worker) *loop {
	l := &loop{
		w:             w,
		cfg:           w.cfg,
		clk:           w.clk,
		log:           w.log,
		needCreate:    true,
		reportTimeout: drainReportTimeout,
		leases:        map[string]*lease{},
		outcomes:      make(chan outcome, w.cfg.Concurrency),
		calls:         make(chan callResult, 1),
		backoff:       newBackoff(w.cfg.MinBackoff, w.cfg.MaxBackoff),
	}
	l.callBase, l.stopCalls = context.WithCancel(context.Background())
	l.actionBase, l.stopAction = context.WithCancel(context.Background())
	return l
}

// close releases the loop's timers and contexts.
func (l *loop) close() {
	for _, t := range []clock.Timer{l.retryTimer, l.refreshTimer, l.paceTimer, l.stopTimer, l.finalTimer} {
		if t != nil {
			t.Stop()
		}
	}
	if l.hbTicker != nil {
		l.hbTicker.Stop()
	}
	l.stopCalls()
	l.stopAction()
}

func (l *loop) run(ctx context.Context, notices <-chan cloud.Notice) error {
	l.log.Info().Int("concurrency", l.cfg.Concurrency).Str("instance_name", l.cfg.InstanceName).
		Stringer("platform", platformString(l.cfg.Platform)).Msg("Worker starting")
	for {
		if l.drained() {
			return l.finish()
		}
		if l.call == nil && l.retryC == nil && (l.paceC == nil || l.version > l.paceVersion) {
			l.issue()
		}
		if l.call != nil && !l.call.cancelled && !l.call.prompt && l.version > l.call.version {
			l.cancelCall()
		}
		select {
		case <-ctx.Done():
			return l.abort(ctx.Err())
		case n, ok := <-notices:
			if !ok {
				notices = nil
				continue
			}
			l.notice(n)
		case o := <-l.outcomes:
			l.outcome(o)
		case r := <-l.calls:
			l.callDone(r)
		case <-l.retryC:
			l.retryC = nil
		case <-l.paceC:
			l.paceC = nil
		case <-l.refreshC:
			l.refreshC = nil
			if l.call != nil && !l.call.cancelled {
				l.log.Debug().Msg("Renewing the session before it expires")
				l.cancelCall()
			}
		case <-l.stopC:
			l.stopC = nil
			l.stopAll("Worker " + l.cfg.WorkerID + " is draining and the action could not finish before the deadline; handed back")
		case <-l.finalC:
			l.finalC = nil
			return l.giveUp()
		case <-l.hbC:
			l.heartbeat()
		}
	}
}

// start accepts a lease the scheduler offered: it runs the action in a free slot. A lease
// offered while draining is handed straight back; one offered beyond the worker's capacity is
// left unacknowledged (not reported), which the scheduler takes as refused; one whose payload
// cannot be read is completed with the error.
func (l *loop) start(offered *rwpb.Lease) {
	log := l.log.With().Str("lease_id", offered.GetId()).Logger()
	if l.phase == serving && l.active() >= l.cfg.Concurrency {
		log.Warn().Int("active", l.active()).Msg("Lease offered beyond capacity; not accepted")
		return
	}
	lz := &lease{
		id:      offered.GetId(),
		log:     log,
		state:   rwpb.LeaseState_ACTIVE,
		started: l.clk.Now(),
	}
	l.leases[lz.id] = lz
	l.version++
	if l.phase != serving {
		lz.handBack("Worker " + l.cfg.WorkerID + " is draining; lease handed back")
		lz.log.Info().Msg("Lease offered while draining; handed back")
		return
	}
	action, d, err := decodePayload(offered.GetPayload())
	if err != nil {
		lz.complete(nil, err)
		lz.log.Error().Err(err).Msg("Lease payload refused")
		return
	}
	lz.digest = d
	lz.log = lz.log.With().Stringer("action_digest", d).Logger()
	if action != nil && action.GetTimeout() != nil {
		lz.timeout = action.GetTimeout().AsDuration()
	}
	ctx, cancel := context.WithCancel(l.actionBase)
	lz.cancel = cancel
	l.running++
	lz.log.Info().Str("offered_state", offered.GetState().String()).Int("running", l.running).Msg("Lease accepted")
	exec, cas, instance := l.w.exec, l.w.cas, l.cfg.InstanceName
	go func() {
		defer cancel()
		a, err := action, error(nil)
		if a == nil {
			a, err = fetchAction(ctx, cas, instance, d)
		}
		var res *repb.ActionResult
		if err == nil {
			res, err = exec.Run(ctx, d, a)
		}
		l.outcomes <- outcome{l: lz, result: res, err: err}
	}()
}

// outcome records the end of an action.
func (l *loop) outcome(o outcome) {
	l.running--
	lz := o.l
	if l.leases[lz.id] != lz || lz.handedBack {
		lz.log.Debug().Err(o.err).Msg("Action of a withdrawn or handed-back lease has stopped")
		return
	}
	lz.complete(o.result, o.err)
	l.version++
	ev := lz.log.Info()
	if o.err != nil {
		ev = lz.log.Warn().Err(o.err)
	}
	ev.Str("code", codes.Code(lz.status.GetCode()).String()).Dur("duration", l.clk.Now().Sub(lz.started)).
		Int32("exit_code", o.result.GetExitCode()).Msg("Action finished")
}

// stopAll stops every running action and hands its lease back.
func (l *loop) stopAll(reason string) {
	n := 0
	for _, lz := range l.sortedLeases() {
		if lz.state != rwpb.LeaseState_ACTIVE {
			continue
		}
		lz.handBack(reason)
		lz.log.Warn().Dur("ran", l.clk.Now().Sub(lz.started)).Msg("Action stopped; lease handed back")
		n++
	}
	if n > 0 {
		l.version++
	}
}

// active counts the leases whose actions run. Actions of withdrawn leases that are still
// stopping are not counted: the scheduler already counts their slot as free.
func (l *loop) active() int {
	n := 0
	for _, lz := range l.leases {
		if lz.state == rwpb.LeaseState_ACTIVE {
			n++
		}
	}
	return n
}

// drained reports whether a drain is complete: no action running, every result and
// hand-back acknowledged, and BOT_TERMINATING heard by the scheduler. A worker that holds
// nothing has nothing to lose: when the scheduler cannot be reached it need not wait to be
// heard.
func (l *loop) drained() bool {
	return l.phase == draining && l.running == 0 && len(l.leases) == 0 && (l.terminatingAcked || l.lastCallFailed)
}

// waitActions waits until every action goroutine has reported back. Their contexts must have
// been cancelled.
func (l *loop) waitActions() {
	for l.running > 0 {
		l.outcome(<-l.outcomes)
	}
}
