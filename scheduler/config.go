package scheduler

import "time"

// Config holds the scheduler's tunables. The zero value of each field selects its default.
type Config struct {
	// SessionExpiry is how long a bot session lives after each reply unless the bot calls
	// UpdateBotSession again; an expired session's leases are requeued. Default 20 s.
	SessionExpiry time.Duration
	// RetryLimit is how many times an action is requeued after its lease is lost (session
	// expiry, a bot that stops reporting it) or fails with INTERNAL or UNAVAILABLE, before the
	// action fails with UNAVAILABLE. Hand-backs of a draining bot do not count. Default 3; set
	// NoRetries for none.
	RetryLimit int
	// NoRetries makes the first lost or failed lease fail the action.
	NoRetries bool
	// UnmatchedPlatformWait bounds how long an action whose platform no connected bot satisfies
	// stays queued before it fails with FAILED_PRECONDITION. Default 5 min.
	UnmatchedPlatformWait time.Duration
	// LongPollFraction is the share of an UpdateBotSession call's remaining deadline the
	// scheduler may hold the call for. Default 0.8.
	LongPollFraction float64
	// LongPollMinRemaining is the remaining deadline below which a call is never held.
	// Default 3 s.
	LongPollMinRemaining time.Duration
	// LongPollMax caps how long a call is held, and is the hold of a call without deadline.
	// Default 60 s.
	LongPollMax time.Duration
	// MaxQueuePerInstance bounds the number of queued actions per instance name; Execute
	// beyond it fails with RESOURCE_EXHAUSTED. Default 100,000.
	MaxQueuePerInstance int
	// CompletedRetention is how long a finished operation stays answerable from memory. After
	// that a WaitExecution on its name is answered from the action cache (cached_result set)
	// when the result is there, and runs the action again otherwise. Default 15 min.
	CompletedRetention time.Duration
	// MaxCompletedOperations bounds how many finished operations stay answerable from memory;
	// beyond it the oldest are forgotten first (answered as after CompletedRetention).
	// Default 10,000.
	MaxCompletedOperations int
	// DisconnectGrace is how long the scheduler waits for a bot to call again after one of its
	// calls ended because the bot cancelled it or its connection closed (a process that died
	// ends its held long-poll at once) before the session is closed and its leases requeued,
	// instead of waiting the whole SessionExpiry. Default 2 s: a live bot calls again within
	// milliseconds, and one that lost its connection reconnects within about a second (its backoff
	// starts at 0.25 s).
	DisconnectGrace time.Duration
	// GoneWorkerRetention is how long a closed bot session stays in the worker view.
	// Default 10 min.
	GoneWorkerRetention time.Duration
	// AdoptionWindow is how long after New no new operation is queued (Execute and rebuilt
	// WaitExecution names wait), so that bots can report the leases they hold to a scheduler that
	// just took over (a new leader) before a client's request makes an action run twice.
	// Default 0 (none): a single process has nobody to take over from.
	AdoptionWindow time.Duration
	// Fence, when set, is asked whether this scheduler may still act as the leader each time it
	// is entered (before it hands out a lease, accepts a bot's report or queues an operation). A
	// non-nil answer closes the scheduler at once, as Close does, and the call fails with
	// UNAVAILABLE ("Scheduler is shutting down"), so a replica whose etcd session may have
	// expired never acts on calls it received while it was stopped, whatever its timers say.
	// Nil: never fenced (one process).
	Fence func() error
}

// Defaults of Config.
const (
	DefaultSessionExpiry          = 20 * time.Second
	DefaultRetryLimit             = 3
	DefaultUnmatchedPlatformWait  = 5 * time.Minute
	DefaultLongPollFraction       = 0.8
	DefaultLongPollMinRemaining   = 3 * time.Second
	DefaultLongPollMax            = 60 * time.Second
	DefaultMaxQueuePerInstance    = 100000
	DefaultCompletedRetention     = 15 * time.Minute
	DefaultMaxCompletedOperations = 10000
	DefaultGoneWorkerRetention    = 10 * time.Minute
	DefaultDisconnectGrace        = 2 * time.Second
)

// withDefaults returns c with every unset field set to its default.
func (c Config) withDefaults() Config {
	if c.SessionExpiry <= 0 {
		c.SessionExpiry = DefaultSessionExpiry
	}
	if c.NoRetries {
		c.RetryLimit = 0
	} else if c.RetryLimit <= 0 {
		c.RetryLimit = DefaultRetryLimit
	}
	if c.UnmatchedPlatformWait <= 0 {
		c.UnmatchedPlatformWait = DefaultUnmatchedPlatformWait
	}
	if c.LongPollFraction <= 0 || c.LongPollFraction > 1 {
		c.LongPollFraction = DefaultLongPollFraction
	}
	if c.LongPollMinRemaining <= 0 {
		c.LongPollMinRemaining = DefaultLongPollMinRemaining
	}
	if c.LongPollMax <= 0 {
		c.LongPollMax = DefaultLongPollMax
	}
	if c.MaxQueuePerInstance <= 0 {
		c.MaxQueuePerInstance = DefaultMaxQueuePerInstance
	}
	if c.CompletedRetention <= 0 {
		c.CompletedRetention = DefaultCompletedRetention
	}
	if c.MaxCompletedOperations <= 0 {
		c.MaxCompletedOperations = DefaultMaxCompletedOperations
	}
	if c.DisconnectGrace <= 0 {
		c.DisconnectGrace = DefaultDisconnectGrace
	}
	if c.GoneWorkerRetention <= 0 {
		c.GoneWorkerRetention = DefaultGoneWorkerRetention
	}
	return c
}
