package scheduler

import (
	"context"
	"fmt"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// completion is a result accepted under the lock, to be written to the action cache and
// published once the lock is released.
type completion struct {
	op       *operation
	response *repb.ExecuteResponse
	cache    bool
}

// acceptResultLocked accepts the result of lease l for its operation (first result wins): the
// operation stops being queued or leased and is marked finishing. The returned completion must be
// passed to finish. result becomes the operation's (its execution metadata is filled in): pass
// a message nothing else holds, as leaseOutcome returns.
func (s *Scheduler) acceptResultLocked(l *lease, result *repb.ActionResult, st *spb.Status) *completion {
	op := l.op
	now := s.clk.Now()
	if op.lease != nil && op.lease != l {
		s.revokeLocked(op) // another bot runs it too: its lease vanishes
	}
	s.dequeueLocked(op)
	op.lease = nil
	op.finishing = true
	l.revoked = true

	if result == nil {
		result = &repb.ActionResult{}
	} // Otherwise the caller's own, freshly decoded by leaseOutcome: filled in without a copy.
	md := result.ExecutionMetadata
	if md == nil {
		md = &repb.ExecutedActionMetadata{}
		result.ExecutionMetadata = md
	}
	if md.Worker == "" {
		md.Worker = l.session.botID
	}
	if md.QueuedTimestamp == nil {
		md.QueuedTimestamp = timestamppb.New(op.queuedAt)
	}
	if md.WorkerStartTimestamp == nil {
		start := l.startedAt
		if start.IsZero() {
			start = l.assignedAt
		}
		md.WorkerStartTimestamp = timestamppb.New(start)
	}
	if md.WorkerCompletedTimestamp == nil {
		md.WorkerCompletedTimestamp = timestamppb.New(now)
	}
	resp := &repb.ExecuteResponse{
		Result:  result,
		Message: fmt.Sprintf("Executed on worker %s (attempt %d).", l.session.botID, op.attempts),
	}
	if st.GetCode() != int32(codes.OK) {
		resp.Status = st
	}
	ok := st.GetCode() == int32(codes.OK) && result.ExitCode == 0
	s.m.leasesCompleted.Inc()
	if l.session.workerState() == WorkerDraining {
		s.m.drainFinished.Inc()
		s.act.drainFinishedLocked(l.session)
	}
	s.log.Info().Str("action_digest", op.action.String()).Str("lease_id", l.id).Str("bot_id", l.session.botID).
		Str("operation", op.name).Int32("exit_code", result.ExitCode).Str("status", codes.Code(st.GetCode()).String()).
		Msg("Action finished")
	return &completion{op: op, response: resp, cache: ok && !op.doNotCache}
}

// finish writes accepted results to the action cache and publishes them. Call without the lock.
func (s *Scheduler) finish(ctx context.Context, cs []*completion) {
	for _, c := range cs {
		if !c.cache {
			continue
		}
		// The bot hanging up must not lose the cache entry of a result already accepted.
		if err := s.ac.Put(context.WithoutCancel(ctx), c.op.instance, c.op.action, c.response.Result); err != nil {
			s.log.Error().Err(err).Str("action_digest", c.op.action.String()).Str("operation", c.op.name).
				Msg("Failed to write the action result to the action cache")
		}
	}
	if len(cs) == 0 {
		return
	}
	s.enter()
	defer s.leave()
	for _, c := range cs {
		outcome := "executed"
		if c.response.Status.GetCode() != int32(codes.OK) {
			outcome = "failed"
		}
		s.publishLocked(c.op, c.response, outcome)
	}
}

// failLocked finishes op with an error status in its ExecuteResponse.
func (s *Scheduler) failLocked(op *operation, code codes.Code, msg string, details []*anypb.Any) {
	s.dequeueLocked(op)
	s.revokeLocked(op)
	resp := &repb.ExecuteResponse{
		Status:  &spb.Status{Code: int32(code), Message: msg, Details: details},
		Message: msg,
	}
	s.publishLocked(op, resp, "failed")
}

// cancelLocked finishes op with CANCELLED (in ExecuteResponse.status): a queued op leaves the queue, a leased one's lease
// vanishes from its bot's next reply. A finished or finishing op is left alone.
func (s *Scheduler) cancelLocked(op *operation) {
	if op.done || op.finishing {
		return
	}
	if l := op.lease; l != nil {
		s.log.Info().Str("action_digest", op.action.String()).Str("lease_id", l.id).Str("bot_id", l.session.botID).
			Str("operation", op.name).Msg("Cancelling the lease of a cancelled operation")
	}
	s.dequeueLocked(op)
	s.revokeLocked(op)
	s.publishLocked(op, cancelledResponse(op.name), "cancelled")
}

// publishLocked marks op done with resp and wakes its watchers.
func (s *Scheduler) publishLocked(op *operation, resp *repb.ExecuteResponse, outcome string) {
	if op.done {
		return
	}
	op.done = true
	op.finishing = false
	op.stage = repb.ExecutionStage_COMPLETED
	op.response = resp
	op.unmatchedGen++
	key := actionKey{op.instance, op.action}
	if s.inFlight[key] == op {
		delete(s.inFlight, key)
	}
	op.notify()
	s.m.actions.WithLabelValues(outcome).Inc()
	s.act.finishedLocked(op, resp, outcome, s.clk.Now())
	s.retainLocked(op)
}

// retainLocked keeps a finished operation answerable from memory, small: what only running it
// needed (the Action, its leases) is dropped now. The retained operations are a
// FIFO in finishing order, bounded by Config.CompletedRetention (age) and
// Config.MaxCompletedOperations (count); the oldest go first.
func (s *Scheduler) retainLocked(op *operation) {
	for _, id := range op.leaseIDs {
		if l := s.leases[id]; l != nil && l.op == op {
			delete(s.leases, id)
		}
	}
	op.leaseIDs = nil
	op.actionMsg = nil
	op.lastFailure = ""
	op.doneAt = s.clk.Now()
	s.retained = append(s.retained, op)
	for len(s.retained) > s.cfg.MaxCompletedOperations {
		s.forgetOldestLocked()
	}
	if len(s.retained) == 1 {
		s.deadlines.add(deadline{at: op.doneAt.Add(s.cfg.CompletedRetention), kind: operationRetention, op: op})
	}
}

// expireRetainedLocked forgets the retained operations older than Config.CompletedRetention
// and arms the deadline of the next one.
func (s *Scheduler) expireRetainedLocked() {
	now := s.clk.Now()
	for len(s.retained) > 0 && !now.Before(s.retained[0].doneAt.Add(s.cfg.CompletedRetention)) {
		s.forgetOldestLocked()
	}
	if len(s.retained) > 0 {
		op := s.retained[0]
		s.deadlines.add(deadline{at: op.doneAt.Add(s.cfg.CompletedRetention), kind: operationRetention, op: op})
	}
}

// forgetOldestLocked forgets the oldest retained operation.
func (s *Scheduler) forgetOldestLocked() {
	op := s.retained[0]
	s.retained[0] = nil
	s.retained = s.retained[1:]
	if len(s.retained) == 0 {
		s.retained = nil // let the backing array go
	}
	s.forgetOperationLocked(op)
}
