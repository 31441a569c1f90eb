package storage

import (
	"sync"
	"time"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// unavailableLogInterval is how often a call failing with UNAVAILABLE (the object store down)
// is logged, per kind of call: the first failure at once, then one line an interval.
const unavailableLogInterval = 10 * time.Second

// warnLimiter lets one warning per message through every interval and counts the ones it holds
// back, so that an outage failing every call logs a line an interval per kind of call rather
// than one per call. The nil *warnLimiter lets every warning through. Safe for concurrent use.
type warnLimiter struct {
	clock    clock.Clock
	interval time.Duration

	mu         sync.Mutex
	last       map[string]time.Time
	suppressed map[string]int
}

func newWarnLimiter(clk clock.Clock, interval time.Duration) *warnLimiter {
	return &warnLimiter{clock: clk, interval: interval, last: map[string]time.Time{}, suppressed: map[string]int{}}
}

// allow reports whether the warning msg may be logged now and, if so, how many were held back
// since the last one.
func (l *warnLimiter) allow(msg string) (ok bool, suppressed int) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if last, seen := l.last[msg]; seen && now.Sub(last) < l.interval {
		l.suppressed[msg]++
		return false, 0
	}
	l.last[msg] = now
	suppressed = l.suppressed[msg]
	delete(l.suppressed, msg)
	return true, suppressed
}
