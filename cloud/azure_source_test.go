package cloud_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

func startAzure(t *testing.T, f *fakeAzure, cfg cloud.AzureSourceConfig) (*cloud.AzureSource, *clock.Fake, <-chan cloud.Notice, *logBuffer) {
	t.Helper()
	clk := clock.NewFake(start)
	log, logs := newLog(t)
	if cfg.Endpoint == "" {
		cfg.Endpoint = f.srv.URL
	}
	src := cloud.NewAzureSource(cfg, clk, log)
	if src.Name() != "azure" {
		t.Fatalf("Name() = %q", src.Name())
	}
	armed := clk.Armed()
	ch, _, _ := watching(t, src)
	select {
	case <-armed:
	case <-time.After(10 * time.Second):
		t.Fatal("first poll did not finish")
	}
	return src, clk, ch, logs
}

func TestAzureSourcePreemptAndTerminate(t *testing.T) {
	f := newFakeAzure(t)
	src, clk, ch, _ := startAzure(t, f, cloud.AzureSourceConfig{})
	step(t, clk, 2*time.Second)
	noNotice(t, ch)

	f.setDoc(`{"DocumentIncarnation": 2, "Events": [
		{"EventId": "freeze-1", "EventType": "Freeze", "ResourceType": "VirtualMachine", "Resources": ["worker-1"],
		 "EventStatus": "Scheduled", "NotBefore": "Wed, 04 Mar 2026 05:20:00 GMT"},
		{"EventId": "other-vm", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["worker-2"],
		 "EventStatus": "Scheduled", "NotBefore": "Wed, 04 Mar 2026 05:06:39 GMT"},
		{"EventId": "preempt-1", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["worker-1"],
		 "EventStatus": "Scheduled", "NotBefore": "Wed, 04 Mar 2026 05:06:39 GMT", "DurationInSeconds": -1}]}`)
	step(t, clk, 2*time.Second)
	got := recv(t, ch)
	want := cloud.Notice{Source: "azure", Kind: cloud.ScheduledEvent, Reason: "Preempt (event preempt-1)",
		Deadline: time.Date(2026, 3, 4, 5, 6, 39, 0, time.UTC)}
	if got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}
	noNotice(t, ch)

	// A started Terminate event has no NotBefore: its deadline is now.
	f.setDoc(`{"DocumentIncarnation": 3, "Events": [
		{"EventId": "preempt-1", "EventType": "Preempt", "Resources": ["worker-1"], "EventStatus": "Scheduled",
		 "NotBefore": "Wed, 04 Mar 2026 05:06:39 GMT"},
		{"EventId": "term-1", "EventType": "Terminate", "Resources": ["worker-1"], "EventStatus": "Started", "NotBefore": ""}]}`)
	step(t, clk, 2*time.Second)
	got = recv(t, ch)
	want = cloud.Notice{Source: "azure", Kind: cloud.ScheduledEvent, Reason: "Terminate (event term-1)", Deadline: start.Add(6 * time.Second)}
	if got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}
	step(t, clk, 2*time.Second)
	noNotice(t, ch)

	// Once drained, both noticed events are acknowledged in one POST, and only once.
	c := src.Completer()
	if err := c.Heartbeat(context.Background()); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.Complete(context.Background()); err != nil {
			t.Fatalf("Complete: %v", err)
		}
	}
	noHeader, acks := f.stats()
	if !reflect.DeepEqual(acks, [][]string{{"preempt-1", "term-1"}}) {
		t.Fatalf("acknowledgements = %v", acks)
	}
	if noHeader != 0 {
		t.Fatalf("%d requests without Metadata: true", noHeader)
	}
}

func TestAzureSourcePreemptWithoutNotBeforeGetsThirtySeconds(t *testing.T) {
	f := newFakeAzure(t)
	f.setDoc(`{"DocumentIncarnation": 1, "Events": [{"EventId": "p", "EventType": "Preempt", "Resources": [], "NotBefore": ""}]}`)
	_, _, ch, _ := startAzure(t, f, cloud.AzureSourceConfig{VMName: "worker-1"})
	if got := recv(t, ch); !got.Deadline.Equal(start.Add(30 * time.Second)) {
		t.Fatalf("notice = %+v, want deadline 30 s after now", got)
	}
}

func TestAzureSourceSkipsMalformedDocument(t *testing.T) {
	f := newFakeAzure(t)
	f.setDoc(`{"DocumentIncarnation": 1, "Events": [`)
	_, clk, ch, logs := startAzure(t, f, cloud.AzureSourceConfig{})
	step(t, clk, 2*time.Second)
	noNotice(t, ch)
	if n := logs.count("Ignoring malformed Scheduled Events document"); n != 1 {
		t.Fatalf("malformed document logged %d times, want once:\n%s", n, logs)
	}
	f.setDoc(`{"DocumentIncarnation": 2, "Events": [{"EventId": "t", "EventType": "Terminate", "Resources": ["worker-1"], "NotBefore": "Wed, 04 Mar 2026 05:16:07 GMT"}]}`)
	step(t, clk, 2*time.Second)
	if got := recv(t, ch); got.Reason != "Terminate (event t)" {
		t.Fatalf("notice = %+v", got)
	}
}

func TestAzureSourceUnreachableIsQuiet(t *testing.T) {
	clk := clock.NewFake(start)
	log, logs := newLog(t)
	src := cloud.NewAzureSource(cloud.AzureSourceConfig{Endpoint: "http://" + closedAddr(t)}, clk, log)
	armed := clk.Armed()
	ch, _, _ := watching(t, src)
	<-armed
	for i := 0; i < 3; i++ {
		step(t, clk, 10*time.Second)
	}
	noNotice(t, ch)
	if n := logs.count("Metadata service unreachable"); n != 4 {
		t.Fatalf("%d failed polls logged, want 4:\n%s", n, logs)
	}
	if strings.Contains(logs.String(), `"level":"warn"`) {
		t.Fatalf("unreachable service logged a warning:\n%s", logs)
	}
	// Nothing noticed, nothing to acknowledge.
	if err := src.Completer().Complete(context.Background()); err != nil {
		t.Fatalf("Complete: %v", err)
	}
}

func TestAzureCompleterFailureIsUnavailable(t *testing.T) {
	f := newFakeAzure(t)
	f.setDoc(`{"DocumentIncarnation": 1, "Events": [{"EventId": "p", "EventType": "Preempt", "Resources": ["worker-1"], "NotBefore": ""}]}`)
	src, _, ch, _ := startAzure(t, f, cloud.AzureSourceConfig{})
	recv(t, ch)
	f.srv.Close()
	err := src.Completer().Complete(context.Background())
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "Failed to acknowledge Scheduled Events p") {
		t.Fatalf("Complete = %v, want UNAVAILABLE", err)
	}
}
