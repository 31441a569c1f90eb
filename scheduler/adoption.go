package scheduler

import (
	"context"
	"slices"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// adoptionState is what a scheduler keeps to adopt leases it never handed out: after a
// failover (a new leader starts empty) or a restart, bots report the leases they still hold.
// Their ids carry the instance and the action digest (see newLeaseID), so the scheduler
// rebuilds the operation from the Action in the CAS and lets the bot finish it instead of
// running the action a second time. Guarded by Scheduler.mu.
type adoptionState struct {
	// ready maps the id of a reported lease the scheduler did not know to what was read from
	// the CAS for it, until the bot's report is applied.
	ready map[string]*adoptable
	// windowEnd ends the adoption window (Config.AdoptionWindow): before it, no new operation
	// is queued, so a client asking first does not make an action run twice while the bot
	// running it has not reported yet.
	windowEnd time.Time
	// wake is closed (and reset) when a lease is adopted: requests waiting for the window look
	// for the action in flight again.
	wake chan struct{}
	// ops are the operations of adopted leases by action, so that a client asking after the
	// adopted execution finished joins it instead of running the action again (see
	// adoptedLocked).
	ops map[actionKey]*operation
	// unclaimed are the operations of adopted leases of do-not-cache actions that no rebuilt
	// operation name has claimed yet, by action. Such operations are never in flight for
	// Execute to join (REAPI: their requests may not be merged), but a client's WaitExecution on
	// the name it watched before the restart is that very execution: admit pairs the name with
	// one of them (claimAdoptedLocked) instead of running the action again.
	unclaimed map[actionKey][]*operation
	// rebuilt are the queued operations of do-not-cache actions rebuilt from a client's old
	// name, by action: a lease of the action a bot reports afterwards takes one over
	// (adoptLeaseLocked) instead of leaving it queued to run a second time.
	rebuilt map[actionKey][]*operation
	// epoch starts the uuid of every lease id this scheduler hands out (newLeaseID): those are
	// never adopted.
	epoch string
}

// adoptable is an operation rebuilt for a reported lease, not yet adopted.
type adoptable struct {
	name       operationName
	action     *repb.Action
	platform   platform
	doNotCache bool
}

// prepareAdoption reads, outside the lock, the Action (and the platform) of every reported lease
// the scheduler does not know whose id names an action, so that applying the report adopts it
// (adoptLeaseLocked). A lease whose Action cannot be read is left alone: the bot is told to drop
// it, and a client waiting on the action rebuilds it from its operation name.
func (s *Scheduler) prepareAdoption(ctx context.Context, reported []*rwpb.Lease) {
	type todo struct {
		id   string
		name operationName
	}
	var todos []todo
	s.mu.Lock()
	for _, rl := range reported {
		if rl.GetId() == "" || s.leases[rl.Id] != nil || s.adopt.ready[rl.Id] != nil {
			continue
		}
		if rl.State == rwpb.LeaseState_CANCELLED {
			continue
		}
		if n, err := parseLeaseID(rl.Id); err == nil && !strings.HasPrefix(n.id, s.adopt.epoch) {
			todos = append(todos, todo{rl.Id, n})
		}
	}
	s.mu.Unlock()
	for _, t := range todos {
		a, err := s.readAdoptable(ctx, t.name)
		if err != nil {
			s.log.Warn().Err(err).Str("lease_id", t.id).Str("action_digest", t.name.action.String()).
				Msg("Cannot adopt a reported lease: its action is unreadable")
			continue
		}
		s.mu.Lock()
		if s.adopt.ready == nil {
			s.adopt.ready = map[string]*adoptable{}
		}
		s.adopt.ready[t.id] = a
		s.mu.Unlock()
	}
}

// readAdoptable reads the Action named by n and its platform (the Action's, else the Command's).
func (s *Scheduler) readAdoptable(ctx context.Context, n operationName) (*adoptable, error) {
	var action repb.Action
	if err := s.readMessage(ctx, n.action, &action, "Action"); err != nil {
		return nil, err
	}
	plat := action.Platform
	if len(plat.GetProperties()) == 0 {
		cd, err := digest.FromProto(action.CommandDigest)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "Invalid command digest in action %s: %s", n.action, status.Convert(err).Message())
		}
		var command repb.Command
		if err := s.readMessage(ctx, cd, &command, "Command"); err != nil {
			return nil, err
		}
		plat = command.Platform
	}
	return &adoptable{name: n, action: &action, platform: newPlatform(plat), doNotCache: action.DoNotCache}, nil
}

// adoptLeaseLocked adopts a lease bot b reported that the scheduler never handed out, if
// prepareAdoption readied it. It reports whether the lease was handled: a result (COMPLETED) is
// accepted like any other and the returned completion must be finished; a running lease
// (ACTIVE or PENDING) becomes the current lease of its operation, which clients join by the
// action's digest (Execute) or by their old operation names (WaitExecution). When the action
// is already finished or leased to another bot, the report is ignored and the bot drops it.
func (s *Scheduler) adoptLeaseLocked(b *botSession, rl *rwpb.Lease) (*completion, bool) {
	a := s.adopt.ready[rl.Id]
	if a == nil {
		return nil, false
	}
	delete(s.adopt.ready, rl.Id)
	ev := s.log.Info().Str("action_digest", a.name.action.String()).Str("lease_id", rl.Id).Str("bot_id", b.botID).
		Str("state", rl.State.String())
	var (
		result *repb.ActionResult
		st     = rl.Status
	)
	switch rl.State {
	case rwpb.LeaseState_COMPLETED:
		var retry bool
		if result, st, retry = leaseOutcome(rl); retry {
			ev.Msg("Not adopting a failed lease: a client waiting on the action runs it again")
			return nil, true
		}
	case rwpb.LeaseState_ACTIVE, rwpb.LeaseState_PENDING:
		if b.gone {
			return nil, false
		}
	default:
		return nil, false
	}
	key := actionKey{a.name.instance, a.name.action}
	op := s.inFlight[key]
	if op == nil && a.doNotCache {
		op = s.takeRebuiltLocked(key)
	}
	switch {
	case op == nil:
		op = s.newAdoptedOperationLocked(a)
		if a.doNotCache {
			if s.adopt.unclaimed == nil {
				s.adopt.unclaimed = map[actionKey][]*operation{}
			}
			s.adopt.unclaimed[key] = append(s.adopt.unclaimed[key], op)
		}
	case op.done || op.finishing:
		ev.Msg("Ignoring a reported lease whose action is already finished")
		return nil, true
	case op.lease != nil && rl.State != rwpb.LeaseState_COMPLETED:
		ev.Str("leased_to", op.lease.session.botID).Msg("Not adopting a reported lease: another bot runs the action")
		return nil, true
	}
	if s.adopt.ops == nil {
		s.adopt.ops = map[actionKey]*operation{}
	}
	s.adopt.ops[key] = op
	now := s.clk.Now()
	l := &lease{id: rl.Id, op: op, session: b, acked: true, assignedAt: now}
	s.leases[l.id] = l
	op.leaseIDs = append(op.leaseIDs, l.id)
	op.attempts++
	s.m.leasesAdopted.Inc()
	// Requests waiting for the adoption window look again: they join this operation.
	if s.adopt.wake != nil {
		close(s.adopt.wake)
		s.adopt.wake = nil
	}
	if rl.State == rwpb.LeaseState_COMPLETED {
		ev.Msg("Adopted the result of a lease handed out before a failover")
		return s.acceptResultLocked(l, result, st), true
	}
	s.dequeueLocked(op)
	op.lease = l
	s.addLeaseLocked(b, l)
	if rl.State == rwpb.LeaseState_ACTIVE {
		l.active, l.startedAt = true, now
		op.stage = repb.ExecutionStage_EXECUTING
	}
	op.notify()
	ev.Str("operation", op.name).Msg("Adopted a lease handed out before a failover")
	return nil, true
}

// newAdoptedOperationLocked registers a new in-flight operation for adoptable a, under a fresh
// name; clients' old names map to it when they call (admit joins the in-flight operation).
func (s *Scheduler) newAdoptedOperationLocked(a *adoptable) *operation {
	name := newOperationName(a.name.instance, a.name.action).String()
	s.seq++
	op := &operation{
		name:       name,
		instance:   a.name.instance,
		action:     a.name.action,
		actionMsg:  a.action,
		platform:   a.platform,
		doNotCache: a.doNotCache,
		seq:        s.seq,
		queuedAt:   s.clk.Now(),
		stage:      repb.ExecutionStage_QUEUED,
		changed:    make(chan struct{}),
		names:      []string{name},
	}
	s.ops[name] = op
	if !a.doNotCache {
		s.inFlight[actionKey{a.name.instance, a.name.action}] = op
	}
	return op
}

// awaitAdoptionWindow returns once the adoption window is over (at once when it is) or an
// in-flight operation of key exists (a bot reported it: it is joined), or with the call's
// status when it is cancelled, or UNAVAILABLE when the scheduler closes. It reports whether it
// waited: an adopted result may then have reached the action cache meanwhile.
func (s *Scheduler) awaitAdoptionWindow(ctx context.Context, key actionKey) (bool, error) {
	var (
		t  clock.Timer
		ch <-chan time.Time
	)
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		s.mu.Lock()
		wait := s.adopt.windowEnd.Sub(s.clk.Now())
		if wait <= 0 || s.inFlight[key] != nil {
			s.mu.Unlock()
			return t != nil, nil
		}
		if s.adopt.wake == nil {
			s.adopt.wake = make(chan struct{})
		}
		wake := s.adopt.wake
		s.mu.Unlock()
		if t == nil {
			t, ch = s.clk.NewTimer(wait)
		}
		select {
		case <-ch:
			return true, nil
		case <-wake:
		case <-ctx.Done():
			return true, status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return true, status.Error(codes.Unavailable, "Scheduler is shutting down")
		}
	}
}

// adoptedLocked returns the operation of an adopted lease of key that finished with a result
// and is still remembered, or nil. A client whose request crossed the adopted result (it asked
// before the result arrived and is admitted after it was published) joins it instead of
// running the action a second time.
func (s *Scheduler) adoptedLocked(key actionKey) *operation {
	op := s.adopt.ops[key]
	if op == nil {
		return nil
	}
	if s.ops[op.name] != op || op.response.GetStatus().GetCode() != int32(codes.OK) {
		delete(s.adopt.ops, key)
		return nil
	}
	return op
}

// takeRebuiltLocked returns a queued, unleased operation of do-not-cache action key rebuilt
// from a client's old name (see adoptionState.rebuilt) and forgets it there, or nil.
func (s *Scheduler) takeRebuiltLocked(key actionKey) *operation {
	ops := s.adopt.rebuilt[key]
	defer func() {
		if len(s.adopt.rebuilt[key]) == 0 {
			delete(s.adopt.rebuilt, key)
		}
	}()
	for len(ops) > 0 {
		op := ops[0]
		ops = ops[1:]
		s.adopt.rebuilt[key] = ops
		if s.ops[op.name] == op && op.queued() && op.lease == nil && !op.done && !op.finishing {
			return op
		}
	}
	return nil
}

// claimAdoptedLocked returns an operation of an adopted lease of do-not-cache action key that
// no rebuilt name has claimed yet (running or finished and still remembered) and marks it
// claimed, or nil. Each adopted execution answers one old name: two clients that ran the same
// do-not-cache action before the restart each get an execution of their own.
func (s *Scheduler) claimAdoptedLocked(key actionKey) *operation {
	ops := s.adopt.unclaimed[key]
	defer func() {
		if len(s.adopt.unclaimed[key]) == 0 {
			delete(s.adopt.unclaimed, key)
		}
	}()
	for len(ops) > 0 {
		op := ops[0]
		ops = ops[1:]
		s.adopt.unclaimed[key] = ops
		if s.ops[op.name] == op {
			return op
		}
	}
	return nil
}

// forgetAdoptionLocked drops op from the adoption bookkeeping (it is forgotten).
func (s *Scheduler) forgetAdoptionLocked(op *operation) {
	key := actionKey{op.instance, op.action}
	for _, m := range []map[actionKey][]*operation{s.adopt.unclaimed, s.adopt.rebuilt} {
		if ops := slices.DeleteFunc(m[key], func(o *operation) bool { return o == op }); len(ops) > 0 {
			m[key] = ops
		} else {
			delete(m, key)
		}
	}
	if s.adopt.ops[key] == op {
		delete(s.adopt.ops, key)
	}
}
