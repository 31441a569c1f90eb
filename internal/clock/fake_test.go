package clock_test

import (
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/internal/clock"
)

func TestFakeTimerFiresOnlyWhenDue(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := clock.NewFake(start)
	_, ch := c.NewTimer(10 * time.Second)
	c.Advance(9 * time.Second)
	select {
	case <-ch:
		t.Fatal("timer fired early")
	default:
	}
	c.Advance(time.Second)
	select {
	case got := <-ch:
		if !got.Equal(start.Add(10 * time.Second)) {
			t.Fatalf("fired with %v", got)
		}
	default:
		t.Fatal("timer did not fire when due")
	}
	if c.Pending() != 0 {
		t.Fatalf("fired timer still pending: %d", c.Pending())
	}
}

func TestFakeStoppedTimerNeverFires(t *testing.T) {
	c := clock.NewFake(time.Unix(0, 0))
	tm, ch := c.NewTimer(time.Second)
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer returned false")
	}
	c.Advance(time.Hour)
	select {
	case <-ch:
		t.Fatal("stopped timer fired")
	default:
	}
	if tm.Stop() {
		t.Fatal("second Stop returned true")
	}
}

func TestFakeTickerRepeats(t *testing.T) {
	c := clock.NewFake(time.Unix(0, 0))
	tk, ch := c.NewTicker(2 * time.Second)
	defer tk.Stop()
	for i := 1; i <= 3; i++ {
		c.Advance(2 * time.Second)
		select {
		case got := <-ch:
			if want := time.Unix(int64(2*i), 0); !got.Equal(want) {
				t.Fatalf("tick %d at %v, want %v", i, got, want)
			}
		default:
			t.Fatalf("tick %d missing", i)
		}
	}
}

func TestFakeArmedSignalsNewTimer(t *testing.T) {
	c := clock.NewFake(time.Unix(0, 0))
	armed := c.Armed()
	go c.NewTimer(time.Minute)
	select {
	case <-armed:
	case <-time.After(5 * time.Second):
		t.Fatal("Armed channel not closed after NewTimer")
	}
}
