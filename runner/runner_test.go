package runner_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/runner"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// fixture is a runner against an in-memory CAS, with a fake clock.
type fixture struct {
	t     *testing.T
	cas   *testCAS
	conn  *grpc.ClientConn
	clock *clock.Fake
	cfg   runner.Config
	r     *runner.Runner
}

func newFixture(t *testing.T, edit func(*runner.Config)) *fixture {
	t.Helper()
	cas, conn := startCAS(t, 4<<20)
	f := &fixture{t: t, cas: cas, conn: conn, clock: clock.NewFake(epoch)}
	f.cfg = runner.Config{
		CacheDir:             filepath.Join(t.TempDir(), "cache"),
		AppendOnlyCachesBase: filepath.Join(t.TempDir(), "toolchain", "caches"),
		InstanceName:         "main",
		WorkerID:             "worker-1",
	}
	if edit != nil {
		edit(&f.cfg)
	}
	f.open()
	return f
}

// open (re)creates the runner on the fixture's cache directory.
func (f *fixture) open() {
	f.t.Helper()
	if f.r != nil {
		f.r.Close()
	}
	r, err := runner.New(f.cfg, f.conn, f.clock, zerolog.New(zerolog.NewTestWriter(f.t)).Level(zerolog.InfoLevel))
	if err != nil {
		f.t.Fatal(err)
	}
	f.r = r
	f.t.Cleanup(func() { r.Close() })
}

func shell(script string, outputs ...string) *repb.Command {
	return &repb.Command{
		Arguments:            []string{"/bin/sh", "-c", script},
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "/usr/bin:/bin"}},
		OutputPaths:          outputs,
	}
}

// run uploads cmd and inputs and runs the action.
func (f *fixture) run(ctx context.Context, cmd *repb.Command, inputs map[string]entry, timeout time.Duration) (*repb.ActionResult, error) {
	root := f.cas.putTree(f.t, inputs)
	ad, a := f.cas.putAction(f.t, cmd, root, timeout)
	return f.r.Run(ctx, ad, a)
}

// mustRun runs the action and fails the test unless it completes.
func (f *fixture) mustRun(cmd *repb.Command, inputs map[string]entry) *repb.ActionResult {
	f.t.Helper()
	res, err := f.run(context.Background(), cmd, inputs, 0)
	if err != nil {
		f.t.Fatalf("Run: %v", err)
	}
	return res
}

func (f *fixture) stdout(res *repb.ActionResult) string {
	return string(f.cas.get(f.t, res.GetStdoutDigest()))
}

func (f *fixture) stderr(res *repb.ActionResult) string {
	return string(f.cas.get(f.t, res.GetStderrDigest()))
}

func checkStatus(t *testing.T, err error, want *status.Status) {
	t.Helper()
	if got := status.Convert(err).Proto(); !proto.Equal(got, want.Proto()) {
		t.Fatalf("status:\n got %v\nwant %v", got, want.Proto())
	}
}

func TestRunExitCode(t *testing.T) {
	f := newFixture(t, nil)
	res := f.mustRun(shell("echo partial; exit 3"), nil)
	if res.GetExitCode() != 3 || f.stdout(res) != "partial\n" {
		t.Errorf("exit code %d, stdout %q", res.GetExitCode(), f.stdout(res))
	}
	res = f.mustRun(shell("kill -9 $$"), nil)
	if res.GetExitCode() != 137 {
		t.Errorf("killed command: exit code %d, want 137", res.GetExitCode())
	}
}

func TestRunEnvironmentExactlyAsGiven(t *testing.T) {
	t.Setenv("BUILDFLEET_SECRET", "hunter2")
	f := newFixture(t, nil)
	cmd := &repb.Command{
		Arguments: []string{"env"},
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{
			{Name: "PATH", Value: "/usr/bin:/bin"},
			{Name: "A", Value: "1 2"},
			{Name: "EMPTY", Value: ""},
		},
	}
	res := f.mustRun(cmd, nil)
	if got, want := f.stdout(res), "PATH=/usr/bin:/bin\nA=1 2\nEMPTY=\n"; got != want {
		t.Errorf("environment = %q, want %q", got, want)
	}
}

func TestRunArgv0Resolution(t *testing.T) {
	f := newFixture(t, nil)
	inputs := map[string]entry{
		"w/tool.sh":     {content: "#!/bin/sh\necho tool \"$@\"\n", exec: true},
		"w/bin/inpath":  {content: "#!/bin/sh\necho inpath\n", exec: true},
		"w/bin/notexec": {content: "#!/bin/sh\necho no\n"},
	}
	for _, tc := range []struct {
		name string
		argv []string
		path string
		want string
	}{
		{"relative to working directory", []string{"./tool.sh", "x"}, "", "tool x\n"},
		{"relative PATH entry", []string{"inpath"}, "bin:/bin", "inpath\n"},
		{"no PATH uses /bin:/usr/bin", []string{"echo", "hi"}, "-", "hi\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := &repb.Command{Arguments: tc.argv, WorkingDirectory: "w"}
			if tc.path != "-" && tc.path != "" {
				cmd.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: tc.path}}
			}
			res := f.mustRun(cmd, inputs)
			if got := f.stdout(res); got != tc.want {
				t.Errorf("stdout = %q, want %q", got, tc.want)
			}
		})
	}
	cmd := &repb.Command{Arguments: []string{"notexec"}, WorkingDirectory: "w",
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "bin"}}}
	_, err := f.run(context.Background(), cmd, inputs, 0)
	checkStatus(t, err, status.New(codes.InvalidArgument, `Failed to start command: "notexec" not found in PATH bin`))
}

// A script whose #! interpreter is missing fails with ENOENT as if the script were: the status
// names the interpreter.
func TestRunScriptWithMissingInterpreter(t *testing.T) {
	f := newFixture(t, nil)
	inputs := map[string]entry{"s.sh": {content: "#!/no/such/interpreter -e\necho hi\n", exec: true}}
	_, err := f.run(context.Background(), &repb.Command{Arguments: []string{"./s.sh"}}, inputs, 0)
	if st := status.Convert(err); st.Code() != codes.InvalidArgument ||
		!strings.HasPrefix(st.Message(), `Failed to start command "./s.sh": fork/exec `) ||
		!strings.HasSuffix(st.Message(), `: no such file or directory (the file exists: its #! interpreter "/no/such/interpreter" does not)`) {
		t.Fatalf("script with a missing interpreter: %v", err)
	}
}

func TestRunWorkingDirectory(t *testing.T) {
	f := newFixture(t, nil)
	cmd := shell(`pwd; cat in; echo o > out/o`, "out/o")
	cmd.WorkingDirectory = "sub/dir"
	res := f.mustRun(cmd, map[string]entry{"sub/dir/in": {content: "input\n"}})
	lines := strings.Split(f.stdout(res), "\n")
	if !strings.HasSuffix(lines[0], "/root/sub/dir") || !strings.HasPrefix(lines[0], f.cfg.CacheDir+"/actions/") {
		t.Errorf("pwd = %q", lines[0])
	}
	if lines[1] != "input" {
		t.Errorf("input = %q", lines[1])
	}
	if got := res.GetOutputFiles(); len(got) != 1 || got[0].GetPath() != "out/o" {
		t.Errorf("outputs = %v", got)
	}
}

// Command.working_directory "must be a directory which exists in the input tree": one that is
// absent, or a file, is refused with INVALID_ARGUMENT and the command never runs.
func TestRunWorkingDirectoryMustExistInTheInputTree(t *testing.T) {
	f := newFixture(t, nil)
	inputs := map[string]entry{"nope/file": {content: "x"}, "dir/sub/in": {content: "y"}}
	for _, tc := range []struct{ wd, what string }{
		{"nope/deeper", "absent"},
		{"nope/file", "a file"},
	} {
		cmd := shell(`pwd`)
		cmd.WorkingDirectory = tc.wd
		_, err := f.run(context.Background(), cmd, inputs, 0)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "must exist in the input tree") {
			t.Errorf("working directory %s (%q): %v, want INVALID_ARGUMENT", tc.what, tc.wd, err)
		}
	}
	cmd := shell(`pwd`)
	cmd.WorkingDirectory = "dir/sub"
	if res := f.mustRun(cmd, inputs); !strings.HasSuffix(f.stdout(res), "/root/dir/sub\n") {
		t.Errorf("existing working directory: stdout %q", f.stdout(res))
	}
}

func TestRunActionDirectoryRemoved(t *testing.T) {
	f := newFixture(t, nil)
	// A read-only directory left by the action does not prevent removal.
	f.mustRun(shell("mkdir -p ro/x && touch ro/x/f && chmod 555 ro/x ro"), map[string]entry{"in": {content: "i"}})
	des, err := os.ReadDir(filepath.Join(f.cfg.CacheDir, "actions"))
	if err != nil || len(des) != 0 {
		t.Errorf("action directories left: %v %v", des, err)
	}
}

func TestNewCleansStaleActionDirectories(t *testing.T) {
	f := newFixture(t, nil)
	f.r.Close()
	stale := filepath.Join(f.cfg.CacheDir, "actions", "a123", "root", "ro")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "f"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	os.Chmod(stale, 0o555)
	f.r = nil
	f.open()
	if _, err := os.Stat(filepath.Join(f.cfg.CacheDir, "actions", "a123")); !os.IsNotExist(err) {
		t.Errorf("stale action directory still there: %v", err)
	}
}

func TestNewRefusesACacheDirectoryInUse(t *testing.T) {
	f := newFixture(t, nil)
	_, err := runner.New(f.cfg, f.conn, f.clock, zerolog.Nop())
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "in use by another worker") {
		t.Errorf("second runner on one cache directory: %v", err)
	}
}

func TestRunMissingInputs(t *testing.T) {
	f := newFixture(t, nil)
	root := f.cas.putTree(t, map[string]entry{"a": {content: "present"}, "b": {content: "gone"}, "big": {content: strings.Repeat("g", 5<<20)}})
	gone := digest.FromBytes([]byte("gone"))
	big := digest.FromBytes([]byte(strings.Repeat("g", 5<<20)))
	f.cas.remove(gone)
	f.cas.remove(big)
	ad, a := f.cas.putAction(t, shell("true"), root, 0)
	_, err := f.r.Run(context.Background(), ad, a)
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition {
		t.Fatalf("status = %v", st)
	}
	var subjects []string
	for _, d := range st.Details() {
		for _, v := range d.(*errdetails.PreconditionFailure).GetViolations() {
			if v.GetType() != "MISSING" {
				t.Errorf("violation type %q", v.GetType())
			}
			subjects = append(subjects, v.GetSubject())
		}
	}
	if len(subjects) != 2 || !contains(subjects, gone.MissingSubject()) || !contains(subjects, big.MissingSubject()) {
		t.Errorf("violations = %v, want %s and %s", subjects, gone.MissingSubject(), big.MissingSubject())
	}

	// A missing Command is MISSING too, with the whole status as clients see it.
	cmdD := f.cas.putMessage(t, shell("echo never"))
	f.cas.remove(cmdD)
	a = &repb.Action{CommandDigest: cmdD.Proto(), InputRootDigest: root.Proto()}
	_, err = f.r.Run(context.Background(), digest.FromBytes([]byte("x")), a)
	want, _ := status.New(codes.FailedPrecondition, "Failed to fetch command "+cmdD.String()+": Blob "+cmdD.String()+" is missing from the CAS").
		WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{Type: "MISSING", Subject: cmdD.MissingSubject()}}})
	checkStatus(t, err, want)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestRunInvalidActions(t *testing.T) {
	f := newFixture(t, nil)
	canaryDir := t.TempDir()
	canary := filepath.Join(canaryDir, "canary")
	if err := os.WriteFile(canary, []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	touch := "echo pwned > " + canary + "; "
	for _, tc := range []struct {
		name   string
		cmd    *repb.Command
		inputs map[string]entry
		want   *status.Status
	}{
		{"output path with ..", shell(touch, "../x"), nil,
			status.New(codes.InvalidArgument, `Output path "../x" contains ".."`)},
		{"absolute output path", shell(touch, "/etc/passwd"), nil,
			status.New(codes.InvalidArgument, `Output path "/etc/passwd" is absolute`)},
		{"old-style output with ..", &repb.Command{Arguments: []string{"/bin/sh", "-c", touch}, OutputFiles: []string{"a/../../x"}}, nil,
			status.New(codes.InvalidArgument, `Output path "a/../../x" contains ".."`)},
		{"working directory escaping", &repb.Command{Arguments: []string{"/bin/sh", "-c", touch}, WorkingDirectory: "../.."}, nil,
			status.New(codes.InvalidArgument, `Working directory "../.." contains ".."`)},
		{"input named ..", shell(touch), map[string]entry{"../escape": {content: "x"}}, nil},
		{"output parent through an input symlink leading outside", shell(touch, "link/sub/f"),
			map[string]entry{"link": {symlink: canaryDir}},
			status.New(codes.InvalidArgument, `Input symlink "link" has an absolute target "`+canaryDir+`", which escapes the input root (the worker allows only relative targets inside it)`)},
		{"output through a symlink the action made", shell("rmdir out && ln -s "+canaryDir+" out", "out/canary"), nil,
			status.New(codes.InvalidArgument, `Failed to collect output "out/canary": Path "out" resolves outside the action directory`)},
		{"empty environment variable name", &repb.Command{Arguments: []string{"/bin/sh", "-c", touch},
			EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "", Value: "x"}}}, nil,
			status.New(codes.InvalidArgument, `Invalid environment variable ""`)},
		{"no arguments", &repb.Command{}, nil, status.New(codes.InvalidArgument, "Command has no arguments")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.name == "input named .." {
				// putTree cannot express this name; build the Directory by hand.
				file := f.cas.put([]byte("x"))
				root := f.cas.putMessage(t, &repb.Directory{Files: []*repb.FileNode{{Name: "..", Digest: file.Proto()}}})
				ad, a := f.cas.putAction(t, tc.cmd, root, 0)
				_, err = f.r.Run(context.Background(), ad, a)
				checkStatus(t, err, status.New(codes.InvalidArgument, "Invalid input directory "+root.String()+`: Invalid directory entry name ".."`))
				return
			}
			_, err = f.run(context.Background(), tc.cmd, tc.inputs, 0)
			checkStatus(t, err, tc.want)
		})
	}
	for _, name := range []string{"a/b", "", "."} {
		file := f.cas.put([]byte("x"))
		root := f.cas.putMessage(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: name, Digest: f.cas.putMessage(t, &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: file.Proto()}}}).Proto()}}})
		ad, a := f.cas.putAction(t, shell(touch), root, 0)
		_, err := f.r.Run(context.Background(), ad, a)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "Invalid directory entry name") {
			t.Errorf("entry %q: %v", name, err)
		}
	}
	if b, err := os.ReadFile(canary); err != nil || string(b) != "canary" {
		t.Errorf("canary = %q, %v", b, err)
	}
	if des, _ := os.ReadDir(canaryDir); len(des) != 1 {
		t.Errorf("files created outside the action directory: %v", des)
	}
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// waitDead waits for pid to die (SIGKILL is delivered asynchronously), failing the test if
// it still runs 5 s later. The wait is on a pidfd (pidfd_open and poll), woken by the exit
// itself, not by polling.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return // already gone
	}
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 5_000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll of the pidfd of %d: %v", pid, err)
		}
		if n == 0 {
			t.Errorf("process %d is still running", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return
	}
}
