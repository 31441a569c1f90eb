package scheduler

import (
	"fmt"
	"sort"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
)

// enqueueLocked puts op in the queue, offers it to the bots waiting for work and starts its
// unmatched-platform wait if no connected bot can run it.
func (s *Scheduler) enqueueLocked(op *operation) {
	op.stage = repb.ExecutionStage_QUEUED
	s.queue.push(op)
	s.queueDepthChangedLocked(op)
	op.notify()
	s.offerLocked(op)
	if op.queued() {
		s.checkUnmatchedLocked(op, map[string]bool{})
	}
}

// dequeueLocked takes a queued op out of the queue.
func (s *Scheduler) dequeueLocked(op *operation) {
	if !op.queued() {
		return
	}
	s.queue.remove(op)
	s.queueDepthChangedLocked(op)
}

// offerLocked gives the bots whose calls are held waiting for work, longest waiting first, a
// chance to take queued work that op may have made available to them.
func (s *Scheduler) offerLocked(op *operation) {
	var waiting []*botSession
	for _, b := range s.sessions {
		if !b.waitingSince.IsZero() && b.acceptsWork() && b.canRun(op.platform) {
			waiting = append(waiting, b)
		}
	}
	sort.Slice(waiting, func(i, j int) bool { return waiting[i].waitingSince.Before(waiting[j].waitingSince) })
	for _, b := range waiting {
		if !op.queued() {
			return
		}
		if s.assignLocked(b) {
			b.wakeUp()
		}
	}
}

// assignLocked fills the bot's free capacity from the queue, in fair order. It reports whether
// any lease was handed out.
func (s *Scheduler) assignLocked(b *botSession) bool {
	if s.closed {
		return false // fenced: a closed scheduler (a leader that lost its term) hands out nothing
	}
	assigned := false
	for b.acceptsWork() {
		op := s.queue.popFor(b.canRun)
		if op == nil {
			break
		}
		s.queueDepthChangedLocked(op)
		s.leaseLocked(op, b)
		assigned = true
	}
	return assigned
}

// leaseLocked hands op to bot b as a new PENDING lease.
func (s *Scheduler) leaseLocked(op *operation, b *botSession) {
	now := s.clk.Now()
	l := &lease{id: newLeaseID(s.adopt.epoch, op.instance, op.action), op: op, session: b, assignedAt: now}
	s.addLeaseLocked(b, l)
	s.leases[l.id] = l
	op.leaseIDs = append(op.leaseIDs, l.id)
	op.lease = l
	op.attempts++
	op.unmatchedSince = time.Time{}
	op.unmatchedGen++
	s.m.leasesHanded.Inc()
	s.log.Info().Str("action_digest", op.action.String()).Str("lease_id", l.id).Str("bot_id", b.botID).
		Str("operation", op.name).Int("attempt", op.attempts).Msg("Lease handed out")
}

// requeueLocked ends lease l without a result and, if it was its operation's current lease,
// queues the operation again. counts says whether this counts against the retry limit; past
// the limit the operation fails with UNAVAILABLE.
func (s *Scheduler) requeueLocked(l *lease, reason string, counts bool, cause string) {
	s.dropLeaseLocked(l.session, l)
	if l.revoked {
		return
	}
	l.revoked = true
	op := l.op
	if op.lease != l || op.done || op.finishing {
		return
	}
	op.lease = nil
	op.lastFailure = cause
	s.act.leaseRequeuedLocked(l, reason, s.clk.Now())
	if len(op.lostAttempts) < maxLostAttempts {
		op.lostAttempts = append(op.lostAttempts, LostAttempt{Attempt: op.attempts, Worker: l.session.botID,
			AssignedAt: l.assignedAt, StartedAt: l.startedAt, EndedAt: s.clk.Now(), Reason: reason, Cause: cause})
	}
	ev := s.log.Warn().Str("action_digest", op.action.String()).Str("lease_id", l.id).Str("bot_id", l.session.botID).
		Str("operation", op.name).Str("reason", reason).Str("cause", cause)
	if counts {
		op.retries++
		if op.retries > s.cfg.RetryLimit {
			ev.Int("retries", op.retries-1).Msg("Lease lost; retry limit reached, failing the action")
			s.failLocked(op, codes.Unavailable, fmt.Sprintf(
				"Action %s was attempted %d times without a result; last failure: %s", op.action, op.attempts, cause), nil)
			return
		}
	}
	ev.Int("retries", op.retries).Msg("Lease lost; requeueing the action")
	s.m.leasesRequeued.WithLabelValues(reason).Inc()
	s.enqueueLocked(op)
}

// revokeLocked withdraws op's current lease (cancellation, or another lease's result won): it
// vanishes from the bot's next reply.
func (s *Scheduler) revokeLocked(op *operation) {
	l := op.lease
	if l == nil {
		return
	}
	op.lease = nil
	l.revoked = true
	s.dropLeaseLocked(l.session, l)
	l.session.wakeUp()
}

// closeSessionLocked ends a bot session, requeueing its leases for reason.
func (s *Scheduler) closeSessionLocked(b *botSession, reason string) {
	s.act.sessionClosingLocked(b, reason, s.clk.Now())
	for len(b.leases) > 0 {
		l := b.leases[0]
		s.requeueLocked(l, reason, true, fmt.Sprintf("bot %s (session %s) %s", b.botID, b.name, reasonText(reason)))
	}
	b.gone = true
	b.goneAt = s.clk.Now()
	b.expireGen++
	delete(s.sessions, b.name)
	if s.byBot[b.botID] == b {
		delete(s.byBot, b.botID)
	}
	s.gone[b.name] = b
	s.deadlines.add(deadline{at: b.goneAt.Add(s.cfg.GoneWorkerRetention), kind: goneRetention, session: b})
	b.wakeUp()
	s.workersDirty = true
	s.rescanUnmatchedLocked()
}

func reasonText(reason string) string {
	switch reason {
	case requeueExpired:
		return "stopped updating its session"
	case requeueLost:
		return "was replaced by a new session"
	case requeueGone:
		return "disconnected and did not call again"
	default:
		return reason
	}
}

// checkUnmatchedLocked starts the unmatched-platform wait of a queued op that no connected bot
// can run. cache memoizes anyLiveMatch per platform key.
func (s *Scheduler) checkUnmatchedLocked(op *operation, cache map[string]bool) {
	if !op.queued() || !op.unmatchedSince.IsZero() {
		return
	}
	m, ok := cache[op.platform.key]
	if !ok {
		m = s.anyLiveMatchLocked(op.platform)
		cache[op.platform.key] = m
	}
	if m {
		return
	}
	op.unmatchedSince = s.clk.Now()
	op.unmatchedGen++
	s.deadlines.add(deadline{at: op.unmatchedSince.Add(s.cfg.UnmatchedPlatformWait), kind: unmatchedPlatform, op: op, gen: op.unmatchedGen})
	s.log.Info().Str("action_digest", op.action.String()).Str("operation", op.name).Str("platform", op.platform.label()).
		Msg("No connected bot can run this action yet")
}

// rescanUnmatchedLocked starts the unmatched-platform wait of every queued op that lost its last
// matching bot.
func (s *Scheduler) rescanUnmatchedLocked() {
	cache := map[string]bool{}
	s.queue.each(func(op *operation) { s.checkUnmatchedLocked(op, cache) })
}

// anyLiveMatchLocked reports whether a live session's bot can run p.
func (s *Scheduler) anyLiveMatchLocked(p platform) bool {
	for _, b := range s.sessions {
		if b.canRun(p) {
			return true
		}
	}
	return false
}

// unmatchedDueLocked fails op if it is still queued and still no connected bot can run it.
func (s *Scheduler) unmatchedDueLocked(op *operation, gen uint64) {
	if op.unmatchedGen != gen || !op.queued() || op.done {
		return
	}
	if s.anyLiveMatchLocked(op.platform) {
		op.unmatchedSince = time.Time{}
		return
	}
	msg := fmt.Sprintf("No connected worker can run action %s within %s: %s",
		op.action, s.cfg.UnmatchedPlatformWait, s.missingPropertyLocked(op.platform))
	s.log.Warn().Str("action_digest", op.action.String()).Str("operation", op.name).Str("platform", op.platform.label()).
		Msg(msg)
	s.dequeueLocked(op)
	s.failLocked(op, codes.FailedPrecondition, msg, nil)
}

// missingPropertyLocked names what the connected bots lack to run p.
func (s *Scheduler) missingPropertyLocked(p platform) string {
	if len(s.sessions) == 0 {
		if len(p.props) == 0 {
			return "no worker is connected"
		}
		return fmt.Sprintf("no worker is connected (platform property %s=%s required)", p.props[0].name, p.props[0].value)
	}
	// A property no bot has at all is the clearest answer.
	for _, pp := range p.props {
		found := false
		for _, b := range s.sessions {
			if b.props[pp.name][pp.value] {
				found = true
				break
			}
		}
		if !found {
			return fmt.Sprintf("no worker has platform property %s=%s", pp.name, pp.value)
		}
	}
	// Otherwise the first property the closest bot lacks.
	var best *botSession
	bestN := -1
	for _, b := range s.sessions {
		if n := b.props.countSatisfied(p); n > bestN || n == bestN && b.botID < best.botID {
			best, bestN = b, n
		}
	}
	if i := best.props.firstMissing(p); i >= 0 {
		return fmt.Sprintf("no worker has all required properties; the closest, %s, lacks platform property %s=%s",
			best.botID, p.props[i].name, p.props[i].value)
	}
	return "no worker matches"
}

// queueDepthChangedLocked sets the queue-depth gauge of op's platform. A closed scheduler leaves
// the gauges it cleared at zero: its queue is the next leader's (with --ha=etcd), and a sum over
// the replicas must count the leader's queue only.
func (s *Scheduler) queueDepthChangedLocked(op *operation) {
	if !s.closed {
		s.m.queueDepth.WithLabelValues(op.platform.label()).Set(float64(s.queue.depth[op.platform.key]))
	}
}
