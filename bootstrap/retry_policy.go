package bootstrap

import (
	"context"
	"fmt"
	"time"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// RetryPolicy is an exponential backoff: attempt n (from 1) that fails waits
// min(Initial*2^(n-1), Max) before attempt n+1, for at most Attempts attempts.
type RetryPolicy struct {
	// Attempts is the total number of tries, at least 1.
	Attempts int
	// Initial is the wait after the first failure.
	Initial time.Duration
	// Max caps every wait.
	Max time.Duration
}

// DefaultRetryPolicy tries 8 times over about two minutes: enough to ride out a network that is
// still coming up at boot or a mirror that restarts.
var DefaultRetryPolicy = RetryPolicy{Attempts: 8, Initial: time.Second, Max: 30 * time.Second}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultRetryPolicy.Attempts
	}
	if p.Initial <= 0 {
		p.Initial = DefaultRetryPolicy.Initial
	}
	if p.Max <= 0 {
		p.Max = DefaultRetryPolicy.Max
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	return p
}

// Backoff returns the wait after failed attempt n (counting from 1).
func (p RetryPolicy) Backoff(n int) time.Duration {
	p = p.withDefaults()
	d := p.Initial
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	if d > p.Max {
		d = p.Max
	}
	return d
}

// Do calls fn until it succeeds, returns a Permanent error, the context ends, or the attempts
// run out, waiting on clk between attempts. onRetry, when set, hears of each failure that will
// be retried and the wait before the next attempt.
func (p RetryPolicy) Do(ctx context.Context, clk clock.Clock, fn func(attempt int) error,
	onRetry func(attempt int, err error, wait time.Duration)) error {
	p = p.withDefaults()
	for attempt := 1; ; attempt++ {
		err := fn(attempt)
		if err == nil {
			return nil
		}
		if IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		if attempt >= p.Attempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		wait := p.Backoff(attempt)
		if onRetry != nil {
			onRetry(attempt, err, wait)
		}
		timer, ch := clk.NewTimer(wait)
		select {
		case <-ch:
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
	}
}
