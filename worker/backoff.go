package worker

import (
	"math/rand/v2"
	"time"
)

// backoff computes exponentially growing, jittered delays between attempts to reach the
// scheduler.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(min, max time.Duration) backoff {
	return backoff{min: min, max: max, next: min}
}

// delay returns the delay before the next attempt and doubles the one after it, up to max.
// The delay is jittered by up to a fifth either way so that a fleet of workers does not
// reconnect in step.
func (b *backoff) delay() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	if j := int64(d / 5); j > 0 {
		d += time.Duration(rand.Int64N(2*j+1) - j)
	}
	return d
}

// reset returns to the shortest delay after a successful call.
func (b *backoff) reset() { b.next = b.min }
