package cloud_test

import (
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

const (
	preempted   = "instance/preempted"
	maintenance = "instance/maintenance-event"
)

// startGCE starts a GCESource on f and waits until both its subscriptions are long-polling.
func startGCE(t *testing.T, f *fakeGCE, cfg cloud.GCESourceConfig) (*clock.Fake, <-chan cloud.Notice) {
	t.Helper()
	clk := clock.NewFake(start)
	log, _ := newLog(t)
	src := cloud.NewGCESource(cfg, clk, log)
	if src.Name() != "gcp" {
		t.Fatalf("Name() = %q", src.Name())
	}
	ch, _, _ := watching(t, src)
	f.awaitWait(t, preempted, f.etag(preempted))
	f.awaitWait(t, maintenance, f.etag(maintenance))
	return clk, ch
}

func TestGCESourcePreemption(t *testing.T) {
	f := newFakeGCE(t)
	f.set(preempted, "FALSE")
	f.set(maintenance, "NONE")
	clk, ch := startGCE(t, f, cloud.GCESourceConfig{Host: f.host()})
	noNotice(t, ch)

	clk.Advance(7 * time.Second)
	f.set(preempted, "TRUE")
	got := recv(t, ch)
	want := cloud.Notice{Source: "gcp", Kind: cloud.Preemption, Reason: "preempted", Deadline: start.Add(37 * time.Second)}
	if got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}

	// The same value again (a new ETag) is not a new notice: the subscription moves on to
	// waiting for the next change without sending anything.
	f.set(preempted, "TRUE")
	f.awaitWait(t, preempted, f.etag(preempted))
	noNotice(t, ch)

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noFlavor != 0 {
		t.Fatalf("%d requests without Metadata-Flavor: Google", f.noFlavor)
	}
}

func TestGCESourceMaintenance(t *testing.T) {
	f := newFakeGCE(t)
	f.set(preempted, "FALSE")
	f.set(maintenance, "NONE")
	_, ch := startGCE(t, f, cloud.GCESourceConfig{Host: f.host(), Deadline: time.Minute})

	f.set(maintenance, "MIGRATE_ON_HOST_MAINTENANCE")
	f.awaitWait(t, maintenance, f.etag(maintenance))
	noNotice(t, ch)

	f.set(maintenance, "TERMINATE_ON_HOST_MAINTENANCE")
	got := recv(t, ch)
	want := cloud.Notice{Source: "gcp", Kind: cloud.Maintenance, Reason: "TERMINATE_ON_HOST_MAINTENANCE", Deadline: start.Add(time.Minute)}
	if got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}
}

func TestGCESourceAlreadyPreemptedAtStart(t *testing.T) {
	f := newFakeGCE(t)
	f.set(preempted, "TRUE")
	f.set(maintenance, "NONE")
	_, ch := startGCE(t, f, cloud.GCESourceConfig{Host: f.host()})
	if got := recv(t, ch); got.Kind != cloud.Preemption {
		t.Fatalf("notice = %+v", got)
	}
	noNotice(t, ch)
}

func TestGCESourceHonoursMetadataHostEnvironment(t *testing.T) {
	f := newFakeGCE(t)
	f.set(preempted, "FALSE")
	f.set(maintenance, "NONE")
	t.Setenv("GCE_METADATA_HOST", f.host())
	_, ch := startGCE(t, f, cloud.GCESourceConfig{})
	f.set(preempted, "TRUE")
	if got := recv(t, ch); got.Kind != cloud.Preemption {
		t.Fatalf("notice = %+v", got)
	}
}

func TestGCESourceUnreachableIsQuiet(t *testing.T) {
	clk := clock.NewFake(start)
	log, logs := newLog(t)
	src := cloud.NewGCESource(cloud.GCESourceConfig{Host: closedAddr(t)}, clk, log)
	armed := clk.Armed()
	ch, cancel, done := watching(t, src)
	// Both subscriptions fail and wait on the clock before trying again.
	select {
	case <-armed:
	case <-time.After(15 * time.Second):
		t.Fatal("the source did not back off")
	}
	noNotice(t, ch)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return")
	}
	for _, level := range []string{`"level":"warn"`, `"level":"error"`, `"level":"info"`} {
		if strings.Contains(logs.String(), level) {
			t.Fatalf("unreachable metadata server logged at %s:\n%s", level, logs)
		}
	}
	if !strings.Contains(logs.String(), "Metadata service unreachable") {
		t.Fatalf("no debug log of the failure:\n%s", logs)
	}
}
