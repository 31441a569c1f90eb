package cloud_test

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

func TestSignalSourceFirstAndSecondSignal(t *testing.T) {
	clk := clock.NewFake(start)
	log, _ := newLog(t)
	sigs := make(chan os.Signal)
	src := cloud.NewSignalSource(cloud.SignalSourceConfig{DrainTimeout: 45 * time.Second, Signals: sigs}, clk, log)
	if src.Name() != "signal" {
		t.Fatalf("Name() = %q", src.Name())
	}
	ch, _, _ := watching(t, src)

	sigs <- syscall.SIGTERM
	got := recv(t, ch)
	want := cloud.Notice{Source: "signal", Kind: cloud.Signal, Reason: "SIGTERM", Deadline: start.Add(45 * time.Second)}
	if got != want {
		t.Fatalf("first notice = %+v, want %+v", got, want)
	}

	clk.Advance(10 * time.Second)
	sigs <- syscall.SIGINT
	got = recv(t, ch)
	want = cloud.Notice{Source: "signal", Kind: cloud.Signal, Reason: "second signal (SIGINT)",
		Deadline: start.Add(10 * time.Second), Immediate: true}
	if got != want {
		t.Fatalf("second notice = %+v, want %+v", got, want)
	}
}

func TestSignalSourceDefaultDrainTimeout(t *testing.T) {
	clk := clock.NewFake(start)
	log, _ := newLog(t)
	sigs := make(chan os.Signal, 1)
	ch, _, _ := watching(t, cloud.NewSignalSource(cloud.SignalSourceConfig{Signals: sigs}, clk, log))
	sigs <- syscall.SIGINT
	if got := recv(t, ch); got.Reason != "SIGINT" || !got.Deadline.Equal(start.Add(cloud.DefaultDrainTimeout)) || got.Immediate {
		t.Fatalf("notice = %+v", got)
	}
}
