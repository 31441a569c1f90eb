package worker

import (
	"fmt"
	"time"

	"github.com/buildfleet/buildfleet/cloud"
)

// Defaults used for the zero values of Config fields.
const (
	DefaultUpdateTimeout              = 60 * time.Second
	DefaultMinBackoff                 = 250 * time.Millisecond
	DefaultMaxBackoff                 = 5 * time.Second
	DefaultDrainTimeout               = 60 * time.Second
	DefaultDrainSafetyMargin          = 10 * time.Second
	DefaultHandBackGrace              = 5 * time.Second
	DefaultCompleterHeartbeatInterval = 20 * time.Second
)

// Config configures a Worker. Zero durations take the defaults above.
type Config struct {
	// WorkerID is the bot id of the session and the handle of its device. Required.
	WorkerID string
	// Version is the worker software's version, reported in BotSession.version (the scheduler
	// shows it on /workers); empty sends none.
	Version string
	// InstanceName is the parent of the bot session and the instance Actions are read from
	// when a lease carries only an Action digest.
	InstanceName string
	// Concurrency is the number of actions run at once, advertised as
	// worker.configs["capacity"]. Zero means 1.
	Concurrency int
	// Platform is advertised in worker.devices[0].properties; OSFamily and ISA are added when
	// absent (see CompletePlatform).
	Platform []Property

	// UpdateTimeout is the gRPC deadline of each UpdateBotSession call, which bounds how long
	// the scheduler holds the long-poll. It is shortened so that the session is renewed well
	// before the expire_time the scheduler last gave.
	UpdateTimeout time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff between attempts to reach an
	// unreachable scheduler (each delay jittered by up to a fifth either way). The default
	// ceiling is low (5 s): a worker that reconnects late after a scheduler restart idles
	// while builds wait in the queue, and a fleet's reconnections are cheap for the scheduler.
	MinBackoff, MaxBackoff time.Duration

	// DrainTimeout is the drain deadline for a notice that carries none.
	DrainTimeout time.Duration
	// DrainSafetyMargin is kept free before a notice's deadline for uploads and the hand-back:
	// actions still running at deadline minus this margin are stopped and handed back.
	DrainSafetyMargin time.Duration
	// DrainOnSoftNotice makes advisory notices (AWS rebalance recommendations) drain too.
	DrainOnSoftNotice bool
	// HandBackGrace bounds how long a hard stop (a notice whose deadline has passed, or the
	// Run context ending) keeps trying to hand leases back.
	HandBackGrace time.Duration
	// Completer, when set, is sent Heartbeat every CompleterHeartbeatInterval while draining
	// and Complete once the worker has drained.
	Completer cloud.Completer
	// CompleterHeartbeatInterval is the period of Completer heartbeats.
	CompleterHeartbeatInterval time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.WorkerID == "" {
		return c, fmt.Errorf("worker: WorkerID is required")
	}
	if c.Concurrency < 0 {
		return c, fmt.Errorf("worker: Concurrency %d is negative", c.Concurrency)
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.UpdateTimeout, DefaultUpdateTimeout)
	def(&c.MinBackoff, DefaultMinBackoff)
	def(&c.MaxBackoff, DefaultMaxBackoff)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.HandBackGrace, DefaultHandBackGrace)
	def(&c.CompleterHeartbeatInterval, DefaultCompleterHeartbeatInterval)
	if c.DrainSafetyMargin < 0 {
		return c, fmt.Errorf("worker: DrainSafetyMargin %s is negative", c.DrainSafetyMargin)
	}
	if c.DrainSafetyMargin == 0 {
		c.DrainSafetyMargin = DefaultDrainSafetyMargin
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	c.Platform = CompletePlatform(c.Platform)
	return c, nil
}
