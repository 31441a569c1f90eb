package cloud_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

const spotPath = "/latest/meta-data/spot/instance-action"

// startAWS starts an AWSSource against f and waits for its first poll.
func startAWS(t *testing.T, f *fakeIMDS, cfg cloud.AWSSourceConfig) (*clock.Fake, <-chan cloud.Notice, *logBuffer) {
	t.Helper()
	clk := clock.NewFake(start)
	log, logs := newLog(t)
	if cfg.Endpoint == "" {
		cfg.Endpoint = f.srv.URL
	}
	src := cloud.NewAWSSource(cfg, clk, log)
	if src.Name() != "aws" {
		t.Fatalf("Name() = %q", src.Name())
	}
	armed := clk.Armed()
	ch, _, _ := watching(t, src)
	select {
	case <-armed:
	case <-time.After(10 * time.Second):
		t.Fatal("first poll did not finish")
	}
	return clk, ch, logs
}

func TestAWSSourceSpotNoticeAfter404s(t *testing.T) {
	f := newFakeIMDS(t)
	clk, ch, _ := startAWS(t, f, cloud.AWSSourceConfig{})
	step(t, clk, 2*time.Second)
	noNotice(t, ch)

	f.set("spot/instance-action", `{"action": "stop", "time": "2026-03-04T05:08:11Z"}`)
	step(t, clk, 2*time.Second)
	got := recv(t, ch)
	want := cloud.Notice{Source: "aws", Kind: cloud.SpotInterruption, Reason: "stop",
		Deadline: time.Date(2026, 3, 4, 5, 8, 11, 0, time.UTC)}
	if got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}

	// The notice stays in IMDS: it is not sent again, nor when its time is stamped later (as
	// the metadata mock does on every read).
	step(t, clk, 2*time.Second)
	f.set("spot/instance-action", `{"action": "stop", "time": "2026-03-04T05:08:13Z"}`)
	step(t, clk, 2*time.Second)
	noNotice(t, ch)
	// An earlier time brings the deadline forward: sent again.
	f.set("spot/instance-action", `{"action": "stop", "time": "2026-03-04T05:08:01Z"}`)
	step(t, clk, 2*time.Second)
	if got := recv(t, ch); !got.Deadline.Equal(time.Date(2026, 3, 4, 5, 8, 1, 0, time.UTC)) {
		t.Fatalf("sooner notice = %+v", got)
	}

	puts, noToken, gets := f.stats()
	if puts != 1 {
		t.Errorf("token PUTs = %d, want 1 (the token is reused)", puts)
	}
	if noToken != 0 {
		t.Errorf("%d GETs without a token", noToken)
	}
	if gets[spotPath] != 6 {
		t.Errorf("spot GETs = %d, want 6 (one per poll)", gets[spotPath])
	}
}

func TestAWSSourceHonoursEndpointEnvironment(t *testing.T) {
	f := newFakeIMDS(t)
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f.srv.URL)
	f.set("spot/instance-action", `{"action":"terminate","time":"2026-03-04T05:08:07Z"}`)
	clk := clock.NewFake(start)
	log, _ := newLog(t)
	ch, _, _ := watching(t, cloud.NewAWSSource(cloud.AWSSourceConfig{}, clk, log))
	if got := recv(t, ch); got.Kind != cloud.SpotInterruption || got.Reason != "terminate" {
		t.Fatalf("notice = %+v", got)
	}
}

func TestAWSSourceRebalance(t *testing.T) {
	for _, drains := range []bool{false, true} {
		t.Run(map[bool]string{false: "logged only", true: "soft notice"}[drains], func(t *testing.T) {
			f := newFakeIMDS(t)
			clk, ch, logs := startAWS(t, f, cloud.AWSSourceConfig{RebalanceDrains: drains, RebalanceDeadline: 3 * time.Minute})
			f.set("events/recommendations/rebalance", `{"noticeTime": "2026-03-04T05:06:09Z"}`)
			step(t, clk, 2*time.Second)
			step(t, clk, 2*time.Second)
			if !drains {
				noNotice(t, ch)
				if n := logs.count("Rebalance recommendation received; not draining"); n != 1 {
					t.Fatalf("rebalance logged %d times, want once", n)
				}
				return
			}
			got := recv(t, ch)
			want := cloud.Notice{Source: "aws", Kind: cloud.Rebalance, Reason: "rebalance recommendation",
				Deadline: time.Date(2026, 3, 4, 5, 9, 9, 0, time.UTC), Soft: true}
			if got != want {
				t.Fatalf("notice = %+v, want %+v", got, want)
			}
			// One recommendation per instance, even if its noticeTime is stamped anew.
			f.set("events/recommendations/rebalance", `{"noticeTime": "2026-03-04T05:06:11Z"}`)
			step(t, clk, 2*time.Second)
			noNotice(t, ch)
		})
	}
}

func TestAWSSourceScaleIn(t *testing.T) {
	f := newFakeIMDS(t)
	f.set("autoscaling/target-lifecycle-state", "InService")
	clk, ch, _ := startAWS(t, f, cloud.AWSSourceConfig{ScaleInDeadline: 5 * time.Minute})
	step(t, clk, 2*time.Second)
	noNotice(t, ch)

	f.set("autoscaling/target-lifecycle-state", "Terminated")
	step(t, clk, 2*time.Second)
	got := recv(t, ch)
	want := cloud.Notice{Source: "aws", Kind: cloud.ScaleIn, Reason: "target lifecycle state Terminated",
		Deadline: start.Add(4*time.Second + 5*time.Minute)}
	if got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}
	step(t, clk, 2*time.Second)
	noNotice(t, ch)
}

func TestAWSSourceSkipsMalformedJSON(t *testing.T) {
	f := newFakeIMDS(t)
	f.set("spot/instance-action", `{"action": "terminate", "time": `)
	clk, ch, logs := startAWS(t, f, cloud.AWSSourceConfig{})
	step(t, clk, 2*time.Second)
	step(t, clk, 2*time.Second)
	noNotice(t, ch)
	if n := logs.count("Ignoring malformed instance metadata"); n != 1 {
		t.Fatalf("malformed body logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `"level":"warn"`) {
		t.Fatalf("malformed body not logged as a warning:\n%s", logs)
	}

	// A document that is JSON but not a notice is skipped as well.
	f.set("spot/instance-action", `[]`)
	step(t, clk, 2*time.Second)
	noNotice(t, ch)

	// Once IMDS serves a real notice it is sent.
	f.set("spot/instance-action", `{"action":"terminate","time":"2026-03-04T05:08:15Z"}`)
	step(t, clk, 2*time.Second)
	if got := recv(t, ch); got.Kind != cloud.SpotInterruption || !got.Deadline.Equal(time.Date(2026, 3, 4, 5, 8, 15, 0, time.UTC)) {
		t.Fatalf("notice = %+v", got)
	}
}

func TestAWSSourceUnreadableTimeAssumesTwoMinutes(t *testing.T) {
	f := newFakeIMDS(t)
	f.set("spot/instance-action", `{"action":"hibernate","time":"soon"}`)
	_, ch, _ := startAWS(t, f, cloud.AWSSourceConfig{})
	want := cloud.Notice{Source: "aws", Kind: cloud.SpotInterruption, Reason: "hibernate", Deadline: start.Add(2 * time.Minute)}
	if got := recv(t, ch); got != want {
		t.Fatalf("notice = %+v, want %+v", got, want)
	}
}

func TestAWSSourceRefreshesTokenAfter401(t *testing.T) {
	f := newFakeIMDS(t)
	clk, ch, _ := startAWS(t, f, cloud.AWSSourceConfig{})
	if puts, _, _ := f.stats(); puts != 1 {
		t.Fatalf("token PUTs after first poll = %d, want 1", puts)
	}
	// The token expires server-side: the next GET is answered 401 once, then the SDK fetches a
	// new token and the retried GET succeeds.
	f.expireTokens()
	f.set("spot/instance-action", `{"action":"terminate","time":"2026-03-04T05:08:09Z"}`)
	step(t, clk, 2*time.Second)
	if got := recv(t, ch); got.Kind != cloud.SpotInterruption || got.Reason != "terminate" {
		t.Fatalf("notice = %+v", got)
	}
	puts, noToken, _ := f.stats()
	if puts != 2 {
		t.Errorf("token PUTs = %d, want 2 (one refresh after the 401)", puts)
	}
	if noToken != 1 {
		t.Errorf("GETs answered 401 = %d, want 1", noToken)
	}
}

func TestAWSSourceUnreachableIsQuietUntilIMDSAppears(t *testing.T) {
	addr := closedAddr(t)
	clk := clock.NewFake(start)
	log, logs := newLog(t)
	src := cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: "http://" + addr, MaxBackoff: 8 * time.Second}, clk, log)
	armed := clk.Armed()
	ch, _, done := watching(t, src)
	<-armed
	for i := 0; i < 4; i++ {
		step(t, clk, 8*time.Second)
	}
	noNotice(t, ch)
	select {
	case <-done:
		t.Fatal("Watch returned while IMDS was unreachable")
	default:
	}
	if n := logs.count(`"failed_attempts":`); n != 5 {
		t.Fatalf("%d failed attempts logged, want 5", n)
	}
	for _, level := range []string{`"level":"warn"`, `"level":"error"`, `"level":"info"`} {
		if strings.Contains(logs.String(), level) {
			t.Fatalf("unreachable IMDS logged at %s:\n%s", level, logs)
		}
	}

	// IMDS appears (the backoff is capped, so it is found at the next poll) with a notice.
	f := startFakeIMDSAt(t, addr)
	f.set("spot/instance-action", `{"action":"terminate","time":"2026-03-04T05:10:00Z"}`)
	clk.Advance(8 * time.Second)
	if got := recv(t, ch); got.Kind != cloud.SpotInterruption {
		t.Fatalf("notice = %+v", got)
	}
}

func TestAWSSourceIdentity(t *testing.T) {
	f := newFakeIMDS(t)
	f.set("instance-id", "i-0123456789abcdef0")
	f.setRaw("/latest/dynamic/instance-identity/document", `{"instanceId":"i-0123456789abcdef0","region":"eu-west-1"}`)
	f.set("tags/instance/aws:autoscaling:groupName", "workers")
	f.set("tags/instance/team:hook", "drain-hook")
	log, _ := newLog(t)
	src := cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: f.srv.URL, LifecycleHookTag: "team:hook"}, clock.NewFake(start), log)
	id, err := src.Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := cloud.AWSIdentity{InstanceID: "i-0123456789abcdef0", Region: "eu-west-1", AutoScalingGroup: "workers", LifecycleHook: "drain-hook"}
	if id != want {
		t.Fatalf("Identity() = %+v, want %+v", id, want)
	}

	// Without tags in metadata only the id and region are known.
	g := newFakeIMDS(t)
	g.set("instance-id", "i-1")
	src = cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: g.srv.URL}, clock.NewFake(start), log)
	if id, err := src.Identity(context.Background()); err != nil || id != (cloud.AWSIdentity{InstanceID: "i-1"}) {
		t.Fatalf("Identity() = %+v, %v", id, err)
	}

	// Unreachable IMDS is an error.
	src = cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: "http://" + closedAddr(t)}, clock.NewFake(start), log)
	if _, err := src.Identity(context.Background()); err == nil {
		t.Fatal("Identity() of an unreachable IMDS succeeded")
	}
}
