package runner_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fifo creates a named pipe the test and an action use to synchronize without sleeping.
func fifo(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readPid(t *testing.T, s string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("bad pid %q", s)
	}
	return pid
}

func TestRunTimeoutKillsProcessGroupAndKeepsPartialOutput(t *testing.T) {
	f := newFixture(t, nil)
	pidPipe := fifo(t, "pid")
	cmd := shell(`echo partial; echo partial-err >&2; sleep 1000 & echo $! > ` + pidPipe + `; wait`)
	armed := f.clock.Armed()
	type outcome struct {
		res *repb.ActionResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := f.run(context.Background(), cmd, nil, 10*time.Second)
		done <- outcome{res, err}
	}()
	b, err := os.ReadFile(pidPipe) // Returns once the action has written its stdout and forked.
	if err != nil {
		t.Fatal(err)
	}
	pid := readPid(t, string(b))
	<-armed
	f.clock.Advance(9 * time.Second)
	if !alive(pid) {
		t.Fatal("background process died before the timeout")
	}
	f.clock.Advance(time.Second)
	o := <-done
	checkStatus(t, o.err, status.New(codes.DeadlineExceeded, "Action timed out after 10s"))
	if o.res == nil {
		t.Fatal("no ActionResult with the timeout")
	}
	if got := f.stdout(o.res); got != "partial\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := f.stderr(o.res); got != "partial-err\n" {
		t.Errorf("stderr = %q", got)
	}
	if o.res.GetExitCode() != 137 {
		t.Errorf("exit code = %d", o.res.GetExitCode())
	}
	waitDead(t, pid)
}

func TestRunKillsLeftoverProcesses(t *testing.T) {
	f := newFixture(t, nil)
	res := f.mustRun(shell(`sleep 1000 > /dev/null 2>&1 & echo $!`), nil)
	pid := readPid(t, f.stdout(res))
	waitDead(t, pid)
}

func TestRunCancelled(t *testing.T) {
	f := newFixture(t, nil)
	pidPipe := fifo(t, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := shell(`sleep 1000 & echo $! > ` + pidPipe + `; wait`)
	type outcome struct {
		res *repb.ActionResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := f.run(ctx, cmd, nil, 0)
		done <- outcome{res, err}
	}()
	b, err := os.ReadFile(pidPipe)
	if err != nil {
		t.Fatal(err)
	}
	pid := readPid(t, string(b))
	cancel()
	o := <-done
	checkStatus(t, o.err, status.New(codes.Canceled, "context canceled"))
	if o.res != nil {
		t.Errorf("result for a cancelled action: %v", o.res)
	}
	waitDead(t, pid)
	if des, _ := os.ReadDir(filepath.Join(f.cfg.CacheDir, "actions")); len(des) != 0 {
		t.Errorf("action directory left after cancellation: %v", des)
	}
}

func TestRunCancelledBeforeStart(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.run(ctx, shell("echo never"), map[string]entry{"a": {content: "a"}}, 0)
	if status.Code(err) != codes.Canceled {
		t.Errorf("status = %v", err)
	}
}

// The script Pants adds as ./__pants_wrapper__ when
// remote_execution_append_only_caches_base_path is set (see CLIENTS.md): it makes the named
// cache under the base, links it into the sandbox, changes to the working directory and runs
// the command.
const pantsWrapper = `#!/bin/sh
/bin/mkdir -p '{base}/named_caches/pip'
/bin/mkdir -p '.cache'
/bin/ln -s '{base}/named_caches/pip' '.cache/pip'
cd 'src/python'
exec "$@"
`

func TestRunPantsWrapperAppendOnlyCaches(t *testing.T) {
	f := newFixture(t, nil)
	base := f.cfg.AppendOnlyCachesBase
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		t.Fatalf("append-only caches base not created by New: %v", err)
	}
	inputs := map[string]entry{
		"__pants_wrapper__":   {content: strings.ReplaceAll(pantsWrapper, "{base}", base), exec: true},
		"src/python/input.py": {content: "print('hi')\n"},
	}
	for i, want := range []string{"key-1\n", "key-1\nkey-2\n"} {
		cmd := &repb.Command{
			Arguments: []string{"./__pants_wrapper__", "/bin/sh", "-c", `echo $PANTS_CACHE_KEY_X >> ../../.cache/pip/log && cat ../../.cache/pip/log && cp input.py out.py`},
			EnvironmentVariables: []*repb.Command_EnvironmentVariable{
				{Name: "PANTS_CACHE_KEY_X", Value: "key-" + strconv.Itoa(i+1)},
				{Name: "PATH", Value: "/usr/bin:/bin"},
			},
			OutputPaths: []string{"src/python/out.py"},
			Platform:    &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}}},
		}
		res := f.mustRun(cmd, inputs)
		if res.GetExitCode() != 0 {
			t.Fatalf("exit %d: %s", res.GetExitCode(), f.stderr(res))
		}
		if got := f.stdout(res); got != want {
			t.Errorf("run %d: stdout %q, want %q", i+1, got, want)
		}
		if got := res.GetOutputFiles(); len(got) != 1 || string(f.cas.get(t, got[0].GetDigest())) != "print('hi')\n" {
			t.Errorf("outputs = %v", got)
		}
	}
	b, err := os.ReadFile(filepath.Join(base, "named_caches", "pip", "log"))
	if err != nil || string(b) != "key-1\nkey-2\n" {
		t.Errorf("append-only cache = %q, %v", b, err)
	}
}
