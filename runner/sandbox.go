package runner

import (
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
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
