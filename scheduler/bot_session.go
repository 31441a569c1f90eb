package scheduler

import (
	"time"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// botSession is the scheduler's view of one bot session. Guarded by Scheduler.mu.
type botSession struct {
	name     string
	botID    string
	version  string
	status   rwpb.BotStatus
	props    botProperties
	capacity int
	// matches caches props.satisfies per platform key.
	matches map[string]bool
	// leases are the session's current leases, in the order they were handed out.
	leases []*lease

	createdAt     time.Time
	lastSeen      time.Time
	expireAt      time.Time
	expireGen     uint64
	drainingSince time.Time
	// drain is what the bot last told of its drain (deadline, kind, reason) in its worker
	// configs; zero when it is not draining or did not say.
	drain  drainInfo
	goneAt time.Time
	gone   bool
	// calls counts UpdateBotSession calls in progress; a session in a call never expires.
	calls int
	// callGen numbers the session's UpdateBotSession calls in the order they arrived.
	callGen uint64
	// latestMayHangUp is set when the latest call (callGen) ended in a way after which the bot
	// may not call again (see endCallLocked).
	latestMayHangUp bool
	// waitingSince is set while a call is held waiting for work (zero otherwise).
	waitingSince time.Time
	// wake is closed and replaced when a held call should look again.
	wake chan struct{}
}

// lease is one assignment of an operation to a bot session.
type lease struct {
	id      string
	op      *operation
	session *botSession
	// acked is set once the bot has reported the lease; active once it reported it ACTIVE.
	acked  bool
	active bool
	// missed counts reports from the bot that lacked this not yet acknowledged lease.
	missed     int
	assignedAt time.Time
	startedAt  time.Time
	// revoked is set once the lease is no longer its operation's current lease.
	revoked bool
}

// canRun reports whether the session's bot has every property of p.
func (b *botSession) canRun(p platform) bool {
	m, ok := b.matches[p.key]
	if !ok {
		m = b.props.satisfies(p)
		b.matches[p.key] = m
	}
	return m
}

// acceptsWork reports whether the bot may be given a new lease now.
func (b *botSession) acceptsWork() bool {
	return !b.gone && b.status == rwpb.BotStatus_OK && len(b.leases) < b.capacity
}

// wakeUp makes a held call look again.
func (b *botSession) wakeUp() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// leaseByID returns the session's current lease with id, or nil.
func (b *botSession) leaseByID(id string) *lease {
	for _, l := range b.leases {
		if l.id == id {
			return l
		}
	}
	return nil
}

// dropLeaseLocked removes l from its session's current leases.
func (s *Scheduler) dropLeaseLocked(b *botSession, l *lease) {
	for i, o := range b.leases {
		if o == l {
			b.leases = append(b.leases[:i], b.leases[i+1:]...)
			s.workersDirty = true
			return
		}
	}
}

// addLeaseLocked adds l to the session's current leases.
func (s *Scheduler) addLeaseLocked(b *botSession, l *lease) {
	b.leases = append(b.leases, l)
	s.workersDirty = true
}

// workerState is the coarse state used in the worker view and metrics.
func (b *botSession) workerState() string {
	switch {
	case b.gone:
		return WorkerGone
	case b.status == rwpb.BotStatus_BOT_TERMINATING || b.status == rwpb.BotStatus_HOST_REBOOTING:
		return WorkerDraining
	case b.status == rwpb.BotStatus_OK:
		return WorkerServing
	default:
		return WorkerUnavailable
	}
}

// stopWaitingIfIdle marks the bot as no longer waiting for work once none of its calls is held.
// A cancelled call can return after the bot's next call has started waiting; that one still
// waits, so the mark stays.
func (b *botSession) stopWaitingIfIdle() {
	if b.calls == 0 {
		b.waitingSince = time.Time{}
	}
}
