package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sandbox is how actions are isolated from the worker's machine beyond their own directory,
// process group and (Config.RunAs) user.
type Sandbox int

const (
	// SandboxNone runs the command directly. A process of the action that leaves its process
	// group (setsid) survives the action; actions see the machine's processes and network.
	SandboxNone Sandbox = iota
	// SandboxNamespaces runs each action in new Linux mount, PID, IPC and UTS namespaces,
	// under a small init process (the worker binary itself) that mounts a private /proc,
	// hides the worker's file cache behind an empty read-only tmpfs, starts the command and
	// reaps orphans. When the init ends, the kernel kills every process left in the PID
	// namespace, so nothing survives an action. Actions whose platform asks for network=off
	// (or dockerNetwork=off) also get a new network namespace holding only a loopback
	// interface. It needs a worker running as root (CAP_SYS_ADMIN); New fails otherwise.
	SandboxNamespaces
)

// ParseSandbox parses the --sandbox flag: "none" or "namespaces".
func ParseSandbox(s string) (Sandbox, error) {
	switch s {
	case "none", "":
		return SandboxNone, nil
	case "namespaces":
		return SandboxNamespaces, nil
	}
	return SandboxNone, fmt.Errorf("invalid sandbox %q: want none or namespaces", s)
}

// String returns the flag value of s.
func (s Sandbox) String() string {
	if s == SandboxNamespaces {
		return "namespaces"
	}
	return "none"
}

// NetworkOffProperties are the platform properties by which an action asks to run without
// network access: network=off, or dockerNetwork=off as BuildGrid and Buildbarn users send. A
// worker with SandboxNamespaces honours them and should advertise them.
var NetworkOffProperties = []string{"network=off", "dockerNetwork=off"}

// wantsNetworkOff reports whether the action's platform (Action.platform, else the deprecated
// Command.platform) asks for no network.
func wantsNetworkOff(action *repb.Action, cmd *repb.Command) bool {
	p := action.GetPlatform()
	if len(p.GetProperties()) == 0 {
		p = cmd.GetPlatform()
	}
	for _, prop := range p.GetProperties() {
		switch prop.GetName() {
		case "network", "dockerNetwork":
			v := strings.ToLower(prop.GetValue())
			if v == "off" || v == "none" {
				return true
			}
		}
	}
	return false
}

// isolation is how one process is confined.
type isolation struct {
	user       *User    // Run as this user; nil: as the worker's own.
	namespaces bool     // Under the sandbox init, in new namespaces.
	networkOff bool     // Also in a new network namespace (needs namespaces).
	hide       []string // Directories hidden behind an empty tmpfs (needs namespaces).
}

// startSandboxed starts the command at path under the sandbox init, in new namespaces.
func (p *process) startSandboxed(path string, stdout, stderr *os.File) (*exec.Cmd, error) {
	cmd, errno, msg, err := startSandboxInit(sandboxConfig{
		Path:       path,
		Argv:       p.argv,
		Env:        p.env,
		Dir:        p.dir,
		User:       p.iso.user,
		NetworkOff: p.iso.networkOff,
		Hide:       p.iso.hide,
	}, stdout, stderr)
	if err != nil {
		return nil, err
	}
	if msg != "" {
		if strings.HasPrefix(msg, "fork/exec ") {
			return nil, startError(p.argv[0], errno, msg)
		}
		return nil, status.Errorf(codes.Internal, "Failed to set up the action's sandbox: %s", msg)
	}
	return cmd, nil
}

// startSandboxInit re-executes the worker binary as the sandbox init with cfg, in new mount,
// PID, IPC and UTS namespaces (and network, for cfg.NetworkOff), in its own process group.
// It returns once the init has started the command (the running init) or failed (errno and
// message of its failure, the init reaped).
func startSandboxInit(cfg sandboxConfig, stdout, stderr *os.File) (*exec.Cmd, syscall.Errno, string, error) {
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, 0, "", status.Errorf(codes.Internal, "Failed to start the action's sandbox: %v", err)
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, 0, "", status.Errorf(codes.Internal, "Failed to start the action's sandbox: %v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		cfgW.Close()
		return nil, 0, "", status.Errorf(codes.Internal, "Failed to start the action's sandbox: %v", err)
	}
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS)
	if cfg.NetworkOff {
		flags |= syscall.CLONE_NEWNET
	}
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{sandboxInitArg0},
		Env:        []string{}, // The command's environment travels in cfg, untouched by the init.
		Dir:        "/",
		Stdout:     stdout,
		Stderr:     stderr,
		ExtraFiles: []*os.File{cfgR, errW},
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:    true,
			Pdeathsig:  syscall.SIGKILL,
			Cloneflags: flags,
		},
	}
	err = cmd.Start()
	cfgR.Close()
	errW.Close()
	if err != nil {
		cfgW.Close()
		errR.Close()
		return nil, 0, "", status.Errorf(codes.Internal, "Failed to start the action's sandbox (Linux namespaces): %v", err)
	}
	go func() {
		_, _ = cfgW.Write(data) // An init that died early is reported through errR.
		cfgW.Close()
	}()
	failure, _ := io.ReadAll(errR)
	errR.Close()
	if len(failure) > 0 {
		_ = cmd.Wait()
		errno, msg := parseSandboxFailure(string(failure))
		return nil, errno, msg, nil
	}
	return cmd, 0, "", nil
}

// probeSandbox sets up a complete sandbox (network off, cache hidden) once, without running
// anything, and reports why it cannot be done.
func probeSandbox(hide []string) error {
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devNull.Close()
	cmd, _, msg, err := startSandboxInit(sandboxConfig{NetworkOff: true, Hide: hide, Probe: true}, devNull, devNull)
	if err != nil {
		return err
	}
	if msg != "" {
		return errors.New(msg)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("the sandbox init failed: %v", err)
	}
	return nil
}
