package worker

import (
	"testing"
	"time"
)

// The default reconnection backoff grows from DefaultMinBackoff and never waits more than
// DefaultMaxBackoff (5 s) plus a fifth of jitter, however many attempts failed in a row.
func TestDefaultBackoffIsCappedAtFiveSeconds(t *testing.T) {
	b := newBackoff(DefaultMinBackoff, DefaultMaxBackoff)
	var longest time.Duration
	for i := 0; i < 100; i++ {
		d := b.delay()
		if d <= 0 {
			t.Fatalf("attempt %d: delay %v", i, d)
		}
		longest = max(longest, d)
	}
	if limit := 6 * time.Second; longest > limit || longest < 4*time.Second {
		t.Fatalf("longest of 100 delays %v, want between 4 s and %v", longest, limit)
	}
	b.reset()
	if d := b.delay(); d > DefaultMinBackoff*6/5 {
		t.Fatalf("delay after reset %v, want about %v", d, DefaultMinBackoff)
	}
}
