package worker

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// completerTimeout bounds one Heartbeat or Complete call to the platform.
const completerTimeout = 10 * time.Second

// notice handles an interruption notice. The first one moves the worker from serving to
// draining; later ones may only bring the deadline forward. An Immediate notice (a second
// signal) has its deadline now: everything stops and is handed back at once.
func (l *loop) notice(n cloud.Notice) {
	now := l.clk.Now()
	log := l.log.With().Str("source", n.Source).Str("kind", string(n.Kind)).Str("reason", n.Reason).Logger()
	if n.Soft && !l.cfg.DrainOnSoftNotice {
		log.Info().Time("deadline", n.Deadline).Msg("Advisory notice received; not draining (soft notices are configured not to drain)")
		return
	}
	deadline := n.Deadline
	if deadline.IsZero() {
		deadline = now.Add(l.cfg.DrainTimeout)
	}
	if n.Immediate && deadline.After(now) {
		deadline = now
	}
	if l.phase == serving {
		l.phase = draining
		l.drainNotice = n
		l.version++
		log.Warn().Time("deadline", deadline).Dur("in", deadline.Sub(now)).Int("leases", len(l.leases)).
			Msg("Interruption notice: draining (BOT_TERMINATING, no new leases)")
		l.setDeadline(deadline, now)
		if l.cfg.Completer != nil {
			l.heartbeat()
			l.hbTicker, l.hbC = l.clk.NewTicker(l.cfg.CompleterHeartbeatInterval)
		}
		stopAt := deadline.Add(-l.cfg.DrainSafetyMargin)
		for _, lz := range l.sortedLeases() {
			if lz.state != rwpb.LeaseState_ACTIVE {
				continue
			}
			if lz.timeout > 0 && !lz.started.Add(lz.timeout).After(stopAt) {
				lz.log.Info().Dur("timeout", lz.timeout).Msg("Draining: action runs on; its timeout ends it before the stop point")
			} else {
				lz.log.Info().Time("stop_at", stopAt).Msg("Draining: action runs on until the stop point, then is handed back")
			}
		}
		return
	}
	if !deadline.Before(l.deadline) {
		log.Info().Time("deadline", deadline).Time("current_deadline", l.deadline).Msg("Further notice does not bring the deadline forward")
		return
	}
	log.Warn().Time("deadline", deadline).Time("previous_deadline", l.deadline).Msg("Further notice brings the deadline forward")
	l.setDeadline(deadline, now)
	l.version++ // the scheduler hears the new deadline
}

// setDeadline plans the drain against deadline: running actions are stopped and handed back
// at deadline minus the safety margin, and the drain gives up at deadline minus half the
// margin (time left to tell the platform and exit). A deadline already past stops everything
// now and allows HandBackGrace to hand the leases back.
func (l *loop) setDeadline(deadline, now time.Time) {
	l.deadline = deadline
	for _, t := range []*clockTimer{{&l.stopTimer, &l.stopC}, {&l.finalTimer, &l.finalC}} {
		if *t.timer != nil {
			(*t.timer).Stop()
			*t.timer, *t.c = nil, nil
		}
	}
	stopAt := deadline.Add(-l.cfg.DrainSafetyMargin)
	final := deadline.Add(-l.cfg.DrainSafetyMargin / 2)
	if !final.After(now) {
		final = deadline
		if !final.After(now) {
			final = now.Add(l.cfg.HandBackGrace)
		}
	}
	if stopAt.After(now) {
		l.stopTimer, l.stopC = l.clk.NewTimer(stopAt.Sub(now))
	} else {
		l.stopAll("Worker " + l.cfg.WorkerID + " is draining and its deadline is too close to finish the action; handed back")
	}
	l.finalTimer, l.finalC = l.clk.NewTimer(final.Sub(now))
}

// heartbeat asks the platform to keep waiting while the drain goes on.
func (l *loop) heartbeat() {
	c := l.cfg.Completer
	if c == nil {
		return
	}
	log := l.log
	go func() {
		ctx, cancel := context.WithTimeout(l.callBase, completerTimeout)
		defer cancel()
		if err := c.Heartbeat(ctx); err != nil {
			log.Warn().Err(err).Msg("Drain heartbeat to the platform failed")
		}
	}()
}

// complete tells the platform that the worker has drained.
func (l *loop) complete() {
	c := l.cfg.Completer
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), completerTimeout)
	defer cancel()
	if err := c.Complete(ctx); err != nil {
		l.log.Warn().Err(err).Msg("Telling the platform that the worker has drained failed")
		return
	}
	l.log.Info().Msg("Platform told that the worker has drained")
}

// finish ends a successful drain.
func (l *loop) finish() error {
	if l.call != nil {
		l.cancelCall()
		<-l.calls
		l.call = nil
	}
	l.complete()
	l.log.Info().Dur("before_deadline", l.deadline.Sub(l.clk.Now())).Msg("Drained: every result acknowledged by the scheduler")
	return nil
}

// giveUp ends a drain that ran out of time: actions are stopped, and whatever the scheduler
// has not acknowledged is left to its lease expiry.
func (l *loop) giveUp() error {
	unacked := len(l.leases)
	l.stopAll("Worker " + l.cfg.WorkerID + " reached its drain deadline; handed back")
	if l.call != nil {
		l.cancelCall()
		<-l.calls
		l.call = nil
	}
	l.waitActions()
	l.complete()
	l.log.Error().Int("unacknowledged", unacked).Msg("Drain deadline reached before the scheduler acknowledged every lease")
	return status.Errorf(codes.DeadlineExceeded, "Drain deadline %s reached with %d leases not acknowledged by the scheduler", l.deadline.Format(time.RFC3339), unacked)
}

// abort handles the end of Run's context: every action is stopped, and one attempt is made,
// bounded by HandBackGrace, to hand the leases back.
func (l *loop) abort(cause error) error {
	l.phase = draining
	l.stopAll("Worker " + l.cfg.WorkerID + " is stopping; handed back")
	if l.call != nil {
		l.cancelCall()
		<-l.calls
		l.call = nil
	}
	l.waitActions()
	if len(l.leases) > 0 && !l.needCreate {
		ctx, cancel := context.WithTimeout(context.Background(), min(l.cfg.HandBackGrace, l.reportTimeout))
		defer cancel()
		if _, err := l.w.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: l.name, BotSession: l.session()}); err != nil {
			l.log.Warn().Err(err).Int("leases", len(l.leases)).Msg("Could not hand the leases back; the scheduler will requeue them when they expire")
		} else {
			l.log.Info().Int("leases", len(l.leases)).Msg("Leases handed back")
		}
	}
	l.log.Info().Err(cause).Msg("Worker stopped")
	return cause
}

// clockTimer names a timer field and its channel field so both can be reset together.
type clockTimer struct {
	timer *clock.Timer
	c     *<-chan time.Time
}
