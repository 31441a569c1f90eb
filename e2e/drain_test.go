package e2e_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// drainSetup is what differs between the drain stories: how worker A learns that its machine
// is going away.
type drainSetup struct {
	// kind is the drain kind the scheduler should count (drain_notices_total{kind}).
	kind string
	// startA starts worker A (concurrency 4) with its interruption source.
	startA func(t *testing.T, s *scheduler) *process
	// notify makes the notice happen (or waits for it) and returns when it became available.
	notify func(t *testing.T, a *process) time.Time
	// stopWithin bounds the time from the notice to A's stop point, after which it hands the
	// long actions back and exits; deadline bounds the time from the notice to the deadline.
	stopWithin, deadline time.Duration
	// afterNotice runs once the scheduler has seen the drain (e.g. IMDS goes away).
	afterNotice func(t *testing.T)
}

// runDrainStory is the drain story every interruption source must tell, with real scheduler
// and worker processes and a client speaking REAPI: worker A runs two short and two long
// actions; the notice arrives; the scheduler sees BOT_TERMINATING at once and gives A nothing
// new; the short actions finish on A, the long ones are handed back and finish on worker B;
// every Execute succeeds; A exits 0 before its deadline.
func runDrainStory(t *testing.T, setup drainSetup) *process {
	s := startScheduler(t, "")
	c := newPantsClient(t, s.addr, "drain")
	g := newGates(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	a := setup.startA(t, s)
	names := []string{"short-1", "short-2", "long-1", "long-2"}
	results := map[string]<-chan execResult{}
	for _, n := range names {
		results[n] = submit(ctx, c, n, g.gatedAction(c, n, strings.SplitN(n, "-", 2)[0]))
	}
	waitUntil(t, 30*time.Second, "four actions running on A", func() bool { return g.running(names...) == 4 })
	if a.logContains("Interruption notice") {
		t.Fatal("the notice came before A was running its four actions; the story needs them running")
	}

	noticeAt := setup.notify(t, a)
	seenAt := waitUntil(t, 10*time.Second, "the scheduler to see A draining", func() bool {
		return s.metric(t, "buildfleet_scheduler_drain_notices_total", `kind="`+setup.kind+`"`) == 1
	})
	t.Logf("notice → BOT_TERMINATING seen by the scheduler: %v", seenAt.Sub(noticeAt).Round(time.Millisecond))
	if d := seenAt.Sub(noticeAt); d > 5*time.Second {
		t.Errorf("the scheduler saw the drain %v after the notice", d)
	}
	if n := s.metric(t, "buildfleet_scheduler_workers", `state="draining"`); n != 1 {
		t.Errorf("workers{state=draining} = %v, want 1", n)
	}
	if setup.afterNotice != nil {
		setup.afterNotice(t)
	}

	// Work that arrives during the drain waits for B: A gives it none of the slots the short
	// actions free.
	results["late"] = submit(ctx, c, "late", g.gatedAction(c, "late", ""))
	g.open(t, "short")
	waitUntil(t, 10*time.Second, "the short actions to finish on A", func() bool {
		return s.metric(t, "buildfleet_scheduler_drain_actions_finished_total", "") == 2
	})
	startDrainWorker(t, s, "B", nil, "--worker-concurrency=4")

	code, exitAt := a.exited(t, setup.stopWithin+15*time.Second)
	if code != 0 {
		t.Fatalf("worker A exited %d, want 0", code)
	}
	t.Logf("notice → A exited: %v", exitAt.Sub(noticeAt).Round(time.Millisecond))
	if !exitAt.Before(noticeAt.Add(setup.deadline)) {
		t.Errorf("A exited %v after the notice, not before its deadline (%v)", exitAt.Sub(noticeAt), setup.deadline)
	}
	g.open(t, "long")

	want := map[string]string{"short-1": "A", "short-2": "A", "long-1": "B", "long-2": "B", "late": "B"}
	for name, worker := range want {
		select {
		case r := <-results[name]:
			if r.err != nil {
				t.Fatalf("%s: %v", name, r.err)
			}
			if r.resp.Status.GetCode() != 0 || r.resp.Result.GetExitCode() != 0 {
				t.Fatalf("%s: status %v exit %d", name, r.resp.Status, r.resp.Result.GetExitCode())
			}
			if got := r.resp.Result.GetExecutionMetadata().GetWorker(); got != worker {
				t.Errorf("%s ran on %q, want %q", name, got, worker)
			}
			if len(r.resp.Result.OutputFiles) != 1 || strings.TrimSpace(string(c.read(r.resp.Result.OutputFiles[0].Digest))) != name {
				t.Errorf("%s: outputs %v", name, r.resp.Result.OutputFiles)
			}
		case <-ctx.Done():
			t.Fatalf("%s: no result", name)
		}
	}

	// What the scheduler counted: two hand-backs, two actions finished during the drain,
	// nothing lost to expiry, and A given nothing after the notice.
	for _, m := range []struct {
		name, labels string
		want         float64
	}{
		{"buildfleet_scheduler_leases_requeued_total", `reason="handed-back"`, 2},
		{"buildfleet_scheduler_leases_requeued_total", `reason="expired"`, 0},
		{"buildfleet_scheduler_drain_actions_finished_total", "", 2},
		{"buildfleet_scheduler_drain_notices_total", `kind="` + setup.kind + `"`, 1},
	} {
		if got := s.metric(t, m.name, m.labels); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	if n := s.countLog("Lease handed out", `"bot_id":"A"`); n != 4 {
		t.Errorf("the scheduler handed A %d leases, want only the 4 from before the notice", n)
	}
	if n := a.countLog("Lease accepted"); n != 4 || a.logContains("Lease offered while draining") {
		t.Errorf("A accepted %d leases (want 4) or was offered one while draining", n)
	}
	if !a.logContains("Drained: every result acknowledged by the scheduler") {
		t.Error("A did not log a clean drain")
	}
	if !s.logContains(`"kind":"` + setup.kind + `"`) {
		t.Errorf("the scheduler did not log the drain kind %s", setup.kind)
	}
	return a
}

// metadataMock is the path of the real amazon-ec2-metadata-mock installed by
// scripts/install-test-deps.sh.
func metadataMock(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs("../.tools/bin/ec2-metadata-mock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("ec2-metadata-mock not installed (run scripts/install-test-deps.sh): %v", err)
	}
	return bin
}

// startIMDS starts the metadata mock on a free loopback port with a spot interruption
// (terminate) served delay after its start, and waits until it grants tokens. It returns the
// process, its endpoint and when the notice becomes available.
func startIMDS(t *testing.T, delay time.Duration) (*process, string, time.Time) {
	t.Helper()
	bin := metadataMock(t)
	port := strconv.Itoa(freePort(t))
	launched := time.Now()
	p := start(t, "imds", bin, []string{"HOME=" + t.TempDir()},
		"-n", "127.0.0.1", "-p", port, "-I", "spot", "-d", strconv.Itoa(int(delay/time.Second)), "--action", "terminate")
	endpoint := "http://127.0.0.1:" + port
	waitUntil(t, 10*time.Second, "the metadata mock to answer", func() bool {
		req, _ := http.NewRequest(http.MethodPut, endpoint+"/latest/api/token", nil)
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p, endpoint, launched.Add(delay)
}

// awsSetup is the AWS story: the real metadata mock serves a spot notice (time = read + 2 min);
// a safety margin of 1m55s puts A's stop point 5 s after it.
func awsSetup(imdsGone bool) drainSetup {
	var (
		imds     *process
		endpoint string
		trigger  time.Time
	)
	setup := drainSetup{
		kind:       "spot-interruption",
		stopWithin: 5 * time.Second,
		deadline:   2 * time.Minute,
		startA: func(t *testing.T, s *scheduler) *process {
			imds, endpoint, trigger = startIMDS(t, 8*time.Second)
			a := startDrainWorker(t, s, "A", []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + endpoint},
				"--worker-concurrency=4", "--cloud=aws", "--cloud-poll-interval=200ms", "--drain-safety-margin=1m55s")
			return a
		},
		notify: func(t *testing.T, a *process) time.Time {
			// The notice's moment is when the mock starts serving it, watched from here.
			at := waitUntil(t, time.Until(trigger)+10*time.Second, "the mock to serve the spot notice", func() bool {
				return spotNoticeServed(t, endpoint)
			})
			waitUntil(t, 10*time.Second, "A to read the spot notice from the mock", func() bool { return a.logContains("Interruption notice") })
			if !a.logContains(`"source":"aws"`) {
				t.Fatal("the notice did not come from the AWS source")
			}
			return at
		},
	}
	if imdsGone {
		setup.afterNotice = func(t *testing.T) {
			imds.kill()
			t.Log("metadata mock killed mid-drain")
		}
	}
	return setup
}

// spotNoticeServed reports whether the IMDS at endpoint serves a spot instance-action.
func spotNoticeServed(t *testing.T, endpoint string) bool {
	req, _ := http.NewRequest(http.MethodPut, endpoint+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	token, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	req, _ = http.NewRequest(http.MethodGet, endpoint+"/latest/meta-data/spot/instance-action", nil)
	req.Header.Set("X-aws-ec2-metadata-token", string(token))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestDrainOnAWSSpotNotice tells the drain story with the real amazon-ec2-metadata-mock.
func TestDrainOnAWSSpotNotice(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	t.Parallel()
	setup := awsSetup(false)
	runDrainStory(t, setup)
}

// TestDrainWhenIMDSDisappearsMidDrain: the metadata service goes away right after the notice;
// the drain goes on to the end and A still exits 0.
func TestDrainWhenIMDSDisappearsMidDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	t.Parallel()
	a := runDrainStory(t, awsSetup(true))
	if !a.logContains("Metadata service stopped answering") {
		t.Error("A did not notice that the metadata service went away")
	}
}

// TestDrainOnGCEPreemption tells the drain story with a fake GCE metadata server whose
// instance/preempted turns TRUE (wait_for_change long-poll); the notice deadline is 8 s and the
// safety margin 3 s.
func TestDrainOnGCEPreemption(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	t.Parallel()
	gce := newFakeGCE(t)
	runDrainStory(t, drainSetup{
		kind:       "preemption",
		stopWithin: 5 * time.Second,
		deadline:   8 * time.Second,
		startA: func(t *testing.T, s *scheduler) *process {
			return startDrainWorker(t, s, "A", []string{"GCE_METADATA_HOST=" + gce.host()},
				"--worker-concurrency=4", "--cloud=gcp", "--gce-notice-deadline=8s", "--drain-safety-margin=3s")
		},
		notify: func(t *testing.T, a *process) time.Time {
			at := time.Now()
			gce.preempt()
			return at
		},
	})
	gce.mu.Lock()
	defer gce.mu.Unlock()
	if gce.refused != 0 {
		t.Errorf("%d metadata requests lacked Metadata-Flavor: Google", gce.refused)
	}
}

// TestDrainOnSIGTERM tells the drain story with SIGTERM (Kubernetes, systemd) and a drain
// timeout of 8 s.
func TestDrainOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	t.Parallel()
	runDrainStory(t, drainSetup{
		kind:       "signal",
		stopWithin: 5 * time.Second,
		deadline:   8 * time.Second,
		startA: func(t *testing.T, s *scheduler) *process {
			return startDrainWorker(t, s, "A", nil, "--worker-concurrency=4", "--cloud=none",
				"--drain-timeout=8s", "--drain-safety-margin=3s")
		},
		notify: func(t *testing.T, a *process) time.Time {
			at := time.Now()
			if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			return at
		},
	})
}
