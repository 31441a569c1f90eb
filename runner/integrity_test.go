package runner_test

import (
	"context"
	"os"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root can write to the read-only hardlinked inputs")
	}
}

func TestCacheIntegrityAgainstRootActionWritingInputs(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, nil)
	inputs := map[string]entry{
		"in1":     {content: "original1\n"},
		"in2":     {content: "original2\n"},
		"in3":     {content: "original3\n"},
		"in4":     {content: "original4\n"},
		"in5":     {content: "original5\n", exec: true},
		"d/same1": {content: "original1\n"}, // Same inode as in1 in this action.
	}
	res := f.mustRun(shell(`echo x >> in1 && rm in2 && chmod 777 in3 && touch in4 && truncate -s 0 in5 && cat in1 d/same1`), inputs)
	if got := f.stdout(res); got != "original1\nx\noriginal1\nx\n" {
		t.Errorf("first action: stdout %q, exit %d, stderr %q", got, res.GetExitCode(), f.stderr(res))
	}
	f.cas.resetCounts()
	res = f.mustRun(shell(`cat in1 in2 in3 in4 in5 d/same1; stat -c %a in3 in5`), inputs)
	want := "original1\noriginal2\noriginal3\noriginal4\noriginal5\noriginal1\n444\n555\n"
	if got := f.stdout(res); got != want {
		t.Errorf("next action saw %q, want %q", got, want)
	}
	for content, reads := range map[string]int{"original1\n": 1, "original2\n": 0, "original3\n": 1, "original4\n": 1, "original5\n": 1} {
		if got := f.cas.readsOf(digest.FromBytes([]byte(content))); got != reads {
			t.Errorf("%q fetched %d times, want %d", content, got, reads)
		}
	}
}

func TestCacheIntegrityConcurrentActionsSharingAnInput(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, nil)
	inputs := map[string]entry{"shared": {content: "original\n"}}
	started, release := fifo(t, "started"), fifo(t, "release")
	type outcome struct {
		res *repb.ActionResult
		err error
	}
	reader := make(chan outcome, 1)
	go func() {
		res, err := f.run(context.Background(), shell(`echo started > `+started+`; read x < `+release+`; cat shared`), inputs, 0)
		reader <- outcome{res, err}
	}()
	if _, err := os.ReadFile(started); err != nil { // The reader holds "shared" now.
		t.Fatal(err)
	}
	d := digest.FromBytes([]byte("original\n"))
	want := status.New(codes.Unavailable, "Input file "+d.String()+" was modified by an action while another held it; the result is discarded so the action can be retried")
	_, err := f.run(context.Background(), shell(`echo evil >> shared`), inputs, 0)
	checkStatus(t, err, want)
	if err := os.WriteFile(release, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := <-reader
	checkStatus(t, o.err, want)

	res := f.mustRun(shell(`cat shared`), inputs)
	if got := f.stdout(res); got != "original\n" {
		t.Errorf("retried action saw %q", got)
	}
}
