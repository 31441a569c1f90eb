// Package clock provides an injectable source of time so that expiry, long-polls and
// deadlines can be tested without sleeping.
package clock

import "time"

// Clock is the source of time used by the scheduler, the worker and the cloud watchers.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once after d, and its channel.
	NewTimer(d time.Duration) (Timer, <-chan time.Time)
	// NewTicker returns a ticker that fires every d, and its channel.
	NewTicker(d time.Duration) (Ticker, <-chan time.Time)
}

// Timer is a one-shot timer created by a Clock.
type Timer interface {
	// Stop prevents the timer from firing. It reports whether the call stopped it.
	Stop() bool
}

// Ticker is a periodic ticker created by a Clock.
type Ticker interface {
	// Stop turns the ticker off.
	Stop()
}

// System is the Clock backed by the operating system's clock.
var System Clock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) (Timer, <-chan time.Time) {
	t := time.NewTimer(d)
	return t, t.C
}

func (systemClock) NewTicker(d time.Duration) (Ticker, <-chan time.Time) {
	t := time.NewTicker(d)
	return t, t.C
}
