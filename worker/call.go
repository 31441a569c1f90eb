package worker

import (
	"context"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// minCallTimeout is the shortest deadline given to a call, however short the session's life.
const minCallTimeout = time.Second

// minPollInterval is the least time between two UpdateBotSession calls that tell the
// scheduler nothing new, for servers that answer at once instead of holding the call (BuildGrid
// does while the bot holds leases).
const minPollInterval = time.Second

// drainReportTimeout is the initial deadline of drain reports (see loop.issue).
const drainReportTimeout = 2500 * time.Millisecond

// drainMaxBackoff caps the delay between attempts to reach the scheduler while draining,
// where every second counts.
const drainMaxBackoff = time.Second

// call is one CreateBotSession or UpdateBotSession in flight, with what it reported.
type call struct {
	create      bool
	version     uint64
	cancel      context.CancelFunc
	cancelled   bool
	terminating bool
	// sent holds the leases reported, by id; completed marks those reported COMPLETED.
	sent      map[string]*lease
	completed map[string]bool
	issued    time.Time
	// report is true for a drain report sent with a short deadline.
	report bool
	// prompt is true for a call the scheduler answers at once instead of holding it: it
	// creates the session, reports a finished lease or announces BOT_TERMINATING. Such a call
	// is never cancelled to send newer news: its reply may already be on its way and carry new
	// leases, which a cancelled call would lose (the scheduler would count them as never
	// acknowledged and requeue them). Newer news goes in the next call.
	prompt bool
}

// callResult is a finished call.
type callResult struct {
	c       *call
	session *rwpb.BotSession
	err     error
}

// session returns the bot session as the worker reports it now.
func (l *loop) session() *rwpb.BotSession {
	s := &rwpb.BotSession{
		Name:    l.name,
		BotId:   l.cfg.WorkerID,
		Version: l.cfg.Version,
		Status:  rwpb.BotStatus_OK,
		Worker:  l.w.worker,
	}
	if l.phase != serving {
		s.Status = rwpb.BotStatus_BOT_TERMINATING
		s.Worker = l.drainingWorker()
	}
	for _, lz := range l.sortedLeases() {
		s.Leases = append(s.Leases, lz.proto())
	}
	return s
}

// Keys of worker.configs that tell the scheduler about the drain while the bot reports
// BOT_TERMINATING (the buildfleet scheduler reads them; others ignore them):
// "drain-deadline" is the deadline as RFC 3339, "drain-kind" the notice's kind (a cloud.Kind,
// e.g. "spot-interruption") and "drain-reason" its detail (e.g. "terminate", "SIGTERM").
const (
	configDrainDeadline = "drain-deadline"
	configDrainKind     = "drain-kind"
	configDrainReason   = "drain-reason"
)

// drainingWorker returns the worker description with the drain keys added.
func (l *loop) drainingWorker() *rwpb.Worker {
	w := &rwpb.Worker{Devices: l.w.worker.Devices}
	w.Configs = append(w.Configs, l.w.worker.Configs...)
	add := func(k, v string) {
		if v != "" {
			w.Configs = append(w.Configs, &rwpb.Worker_Config{Key: k, Value: v})
		}
	}
	if !l.deadline.IsZero() {
		add(configDrainDeadline, l.deadline.UTC().Format(time.RFC3339Nano))
	}
	add(configDrainKind, string(l.drainNotice.Kind))
	add(configDrainReason, l.drainNotice.Reason)
	return w
}

func (l *loop) sortedLeases() []*lease {
	out := make([]*lease, 0, len(l.leases))
	for _, lz := range l.leases {
		out = append(out, lz)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// issue sends the session to the scheduler: CreateBotSession when there is no session yet
// (or the scheduler forgot it), UpdateBotSession otherwise. The call's deadline bounds the
// long-poll and keeps the session renewed well before it expires.
func (l *loop) issue() {
	if l.paceTimer != nil {
		l.paceTimer.Stop()
		l.paceTimer, l.paceC = nil, nil
	}
	bs := l.session()
	c := &call{
		create:      l.needCreate,
		version:     l.version,
		terminating: bs.Status == rwpb.BotStatus_BOT_TERMINATING,
		sent:        map[string]*lease{},
		completed:   map[string]bool{},
		issued:      l.clk.Now(),
	}
	for _, lz := range l.leases {
		c.sent[lz.id] = lz
		if lz.state == rwpb.LeaseState_COMPLETED {
			c.completed[lz.id] = true
		}
	}
	c.prompt = c.create || len(c.completed) > 0 || (c.terminating && !l.terminatingAcked)
	timeout := l.cfg.UpdateTimeout
	if l.ttl > 0 {
		timeout = max(min(timeout, l.ttl*3/4), minCallTimeout)
	}
	if l.phase == draining && (len(c.completed) > 0 || !l.terminatingAcked) {
		// A report the drain waits on is sent with a deadline too short for the scheduler
		// to hold the call (servers hold none below about 3 s), so that the acknowledgement
		// comes at once even from a scheduler that would otherwise wait for news.
		c.report = true
		timeout = min(timeout, l.reportTimeout)
	}
	ctx, cancel := context.WithTimeout(l.callBase, timeout)
	c.cancel = cancel
	l.call = c
	if l.refreshTimer != nil {
		l.refreshTimer.Stop()
	}
	l.refreshTimer, l.refreshC = l.clk.NewTimer(timeout)
	bots, parent, name := l.w.bots, l.cfg.InstanceName, l.name
	go func() {
		defer cancel()
		var (
			r   *rwpb.BotSession
			err error
		)
		if c.create {
			r, err = bots.CreateBotSession(ctx, &rwpb.CreateBotSessionRequest{Parent: parent, BotSession: bs})
		} else {
			r, err = bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: name, BotSession: bs})
		}
		l.calls <- callResult{c: c, session: r, err: err}
	}()
}

// pace delays the next call by d unless the worker has something to report that a call at
// version sent did not carry.
func (l *loop) pace(d time.Duration, sent uint64) {
	if l.paceTimer != nil {
		l.paceTimer.Stop()
	}
	l.paceTimer, l.paceC = l.clk.NewTimer(d)
	l.paceVersion = sent
}

// cancelCall cancels the call in flight; it is sent again, with the current session, once it
// has returned.
func (l *loop) cancelCall() {
	l.call.cancelled = true
	l.call.cancel()
}

// callDone handles a finished call.
func (l *loop) callDone(r callResult) {
	l.call = nil
	if r.err == nil {
		l.lastCallFailed = false
		l.accept(r.c, r.session)
		return
	}
	code := status.Code(r.err)
	switch {
	case r.c.cancelled && code == codes.Canceled:
		return
	case code == codes.DeadlineExceeded && r.c.report:
		// The scheduler took too long to answer a drain report: allow it more time.
		l.reportTimeout = min(2*l.reportTimeout, l.cfg.UpdateTimeout)
		l.log.Warn().Dur("report_timeout", l.reportTimeout).Msg("Drain report timed out; sending it again")
		return
	case code == codes.DeadlineExceeded:
		l.log.Debug().Dur("after", l.clk.Now().Sub(r.c.issued)).Msg("UpdateBotSession reached its deadline; polling again")
		return
	case (code == codes.NotFound || code == codes.FailedPrecondition) && !r.c.create:
		// NOT_FOUND: the scheduler restarted or expired the session (BuildGrid);
		// FAILED_PRECONDITION: it closed or replaced the session (buildfleet).
		l.notFound++
		l.needCreate = true
		l.log.Warn().Err(r.err).Str("session", l.name).Int("leases", len(l.leases)).
			Msg("Scheduler no longer knows the session; creating a new one and reporting the leases again")
		if l.notFound == 1 {
			return
		}
	}
	d := l.backoff.delay()
	if l.phase == draining {
		d = min(d, drainMaxBackoff)
	}
	l.lastCallFailed = true
	switch code {
	case codes.Unauthenticated, codes.PermissionDenied:
		// Retrying is right (the scheduler reloads its token files on SIGHUP), but the operator
		// must see that this is a credentials problem, not a network one.
		l.log.Error().Err(r.err).Dur("retry_in", d).
			Msg("Scheduler refused this worker's credentials: check --auth-token-file / --auth-token-env-var-name (a worker token, not a client token)")
	default:
		l.log.Warn().Err(r.err).Dur("retry_in", d).Int("leases", len(l.leases)).Msg("Cannot reach the scheduler; results are held until it answers")
	}
	l.retryTimer, l.retryC = l.clk.NewTimer(d)
}

// accept applies a successful reply: completed leases it carried are acknowledged, leases the
// scheduler no longer lists are withdrawn (their actions stopped), and new leases are started.
// A CreateBotSession reply acknowledges nothing: the UpdateBotSession that follows reports
// every lease again and its reply is authoritative.
func (l *loop) accept(c *call, s *rwpb.BotSession) {
	now := l.clk.Now()
	l.backoff.reset()
	before := l.version
	changed := c.create || (c.terminating && !l.terminatingAcked)
	defer func() {
		if elapsed := now.Sub(c.issued); !changed && l.version == before && elapsed < minPollInterval {
			l.pace(minPollInterval-elapsed, c.version)
		}
	}()
	if c.create {
		l.needCreate = false
		l.name = s.GetName()
		l.log.Info().Str("session", l.name).Str("status", s.GetStatus().String()).Msg("Bot session created")
	} else {
		l.notFound = 0
		if s.GetName() != "" {
			l.name = s.GetName()
		}
	}
	if s.GetExpireTime().IsValid() {
		if ttl := s.GetExpireTime().AsTime().Sub(now); ttl > 0 {
			l.ttl = ttl
		}
	}
	if c.terminating {
		if !l.terminatingAcked {
			l.log.Info().Msg("Scheduler acknowledged BOT_TERMINATING")
		}
		l.terminatingAcked = true
	}
	listed := map[string]bool{}
	for _, rl := range s.GetLeases() {
		listed[rl.GetId()] = true
	}
	if !c.create {
		for id, sent := range c.sent {
			lz := l.leases[id]
			if lz != sent {
				continue
			}
			if c.completed[id] {
				changed = true
				delete(l.leases, id)
				lz.log.Info().Bool("handed_back", lz.handedBack).Str("code", codes.Code(lz.status.GetCode()).String()).
					Msg("Scheduler acknowledged the lease's completion")
				continue
			}
			if !listed[id] {
				changed = true
				delete(l.leases, id)
				if lz.cancel != nil {
					lz.cancel()
				}
				lz.log.Info().Msg("Scheduler withdrew the lease; action stopped")
			}
		}
	}
	for _, rl := range s.GetLeases() {
		if _, known := l.leases[rl.GetId()]; known {
			continue
		}
		if st := rl.GetState(); st == rwpb.LeaseState_PENDING || st == rwpb.LeaseState_ACTIVE {
			l.start(rl)
		}
	}
}
