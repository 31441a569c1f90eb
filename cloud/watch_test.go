package cloud_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// brokenSource cannot work at all.
type brokenSource struct{}

func (brokenSource) Name() string { return "broken" }
func (brokenSource) Watch(context.Context, chan<- cloud.Notice) error {
	return errors.New("no metadata client")
}

func TestWatchMergesSourcesAndClosesWhenDone(t *testing.T) {
	f := newFakeIMDS(t)
	f.set("spot/instance-action", `{"action":"terminate","time":"2026-03-04T05:08:07Z"}`)
	clk := clock.NewFake(start)
	log, logs := newLog(t)
	sigs := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	defer cancel()
	notices := cloud.Watch(ctx,
		cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: f.srv.URL}, clk, log),
		cloud.NewSignalSource(cloud.SignalSourceConfig{Signals: sigs}, clk, log),
		brokenSource{})

	got := map[cloud.Kind]bool{}
	got[recv(t, notices).Kind] = true
	sigs <- syscall.SIGTERM
	got[recv(t, notices).Kind] = true
	if !got[cloud.SpotInterruption] || !got[cloud.Signal] {
		t.Fatalf("kinds received: %v", got)
	}
	cancel()
	select {
	case n, ok := <-notices:
		if ok {
			t.Fatalf("notice after cancel: %+v", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel was not closed")
	}
	if logs.count("Interruption source stopped") != 1 || logs.count("no metadata client") != 1 {
		t.Fatalf("broken source not logged:\n%s", logs)
	}
}

// countingCompleter counts heartbeats.
type countingCompleter struct {
	mu         sync.Mutex
	heartbeats int
	completes  int
	err        error
}

func (c *countingCompleter) Heartbeat(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.heartbeats++
	return c.err
}

func (c *countingCompleter) Complete(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.completes++
	return c.err
}

func TestRunHeartbeatsAndCompleters(t *testing.T) {
	a, b := &countingCompleter{}, &countingCompleter{err: errors.New("boom")}
	all := cloud.Completers{a, b}
	clk := clock.NewFake(start)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	armed := clk.Armed()
	go func() {
		cloud.RunHeartbeats(ctx, clk, all, 20*time.Second, zerolog.Nop())
		close(done)
	}()
	<-armed
	step(t, clk, 20*time.Second)
	step(t, clk, 20*time.Second)
	cancel()
	<-done
	if a.heartbeats != 3 || b.heartbeats != 3 {
		t.Fatalf("heartbeats = %d, %d; want 3 each", a.heartbeats, b.heartbeats)
	}
	if err := all.Complete(context.Background()); err == nil || err.Error() != "boom" {
		t.Fatalf("Complete = %v, want the failing member's error", err)
	}
	if a.completes != 1 || b.completes != 1 {
		t.Fatalf("completes = %d, %d; want 1 each", a.completes, b.completes)
	}
}
