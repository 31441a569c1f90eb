package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// defaultSearchPath is the PATH used to find argv[0] when the action's environment has none,
// as execvp does.
const defaultSearchPath = "/bin:/usr/bin"

// process is one command run in its own process group with exactly the environment it was
// given, its output going to files.
type process struct {
	argv    []string
	env     []string
	dir     string // Absolute working directory.
	stdout  string
	stderr  string
	timeout time.Duration // Zero: none.
	clock   clock.Clock
	iso     isolation
}

// processResult is how a process ended.
type processResult struct {
	exitCode int32
	timedOut bool
	// stdoutEmpty and stderrEmpty say the log was found empty once the process group was
	// killed, so that it need not be opened and read again.
	stdoutEmpty bool
	stderrEmpty bool
}

// newProcess validates the command line and environment of cmd.
func newProcess(cmd *repb.Command, dir, stdout, stderr string, timeout time.Duration, clk clock.Clock, iso isolation) (*process, error) {
	if len(cmd.GetArguments()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "Command has no arguments")
	}
	for _, a := range cmd.GetArguments() {
		if strings.ContainsRune(a, 0) {
			return nil, status.Errorf(codes.InvalidArgument, "Command argument %q contains a NUL byte", a)
		}
	}
	env := make([]string, 0, len(cmd.GetEnvironmentVariables()))
	seen := make(map[string]bool)
	for _, v := range cmd.GetEnvironmentVariables() {
		if v.GetName() == "" || strings.ContainsAny(v.GetName(), "=\x00") || strings.ContainsRune(v.GetValue(), 0) {
			return nil, status.Errorf(codes.InvalidArgument, "Invalid environment variable %q", v.GetName())
		}
		if seen[v.GetName()] {
			return nil, status.Errorf(codes.InvalidArgument, "Environment variable %q is set twice", v.GetName())
		}
		seen[v.GetName()] = true
		env = append(env, v.GetName()+"="+v.GetValue())
	}
	return &process{argv: cmd.GetArguments(), env: env, dir: dir, stdout: stdout, stderr: stderr, timeout: timeout, clock: clk, iso: iso}, nil
}

// lookPath resolves argv[0]: relative to the working directory when it contains a slash,
// otherwise through the PATH of the action's own environment.
func (p *process) lookPath() (string, error) {
	name := p.argv[0]
	if strings.Contains(name, "/") {
		if filepath.IsAbs(name) {
			return name, nil
		}
		return filepath.Join(p.dir, name), nil
	}
	search, found := defaultSearchPath, false
	for _, e := range p.env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			search, found = v, true
		}
	}
	for _, d := range filepath.SplitList(search) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(p.dir, d)
		}
		c := filepath.Join(d, name)
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return c, nil
		}
	}
	if !found {
		search += " (the action's environment sets no PATH)"
	}
	return "", status.Errorf(codes.InvalidArgument, "Failed to start command: %q not found in PATH %s", name, search)
}

// start starts the command at path, directly or under the sandbox init.
func (p *process) start(path string, stdout, stderr *os.File) (*exec.Cmd, error) {
	if p.iso.namespaces {
		return p.startSandboxed(path, stdout, stderr)
	}
	cmd := &exec.Cmd{
		Path:   path,
		Args:   p.argv,
		Env:    p.env, // Never nil: nothing is inherited from the worker.
		Dir:    p.dir,
		Stdout: stdout,
		Stderr: stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if u := p.iso.user; u != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{}}
	}
	if err := cmd.Start(); err != nil {
		var errno syscall.Errno
		errors.As(err, &errno)
		msg := err.Error()
		if errno == syscall.ENOENT {
			msg += missingInterpreter(path)
		}
		return nil, startError(p.argv[0], errno, msg)
	}
	return cmd, nil
}

// missingInterpreter explains an ENOENT from exec of a file that exists: the kernel reports the
// missing interpreter of a script (its #! line) as the script itself missing. It returns "" when
// path does not exist or is not a script.
func missingInterpreter(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var head [256]byte
	n, _ := f.Read(head[:])
	line, ok := strings.CutPrefix(string(head[:n]), "#!")
	if !ok {
		return ""
	}
	line, _, _ = strings.Cut(line, "\n")
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return " (the file exists, but its #! line names no interpreter)"
	}
	return fmt.Sprintf(" (the file exists: its #! interpreter %q does not)", fields[0])
}

// startError is the status of a command that could not be started: INVALID_ARGUMENT when the
// action is at fault (no such file, not executable, arguments and environment too long: it
// would fail the same way on every worker, so it is reported once and not retried), INTERNAL
// otherwise.
func startError(argv0 string, errno syscall.Errno, msg string) error {
	switch errno {
	case syscall.E2BIG:
		return status.Errorf(codes.InvalidArgument, "Failed to start command %q: its arguments and environment are too long for the kernel (E2BIG: a single argument may hold at most 128 KiB, all of them together about a quarter of the stack limit): %s", argv0, msg)
	case syscall.ENOENT, syscall.EACCES, syscall.ENOEXEC, syscall.ENOTDIR, syscall.EISDIR, syscall.ENAMETOOLONG, syscall.ELOOP:
		return status.Errorf(codes.InvalidArgument, "Failed to start command %q: %s", argv0, msg)
	}
	return status.Errorf(codes.Internal, "Failed to start command %q: %s", argv0, msg)
}

// run starts the process and waits for it to exit, for its timeout, or for ctx to end; in the
// latter two cases its whole process group is killed. Processes it left behind in its group
// are killed in every case. The error is INVALID_ARGUMENT when the command cannot be started,
// and the context's status when ctx ended.
func (p *process) run(ctx context.Context) (processResult, error) {
	path, err := p.lookPath()
	if err != nil {
		return processResult{}, err
	}
	stdout, err := os.OpenFile(p.stdout, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return processResult{}, status.Errorf(codes.Internal, "Failed to create stdout file: %v", err)
	}
	defer stdout.Close()
	stderr, err := os.OpenFile(p.stderr, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return processResult{}, status.Errorf(codes.Internal, "Failed to create stderr file: %v", err)
	}
	defer stderr.Close()
	cmd, err := p.start(path, stdout, stderr)
	if err != nil {
		return processResult{}, err
	}
	pgid := cmd.Process.Pid
	killGroup := func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }
	defer killGroup() // Leftover background processes die with the action.

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var expired <-chan time.Time
	if p.timeout > 0 {
		t, c := p.clock.NewTimer(p.timeout)
		defer t.Stop()
		expired = c
	}
	var res processResult
	select {
	case <-done:
	case <-expired:
		killGroup()
		<-done
		res.timedOut = true
	case <-ctx.Done():
		killGroup()
		<-done
		return processResult{}, status.FromContextError(ctx.Err()).Err()
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ws.Exited():
		res.exitCode = int32(ws.ExitStatus())
	case ws.Signaled():
		res.exitCode = 128 + int32(ws.Signal())
	default:
		res.exitCode = -1
	}
	killGroup()
	res.stdoutEmpty, res.stderrEmpty = isEmpty(stdout), isEmpty(stderr)
	return res, nil
}

// isEmpty reports whether f is known to be empty.
func isEmpty(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Size() == 0
}
