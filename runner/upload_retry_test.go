package runner_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// runAdvancing runs the action in the background, advancing the fake clock each time the
// runner waits on it (its upload backoff), and returns its outcome.
func (f *fixture) runAdvancing(ctx context.Context, cmd *repb.Command, onWait func()) (*repb.ActionResult, error) {
	type outcome struct {
		res *repb.ActionResult
		err error
	}
	done := make(chan outcome, 1)
	armed := f.clock.Armed()
	go func() {
		res, err := f.run(ctx, cmd, map[string]entry{}, 0)
		done <- outcome{res, err}
	}()
	for {
		select {
		case o := <-done:
			return o.res, o.err
		case <-armed:
			armed = f.clock.Armed()
			if onWait != nil {
				onWait()
			}
			f.clock.Advance(10 * time.Second)
		case <-time.After(30 * time.Second):
			f.t.Fatal("the action did not finish")
		}
	}
}

// The CAS is unreachable when the action's outputs are to be uploaded (every scheduler replica
// down for a moment): the runner keeps the finished outputs and uploads them once the CAS is
// back, so the action completes after running once instead of failing (which would make the
// scheduler run it again).
func TestOutputUploadIsRetriedWhileTheCASIsUnreachable(t *testing.T) {
	f := newFixture(t, nil)
	runs := filepath.Join(t.TempDir(), "runs")
	f.cas.unavailable.Store(4)
	res, err := f.runAdvancing(context.Background(), shell("echo ran >> "+runs+"; echo out > out.txt", "out.txt"), nil)
	if err != nil {
		t.Fatalf("Run with the CAS away for a moment: %v", err)
	}
	if b, _ := os.ReadFile(runs); strings.Count(string(b), "ran") != 1 {
		t.Fatalf("command ran %d times, want once", strings.Count(string(b), "ran"))
	}
	if n := f.cas.callCount("FindMissingBlobs"); n != 5 {
		t.Fatalf("%d upload attempts, want 4 failed and 1 that worked", n)
	}
	if got := f.cas.get(t, res.OutputFiles[0].Digest); string(got) != "out\n" {
		t.Fatalf("uploaded output %q", got)
	}
}

// While the upload is being retried, the lease going away (the worker cancels the action's
// context: the scheduler withdrew it, or a drain ran out of time) ends it at once with
// CANCELLED.
func TestOutputUploadRetriesEndWithTheLease(t *testing.T) {
	f := newFixture(t, nil)
	f.cas.unavailable.Store(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	waits := 0
	_, err := f.runAdvancing(ctx, shell("echo out > out.txt", "out.txt"), func() {
		if waits++; waits == 3 {
			cancel()
		}
	})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("Run whose lease went away during upload retries: %v, want CANCELLED", err)
	}
}
