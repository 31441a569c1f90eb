package clock

import (
	"sort"
	"sync"
	"time"
)

// Fake is a Clock for tests. Time only moves when Advance or Set is called; timers and
// tickers whose time has come fire during that call.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeWaiter
	// changed is closed and replaced whenever a timer or ticker is created, so tests can
	// wait until the code under test has armed a timer.
	changed chan struct{}
}

type fakeWaiter struct {
	clock   *Fake
	when    time.Time
	period  time.Duration
	ch      chan time.Time
	stopped bool
}

// NewFake returns a fake clock set to now.
func NewFake(now time.Time) *Fake {
	return &Fake{now: now, changed: make(chan struct{})}
}

// Now returns the fake's current time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer creates a timer that fires when the fake clock reaches now+d.
func (f *Fake) NewTimer(d time.Duration) (Timer, <-chan time.Time) {
	w := f.add(d, 0)
	return w, w.ch
}

// NewTicker creates a ticker that fires each time the fake clock passes a multiple of d.
func (f *Fake) NewTicker(d time.Duration) (Ticker, <-chan time.Time) {
	if d <= 0 {
		panic("clock: non-positive ticker period")
	}
	w := f.add(d, d)
	return tickerOf{w}, w.ch
}

func (f *Fake) add(d, period time.Duration) *fakeWaiter {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWaiter{clock: f, when: f.now.Add(d), period: period, ch: make(chan time.Time, 1)}
	if d <= 0 && period == 0 {
		w.ch <- f.now
		w.stopped = true
	} else {
		f.waiters = append(f.waiters, w)
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return w
}

// Stop stops a fake timer.
func (w *fakeWaiter) Stop() bool {
	f := w.clock
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.stopped {
		return false
	}
	w.stopped = true
	for i, o := range f.waiters {
		if o == w {
			f.waiters = append(f.waiters[:i], f.waiters[i+1:]...)
			break
		}
	}
	return true
}

type tickerOf struct{ w *fakeWaiter }

func (t tickerOf) Stop() { t.w.Stop() }

// Advance moves the fake clock forward by d, firing every timer and ticker that comes due.
func (f *Fake) Advance(d time.Duration) {
	f.Set(f.Now().Add(d))
}

// Set moves the fake clock to t (never backwards), firing every timer and ticker that comes due.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.Before(f.now) {
		return
	}
	f.now = t
	sort.Slice(f.waiters, func(i, j int) bool { return f.waiters[i].when.Before(f.waiters[j].when) })
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if w.when.After(t) {
			kept = append(kept, w)
			continue
		}
		select {
		case w.ch <- w.when:
		default: // Like time.Ticker, a slow reader drops ticks.
		}
		if w.period > 0 {
			for !w.when.After(t) {
				w.when = w.when.Add(w.period)
			}
			kept = append(kept, w)
		} else {
			w.stopped = true
		}
	}
	f.waiters = kept
}

// Armed returns a channel that is closed the next time a timer or ticker is created. Tests use
// it to wait until the code under test is blocked on the clock before advancing it.
func (f *Fake) Armed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Pending returns how many timers and tickers are waiting to fire.
func (f *Fake) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}
