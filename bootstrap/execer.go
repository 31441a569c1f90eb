package bootstrap

import "syscall"

// Execer replaces the current process with another program.
type Execer interface {
	// Exec runs path with argv (argv[0] included) and env in place of the current process; it
	// returns only on failure.
	Exec(path string, argv, env []string) error
}

// SyscallExecer replaces the process with syscall.Exec, keeping its pid, so that the worker
// is PID 1 in a container and receives the container runtime's SIGTERM directly.
type SyscallExecer struct{}

// Exec calls syscall.Exec.
func (SyscallExecer) Exec(path string, argv, env []string) error {
	return syscall.Exec(path, argv, env)
}
