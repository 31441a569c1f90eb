// Package scheduler is buildfleet's scheduler: it queues the actions clients send through the
// REAPI Execution service, hands them as leases to bots long-polling the Remote Workers API
// (Bots), matches them by platform, requeues the work of bots that vanish, merges identical
// in-flight actions and serves the longrunning Operations of every execution.
//
// All state lives behind one mutex. Whenever the state is entered, deadlines that are due
// (session expiry, unmatched-platform waits, retention) run first, from a min-heap; a single
// timer of the injected clock, armed for the earliest deadline, enters the state when nobody
// calls in.
package scheduler

import (
	"sync"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/storage"
)

// Scheduler is the queue, the leases and the operations of one buildfleet scheduler process.
// Create it with New, serve it with Register, stop it with Close.
type Scheduler struct {
	cfg Config
	cas storage.BlobStore
	ac  storage.ActionCache
	clk clock.Clock
	log zerolog.Logger
	m   *metrics
	// act is what the status pages show of past executions, builds and interruptions.
	act *activity

	mu sync.Mutex
	// ops maps every operation name handed out (and rebuilt) to its operation.
	ops map[string]*operation
	// inFlight maps (instance, action) to the unfinished operation new Executes join.
	inFlight map[actionKey]*operation
	queue    *fairQueue
	seq      uint64
	// sessions are the live bot sessions by name; byBot the live session of each bot id;
	// gone the recently closed sessions.
	sessions map[string]*botSession
	byBot    map[string]*botSession
	gone     map[string]*botSession
	// leases maps the id of every lease of a remembered operation to the lease, current or not,
	// so that a late result can still be matched.
	leases map[string]*lease
	adopt  adoptionState
	// retained are the finished operations still answerable from memory, oldest first.
	retained  []*operation
	deadlines deadlineHeap
	// workersDirty is set when a bot's state, capacity or leases changed: leave then
	// recomputes the worker gauges.
	workersDirty bool

	timer     clock.Timer
	timerAt   time.Time
	timerStop chan struct{}
	closed    bool
	// fenced is set when Config.Fence closed the scheduler: bots' reports are refused too.
	fenced bool
	done   chan struct{}
}

// actionKey identifies an action within an instance name.
type actionKey struct {
	instance string
	action   digest.Digest
}

// New returns a scheduler reading actions and inputs from cas, writing results to ac, taking
// time from clk, logging to logger and registering its metrics with reg (nil: not registered).
func New(cfg Config, cas storage.BlobStore, ac storage.ActionCache, clk clock.Clock, logger zerolog.Logger, reg prometheus.Registerer) *Scheduler {
	return &Scheduler{
		cfg:      cfg.withDefaults(),
		cas:      cas,
		ac:       ac,
		clk:      clk,
		log:      logger.With().Str("component", "scheduler").Logger(),
		m:        newMetrics(reg),
		act:      newActivity(),
		ops:      map[string]*operation{},
		inFlight: map[actionKey]*operation{},
		queue:    newFairQueue(),
		sessions: map[string]*botSession{},
		byBot:    map[string]*botSession{},
		gone:     map[string]*botSession{},
		leases:   map[string]*lease{},
		adopt:    adoptionState{windowEnd: clk.Now().Add(cfg.AdoptionWindow), epoch: newEpoch()},
		done:     make(chan struct{}),
	}
}

// Register registers the Execution, longrunning Operations and Bots services on srv.
func (s *Scheduler) Register(srv *grpc.Server) {
	repb.RegisterExecutionServer(srv, &executionService{s: s})
	longrunningpb.RegisterOperationsServer(srv, &operationsService{s: s})
	rwpb.RegisterBotsServer(srv, &botsService{s: s})
}

// Close stops the scheduler's timer and ends held long-polls and operation streams. It does not
// stop a grpc.Server the scheduler is registered on.
func (s *Scheduler) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

func (s *Scheduler) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	close(s.done)
	s.stopTimerLocked()
	s.m.clearGauges()
}

// enter locks the state and runs due deadlines. Pair it with leave.
func (s *Scheduler) enter() {
	s.mu.Lock()
	s.enterLocked()
}

// leave updates the worker gauges if needed, arms the timer for the earliest deadline and
// unlocks the state.
func (s *Scheduler) leave() {
	if s.workersDirty {
		s.updateWorkerGaugesLocked()
	}
	s.armTimerLocked()
	s.mu.Unlock()
}

// enterLocked runs every deadline that is due.
func (s *Scheduler) enterLocked() {
	if !s.closed && s.cfg.Fence != nil {
		if err := s.cfg.Fence(); err != nil {
			s.log.Warn().Err(err).Msg("Fenced: this scheduler may no longer lead; it hands out no more leases")
			s.fenced = true
			s.closeLocked()
		}
	}
	now := s.clk.Now()
	for {
		d, ok := s.deadlines.popDue(now)
		if !ok {
			return
		}
		switch d.kind {
		case sessionExpiry:
			b := d.session
			if b.gone || b.expireGen != d.gen || b.calls > 0 {
				continue
			}
			s.log.Warn().Str("bot_id", b.botID).Str("session", b.name).Int("leases", len(b.leases)).
				Msg("Bot session expired; requeueing its leases")
			s.closeSessionLocked(b, requeueExpired)
		case unmatchedPlatform:
			s.unmatchedDueLocked(d.op, d.gen)
		case operationRetention:
			s.expireRetainedLocked()
		case sessionDisconnect:
			b := d.session
			if b.gone || b.calls > 0 || b.callGen != d.gen {
				continue
			}
			if b.status == rwpb.BotStatus_BOT_TERMINATING && len(b.leases) == 0 {
				s.log.Info().Str("bot_id", b.botID).Str("session", b.name).
					Msg("Drained bot did not call again; its session is closed")
			} else {
				s.log.Warn().Str("bot_id", b.botID).Str("session", b.name).Int("leases", len(b.leases)).
					Dur("grace", s.cfg.DisconnectGrace).Msg("Bot disconnected and did not call again; requeueing its leases")
			}
			s.closeSessionLocked(b, requeueGone)
		case goneRetention:
			if b := d.session; s.gone[b.name] == b {
				delete(s.gone, b.name)
				s.workersDirty = true
			}
		}
	}
}

// armTimerLocked makes sure one clock timer fires at the earliest deadline.
func (s *Scheduler) armTimerLocked() {
	at, ok := s.deadlines.earliest()
	if s.closed || !ok {
		s.stopTimerLocked()
		return
	}
	if s.timer != nil && s.timerAt.Equal(at) {
		return
	}
	s.stopTimerLocked()
	t, ch := s.clk.NewTimer(at.Sub(s.clk.Now()))
	stop := make(chan struct{})
	s.timer, s.timerAt, s.timerStop = t, at, stop
	go func() {
		select {
		case <-ch:
		case <-stop:
			return
		}
		s.mu.Lock()
		if s.timerStop == stop {
			s.timer, s.timerStop = nil, nil
		}
		s.enterLocked()
		s.leave()
	}()
}

// stopTimerLocked stops the armed timer, if any.
func (s *Scheduler) stopTimerLocked() {
	if s.timer == nil {
		return
	}
	s.timer.Stop()
	close(s.timerStop)
	s.timer, s.timerStop = nil, nil
}

// forgetOperationLocked drops a finished operation and its names and leases from memory.
func (s *Scheduler) forgetOperationLocked(op *operation) {
	s.forgetAdoptionLocked(op)
	for _, n := range op.names {
		if s.ops[n] == op {
			delete(s.ops, n)
		}
	}
	for _, id := range op.leaseIDs {
		if l := s.leases[id]; l != nil && l.op == op {
			delete(s.leases, id)
		}
	}
}

// updateWorkerGaugesLocked recomputes the workers-by-state and slots-by-state gauges.
func (s *Scheduler) updateWorkerGaugesLocked() {
	s.workersDirty = false
	if s.closed {
		return // Close cleared them: the bots are the next leader's.
	}
	var serving, draining, unavailable, busy, idle, drainingSlots int
	for _, b := range s.sessions {
		switch b.workerState() {
		case WorkerServing:
			serving++
			busy += len(b.leases)
			idle += max(b.capacity-len(b.leases), 0)
		case WorkerDraining:
			draining++
			drainingSlots += len(b.leases)
		case WorkerUnavailable:
			unavailable++
			busy += len(b.leases) // Unhealthy or initializing bots keep their leases but take no new ones.
		default: // A closed session (counted below from s.gone) with leases still attached.
			busy += len(b.leases)
		}
	}
	s.m.workersServing.Set(float64(serving))
	s.m.workersDraining.Set(float64(draining))
	s.m.workersUnavailable.Set(float64(unavailable))
	s.m.workersGone.Set(float64(len(s.gone)))
	s.m.slotsBusy.Set(float64(busy))
	s.m.slotsIdle.Set(float64(idle))
	s.m.slotsDraining.Set(float64(drainingSlots))
}
