package scheduler

import (
	"sort"
	"time"
)

// Worker states reported in WorkerInfo.State and the workers metric.
const (
	// WorkerServing is a bot with status OK: it takes leases.
	WorkerServing = "serving"
	// WorkerDraining is a bot that is terminating or rebooting: no new leases, its leases go on.
	WorkerDraining = "draining"
	// WorkerUnavailable is a bot that is unhealthy or initializing: no new leases.
	WorkerUnavailable = "unavailable"
	// WorkerGone is a bot whose session was closed (expired or replaced), kept in the view for
	// Config.GoneWorkerRetention.
	WorkerGone = "gone"
)

// WorkerInfo describes one bot session for logs, metrics and status pages.
type WorkerInfo struct {
	// BotID is the bot's own stable id.
	BotID string
	// Version is the bot software's version as the bot reported it in BotSession.version.
	Version string
	// Session is the bot session name.
	Session string
	// State is WorkerServing, WorkerDraining, WorkerUnavailable or WorkerGone.
	State string
	// Status is the BotStatus the bot last reported, e.g. "OK" or "BOT_TERMINATING".
	Status string
	// Capacity is the number of leases the bot runs at once.
	Capacity int
	// LeasesHeld is the number of leases the bot currently holds.
	LeasesHeld int
	// LeaseIDs are the ids of those leases.
	LeaseIDs []string
	// Properties are the bot's platform properties as sorted "key=value" strings.
	Properties []string
	// LastSeen is when the bot last called in (or, while a call is held, now).
	LastSeen time.Time
	// ExpireTime is when the session expires unless the bot calls again; zero while a call is
	// in progress.
	ExpireTime time.Time
	// DrainingSince is when the bot first reported BOT_TERMINATING, zero if it has not.
	DrainingSince time.Time
	// DrainDeadline is when a draining bot's machine goes away, as the bot reported it in
	// worker.configs["drain-deadline"]; zero when not draining or not reported.
	DrainDeadline time.Time
	// DrainKind and DrainReason are what announced the drain (worker.configs["drain-kind"] and
	// ["drain-reason"]), e.g. "spot-interruption" and "terminate".
	DrainKind   string
	DrainReason string
	// GoneSince is when the session was closed, zero if it is live.
	GoneSince time.Time
	// LongPolling reports whether an UpdateBotSession call of the bot is being held waiting
	// for work.
	LongPolling bool
}

// Workers returns a view of every live bot session and of recently closed ones, sorted by
// bot id then session name.
func (s *Scheduler) Workers() []WorkerInfo {
	s.mu.Lock()
	defer s.leave()
	s.enterLocked()
	now := s.clk.Now()
	var out []WorkerInfo
	add := func(b *botSession) {
		wi := WorkerInfo{
			BotID:         b.botID,
			Version:       b.version,
			Session:       b.name,
			State:         b.workerState(),
			Status:        b.status.String(),
			Capacity:      b.capacity,
			LeasesHeld:    len(b.leases),
			LastSeen:      b.lastSeen,
			DrainingSince: b.drainingSince,
			DrainDeadline: b.drain.deadline,
			DrainKind:     b.drain.kind,
			DrainReason:   b.drain.reason,
			GoneSince:     b.goneAt,
			LongPolling:   !b.waitingSince.IsZero(),
		}
		if b.calls > 0 {
			wi.LastSeen = now
		} else if !b.gone {
			wi.ExpireTime = b.expireAt
		}
		for _, l := range b.leases {
			wi.LeaseIDs = append(wi.LeaseIDs, l.id)
		}
		for k, vs := range b.props {
			for v := range vs {
				wi.Properties = append(wi.Properties, k+"="+v)
			}
		}
		sort.Strings(wi.Properties)
		out = append(out, wi)
	}
	for _, b := range s.sessions {
		add(b)
	}
	for _, b := range s.gone {
		add(b)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].BotID != out[j].BotID {
			return out[i].BotID < out[j].BotID
		}
		return out[i].Session < out[j].Session
	})
	return out
}
