package cloud

import (
	"context"
	"sync"
	"time"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// sender delivers notices to a Source's output channel and guarantees that nothing is sent
// once the Source's Watch has returned, even from helper goroutines that outlive it (the GCE
// metadata library sleeps without watching its context while it retries).
type sender struct {
	mu     sync.Mutex
	out    chan<- Notice
	closed bool
}

func newSender(out chan<- Notice) *sender {
	return &sender{out: out}
}

// send delivers n unless ctx is done or the sender is closed. It reports whether n was sent.
func (s *sender) send(ctx context.Context, n Notice) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	select {
	case s.out <- n:
		return true
	case <-ctx.Done():
		return false
	}
}

// close stops all further sends. It must be called after ctx is done (or from the goroutine
// that sends), since it waits for a send in progress.
func (s *sender) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// sleep waits d on clk. It returns false when ctx ends first.
func sleep(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	t, ch := clk.NewTimer(d)
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		t.Stop()
		return false
	}
}

// backoff returns how long to wait after failures consecutive failed attempts: base after the
// first, doubling after each further one, never more than max.
func backoff(base, max time.Duration, failures int) time.Duration {
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

// orDefault returns d, or def when d is not positive.
func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
