package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/buildfleet/buildfleet/internal/clock"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// botsService is the Remote Workers API Bots service of a Scheduler.
type botsService struct {
	rwpb.UnimplementedBotsServer
	s *Scheduler
}

// CreateBotSession opens a session named "{parent}/botSessions/{uuid}" (a client-provided name
// is ignored). A live session of the same bot id is closed and its leases requeued. Leases in
// the request are handled like stray reports (see strayLeaseLocked). The reply already carries
// leases if work is queued for the bot.
func (bs *botsService) CreateBotSession(ctx context.Context, req *rwpb.CreateBotSessionRequest) (*rwpb.BotSession, error) {
	s := bs.s
	in := req.BotSession
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "CreateBotSession: bot_session is required")
	}
	if in.BotId == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateBotSession: bot_session.bot_id is required")
	}
	name := "botSessions/" + uuid.NewString()
	if req.Parent != "" {
		name = req.Parent + "/" + name
	}
	s.prepareAdoption(ctx, in.Leases)
	s.enter()
	if s.closed {
		s.leave()
		return nil, status.Error(codes.Unavailable, "Scheduler is shutting down")
	}
	if old := s.byBot[in.BotId]; old != nil {
		s.log.Warn().Str("bot_id", in.BotId).Str("session", old.name).Msg("Bot opened a new session; closing its old one")
		s.closeSessionLocked(old, requeueLost)
	}
	b := s.newSessionLocked(name, in)
	// Leases a reconnecting bot carries over from an old session: results are still accepted
	// (first result wins) and running ones re-attached if nobody took them meanwhile.
	if cs := s.applyLeasesLocked(b, in.Leases); len(cs) > 0 {
		b.calls++
		s.leave()
		s.finish(ctx, cs)
		s.enter()
		b.calls--
	}
	defer s.leave()
	if b.gone {
		return nil, status.Errorf(codes.FailedPrecondition, "Bot session %s was closed; open a new one", b.name)
	}
	s.assignLocked(b)
	return s.replyLocked(b), nil
}

// UpdateBotSession applies the bot's report (status, worker, lease states and results) and
// answers with the leases the bot should hold. When there is nothing new to tell the bot, the
// call is held until there is (work for it, a lease withdrawn) or its deadline nears.
func (bs *botsService) UpdateBotSession(ctx context.Context, req *rwpb.UpdateBotSessionRequest) (*rwpb.BotSession, error) {
	s := bs.s
	in := req.BotSession
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "UpdateBotSession: bot_session is required")
	}
	if req.Name != in.Name {
		return nil, status.Errorf(codes.InvalidArgument, "UpdateBotSession: name %q does not match bot_session.name %q", req.Name, in.Name)
	}
	// A call its bot has already given up on carries a stale view of the bot's leases: applying
	// it could make a running lease look unreported.
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	hold := s.holdFor(ctx)
	s.prepareAdoption(ctx, in.Leases)

	s.enter()
	if s.fenced {
		// A fenced leader accepts no result: the bot keeps it and reports it to the next one.
		s.leave()
		return nil, status.Error(codes.Unavailable, "Scheduler is shutting down")
	}
	b, err := s.sessionForUpdateLocked(in)
	if err != nil {
		s.leave()
		return nil, err
	}
	b.calls++
	// A bot has one call in flight: a newer call means it gave up on the older ones, which are
	// woken to end without handing out leases (see abandoned).
	b.callGen++
	gen := b.callGen
	if b.calls > 1 {
		b.wakeUp()
	}
	reported := map[string]bool{}
	// A finished lease (a result, a failure or a drain hand-back) is news: the bot waits for the
	// reply that acknowledges it, so the call is answered at once.
	news := false
	for _, l := range in.Leases {
		if l.State != rwpb.LeaseState_COMPLETED && l.State != rwpb.LeaseState_CANCELLED {
			reported[l.Id] = true
		} else {
			news = true
		}
	}
	news = s.applyStatusLocked(b, in) || news
	completions := s.applyLeasesLocked(b, in.Leases)
	if len(completions) > 0 {
		news = true
		s.leave()
		s.finish(ctx, completions)
		s.enter()
	}

	var (
		timer   clock.Timer
		timerCh <-chan time.Time
		waited  bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if b.gone {
			s.endCallLocked(b, gen, false)
			s.leave()
			return nil, status.Errorf(codes.FailedPrecondition, "Bot session %s was closed; open a new one", b.name)
		}
		if err := abandoned(ctx, b, gen); err != nil {
			// The bot cancelled its last call or its connection closed: a live bot calls again at
			// once; a dead one never does, and its leases need not wait for the session to expire.
			s.endCallLocked(b, gen, errors.Is(ctx.Err(), context.Canceled))
			s.leave()
			return nil, err
		}
		if s.assignLocked(b) || s.leasesDifferLocked(b, reported) {
			news = true
		}
		if news || waited || hold <= 0 || s.closed {
			reply := s.replyLocked(b)
			// A drained worker exits after this reply (it has nothing left to report): if it
			// does not call again within the disconnect grace, its session is closed then rather
			// than when it expires.
			s.endCallLocked(b, gen, b.status == rwpb.BotStatus_BOT_TERMINATING && len(b.leases) == 0)
			s.leave()
			return reply, nil
		}
		if timer == nil {
			timer, timerCh = s.clk.NewTimer(hold)
		}
		if b.waitingSince.IsZero() {
			b.waitingSince = s.clk.Now()
		}
		wake := b.wake
		s.leave()
		select {
		case <-wake:
		case <-timerCh:
			waited = true
		case <-ctx.Done():
			waited = true
		case <-s.done:
			waited = true
		}
		s.enter()
	}
}

// endCallLocked ends call gen of session b. mayHangUp tells whether the bot may not call again
// after that call: it cancelled the call (its process may have died), or the reply told it it
// is drained. Calls overlap when a bot gives up on a held call and calls again before the
// scheduler has seen the first one end, so the latest call to arrive need not be the last to
// end: the disconnect deadline is armed when the last call in progress ends, on how the latest
// call ended.
func (s *Scheduler) endCallLocked(b *botSession, gen uint64, mayHangUp bool) {
	b.calls--
	b.stopWaitingIfIdle()
	if gen == b.callGen {
		b.latestMayHangUp = mayHangUp
	}
	if b.calls == 0 && b.latestMayHangUp {
		s.deadlines.add(deadline{at: s.clk.Now().Add(s.cfg.DisconnectGrace), kind: sessionDisconnect, session: b, gen: b.callGen})
	}
}

// abandoned returns an error when the bot has given up on the call gen of session b: its
// context ended (the bot cancelled it or it timed out) or the bot sent a newer call. Leases
// must not be handed out in the reply to such a call: it never reaches the bot's loop, and the
// leases would wait for the bot to miss them twice before being requeued as never acknowledged.
func abandoned(ctx context.Context, b *botSession, gen uint64) error {
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	if b.callGen != gen {
		return status.Errorf(codes.Aborted, "UpdateBotSession of %s was superseded by a newer call of the same session", b.name)
	}
	return nil
}

// holdFor returns how long an UpdateBotSession call may be held: a share of the remaining
// deadline (none when little is left), capped.
func (s *Scheduler) holdFor(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return s.cfg.LongPollMax
	}
	// gRPC deadlines are wall-clock times, so the remaining time is measured on the wall clock;
	// the hold itself runs on the injected clock.
	rem := time.Until(dl)
	if rem < s.cfg.LongPollMinRemaining {
		return 0
	}
	return min(time.Duration(float64(rem)*s.cfg.LongPollFraction), s.cfg.LongPollMax)
}

// newSessionLocked registers a live session for the bot described by in.
func (s *Scheduler) newSessionLocked(name string, in *rwpb.BotSession) *botSession {
	now := s.clk.Now()
	st := in.Status
	if st == rwpb.BotStatus_BOT_STATUS_UNSPECIFIED {
		st = rwpb.BotStatus_OK
	}
	b := &botSession{
		name:      name,
		botID:     in.BotId,
		version:   in.Version,
		status:    st,
		props:     newBotProperties(in.Worker),
		capacity:  capacityOf(in.Worker),
		matches:   map[string]bool{},
		createdAt: now,
		lastSeen:  now,
		wake:      make(chan struct{}),
	}
	delete(s.gone, name)
	s.sessions[name] = b
	s.byBot[b.botID] = b
	s.workersDirty = true
	s.log.Info().Str("bot_id", b.botID).Str("session", name).Int("capacity", b.capacity).Str("version", b.version).
		Str("status", st.String()).Msg("Bot session opened")
	if st == rwpb.BotStatus_BOT_TERMINATING {
		s.startDrainLocked(b, drainInfoOf(in.Worker), now)
	}
	return b
}

// sessionForUpdateLocked finds the live session in names. An unknown or expired session is
// opened again under the same name (the scheduler restarted, or the bot was cut off for a
// while) unless the bot has opened a newer one.
func (s *Scheduler) sessionForUpdateLocked(in *rwpb.BotSession) (*botSession, error) {
	if b := s.sessions[in.Name]; b != nil {
		if in.BotId != "" && in.BotId != b.botID {
			return nil, status.Errorf(codes.InvalidArgument, "Bot session %s belongs to bot %q, not %q", in.Name, b.botID, in.BotId)
		}
		return b, nil
	}
	if s.closed {
		return nil, status.Error(codes.Unavailable, "Scheduler is shutting down")
	}
	if in.Name == "" || in.BotId == "" {
		return nil, status.Error(codes.InvalidArgument, "UpdateBotSession: bot_session.name and bot_session.bot_id are required")
	}
	if other := s.byBot[in.BotId]; other != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "Bot session %s was replaced by %s", in.Name, other.name)
	}
	s.log.Info().Str("bot_id", in.BotId).Str("session", in.Name).Msg("Unknown or expired bot session is back; reopening it")
	return s.newSessionLocked(in.Name, in), nil
}

// applyStatusLocked records the bot's status and worker description. It reports whether the
// status changed (the bot is then answered at once).
func (s *Scheduler) applyStatusLocked(b *botSession, in *rwpb.BotSession) bool {
	now := s.clk.Now()
	b.lastSeen = now
	if in.Version != "" {
		b.version = in.Version
	}
	if in.Worker != nil {
		if c := capacityOf(in.Worker); c != b.capacity {
			b.capacity = c
			s.workersDirty = true
		}
		if props := newBotProperties(in.Worker); !props.equal(b.props) {
			b.props = props
			b.matches = map[string]bool{}
			s.rescanUnmatchedLocked()
		}
	}
	st := in.Status
	if st == rwpb.BotStatus_BOT_STATUS_UNSPECIFIED || st == b.status {
		if b.status == rwpb.BotStatus_BOT_TERMINATING && in.Worker != nil {
			s.updateDrainLocked(b, drainInfoOf(in.Worker))
		}
		return false
	}
	s.log.Info().Str("bot_id", b.botID).Str("session", b.name).Str("from", b.status.String()).Str("to", st.String()).
		Int("leases", len(b.leases)).Msg("Bot status changed")
	b.status = st
	s.workersDirty = true
	if st == rwpb.BotStatus_BOT_TERMINATING && b.drainingSince.IsZero() {
		s.startDrainLocked(b, drainInfoOf(in.Worker), now)
	} else if st == rwpb.BotStatus_OK {
		b.drainingSince = time.Time{}
		b.drain = drainInfo{}
	}
	return true
}

// startDrainLocked records that bot b started draining at now, as d describes, counts the
// notice and logs it.
func (s *Scheduler) startDrainLocked(b *botSession, d drainInfo, now time.Time) {
	b.drainingSince = now
	b.drain = d
	s.m.drainNotices.WithLabelValues(d.label()).Inc()
	s.act.drainStartedLocked(b, now)
	ev := s.log.Warn().Str("bot_id", b.botID).Str("session", b.name).Int("leases", len(b.leases)).
		Str("kind", d.kind).Str("reason", d.reason)
	if !d.deadline.IsZero() {
		ev = ev.Time("deadline", d.deadline).Dur("in", d.deadline.Sub(now))
	}
	ev.Msg("Bot is draining (BOT_TERMINATING): no new leases for it")
}

// updateDrainLocked records a draining bot's report of its drain; a changed deadline is logged.
func (s *Scheduler) updateDrainLocked(b *botSession, d drainInfo) {
	if d == b.drain {
		return
	}
	if !d.deadline.Equal(b.drain.deadline) {
		s.log.Warn().Str("bot_id", b.botID).Str("session", b.name).Time("deadline", d.deadline).
			Time("previous_deadline", b.drain.deadline).Str("kind", d.kind).Str("reason", d.reason).
			Msg("Draining bot's deadline changed")
	}
	b.drain = d
	s.act.drainUpdatedLocked(b)
}

// applyLeasesLocked applies the bot's lease reports. Results accepted are returned to be
// finished outside the lock.
func (s *Scheduler) applyLeasesLocked(b *botSession, reported []*rwpb.Lease) []*completion {
	now := s.clk.Now()
	seen := map[string]bool{}
	var cs []*completion
	for _, rl := range reported {
		if rl.Id == "" || seen[rl.Id] {
			continue
		}
		seen[rl.Id] = true
		l := b.leaseByID(rl.Id)
		if l == nil {
			if c := s.strayLeaseLocked(b, rl); c != nil {
				cs = append(cs, c)
			}
			continue
		}
		op := l.op
		switch rl.State {
		case rwpb.LeaseState_COMPLETED:
			s.dropLeaseLocked(b, l)
			if c := s.leaseCompletedLocked(b, l, rl); c != nil {
				cs = append(cs, c)
			}
		case rwpb.LeaseState_CANCELLED:
			s.requeueLocked(l, requeueRetry, true, fmt.Sprintf("bot %s reported lease %s CANCELLED", b.botID, l.id))
		case rwpb.LeaseState_ACTIVE:
			l.acked, l.missed = true, 0
			if !l.active {
				l.active, l.startedAt = true, now
				op.stage = repb.ExecutionStage_EXECUTING
				op.notify()
				s.log.Info().Str("action_digest", op.action.String()).Str("lease_id", l.id).Str("bot_id", b.botID).
					Msg("Lease active")
			}
		default:
			l.acked, l.missed = true, 0
		}
	}
	for _, l := range append([]*lease(nil), b.leases...) {
		if seen[l.id] {
			continue
		}
		if l.acked {
			s.requeueLocked(l, requeueLost, true, fmt.Sprintf("bot %s stopped reporting lease %s", b.botID, l.id))
			continue
		}
		// The reply that carried the lease may have been lost: it is sent again once.
		l.missed++
		if l.missed >= 2 {
			s.requeueLocked(l, requeueLost, false, fmt.Sprintf("bot %s never acknowledged lease %s", b.botID, l.id))
		}
	}
	return cs
}

// leaseOutcome reads a COMPLETED lease report: the result and status, and whether it is a
// failure to retry (INTERNAL, UNAVAILABLE, or no usable result) rather than a result.
func leaseOutcome(rl *rwpb.Lease) (result *repb.ActionResult, st *spb.Status, retry bool) {
	st = rl.Status
	if st == nil {
		st = &spb.Status{}
	}
	if rl.Result != nil {
		result = &repb.ActionResult{}
		if err := rl.Result.UnmarshalTo(result); err != nil {
			return nil, &spb.Status{Code: int32(codes.Internal), Message: "undecodable lease result: " + err.Error()}, true
		}
	} else if st.Code == int32(codes.OK) {
		return nil, &spb.Status{Code: int32(codes.Internal), Message: "lease COMPLETED without a result"}, true
	}
	c := codes.Code(st.Code)
	return result, st, c == codes.Internal || c == codes.Unavailable
}

// leaseCompletedLocked handles a COMPLETED report of one of the session's current leases.
func (s *Scheduler) leaseCompletedLocked(b *botSession, l *lease, rl *rwpb.Lease) *completion {
	result, st, retry := leaseOutcome(rl)
	cause := func() string { return fmt.Sprintf("bot %s: %s: %s", b.botID, codes.Code(st.Code), st.Message) }
	switch {
	case codes.Code(st.Code) == codes.Unavailable && b.status == rwpb.BotStatus_BOT_TERMINATING:
		s.requeueLocked(l, requeueHandedBack, false, cause())
		return nil
	case retry:
		s.requeueLocked(l, requeueRetry, true, cause())
		return nil
	case l.revoked || l.op.done || l.op.finishing:
		return nil
	}
	return s.acceptResultLocked(l, result, st)
}

// strayLeaseLocked handles a report of a lease that is not one of the session's current
// leases: a lease handed out before a failover is adopted (adoptLeaseLocked); a late result of a requeued lease can still win; a lease the bot still runs after
// its session expired is re-attached if nobody else took the action meanwhile; anything else is
// left out of the reply, which tells the bot to drop it.
func (s *Scheduler) strayLeaseLocked(b *botSession, rl *rwpb.Lease) *completion {
	l := s.leases[rl.Id]
	if l == nil {
		if c, ok := s.adoptLeaseLocked(b, rl); ok {
			return c
		}
		s.log.Debug().Str("lease_id", rl.Id).Str("bot_id", b.botID).Msg("Bot reported an unknown lease; dropping it")
		return nil
	}
	op := l.op
	ev := s.log.Info().Str("action_digest", op.action.String()).Str("lease_id", l.id).Str("bot_id", b.botID)
	if op.done || op.finishing {
		ev.Msg("Ignoring a report of a lease whose action is already finished")
		return nil
	}
	switch rl.State {
	case rwpb.LeaseState_COMPLETED:
		result, st, retry := leaseOutcome(rl)
		if retry {
			return nil
		}
		ev.Msg("Late result of a requeued lease arrived first; accepting it")
		if l.session != b {
			s.dropLeaseLocked(l.session, l)
		}
		l.session = b
		return s.acceptResultLocked(l, result, st)
	case rwpb.LeaseState_ACTIVE, rwpb.LeaseState_PENDING:
		if !op.queued() || !b.canRun(op.platform) || len(b.leases) >= b.capacity || b.gone {
			return nil
		}
		s.dequeueLocked(op)
		l.session, l.revoked, l.acked, l.missed = b, false, true, 0
		s.addLeaseLocked(b, l)
		op.lease = l
		if rl.State == rwpb.LeaseState_ACTIVE {
			l.active = true
			op.stage = repb.ExecutionStage_EXECUTING
			op.notify()
		}
		ev.Msg("Re-attached a lease the bot still holds")
	}
	return nil
}

// leasesDifferLocked reports whether the session's current leases differ from those the bot
// reported holding, i.e. whether the reply tells the bot something new.
func (s *Scheduler) leasesDifferLocked(b *botSession, reported map[string]bool) bool {
	if len(b.leases) != len(reported) {
		return true
	}
	for _, l := range b.leases {
		if !reported[l.id] {
			return true
		}
	}
	return false
}

// replyLocked renders the session for the bot and restarts its expiry.
func (s *Scheduler) replyLocked(b *botSession) *rwpb.BotSession {
	now := s.clk.Now()
	b.lastSeen = now
	b.expireAt = now.Add(s.cfg.SessionExpiry)
	b.expireGen++
	s.deadlines.add(deadline{at: b.expireAt, kind: sessionExpiry, session: b, gen: b.expireGen})
	exp := timestamppb.New(b.expireAt)
	out := &rwpb.BotSession{
		Name:       b.name,
		BotId:      b.botID,
		Status:     b.status,
		ExpireTime: exp,
		Version:    b.version,
	}
	for _, l := range b.leases {
		// A lease the bot has not started is PENDING and carries its payload, also when the bot
		// has already seen it (it may have restarted); a started one is ACTIVE, without payload.
		rl := &rwpb.Lease{Id: l.id, State: rwpb.LeaseState_ACTIVE, ExpireTime: exp}
		if !l.active {
			rl.State = rwpb.LeaseState_PENDING
			// A finished operation drops its Action, but its leases are no session's any more.
			if l.op.actionMsg != nil {
				if p, err := anypb.New(l.op.actionMsg); err == nil {
					rl.Payload = p
				}
			}
			rl.Requirements = l.op.platform.requirements()
		}
		out.Leases = append(out.Leases, rl)
	}
	return out
}
