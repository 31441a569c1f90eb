package bootstrap

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Command is one program the bootstrapper runs (a package manager, useradd, systemctl).
type Command struct {
	// Name is the program, looked up in PATH.
	Name string
	// Args are its arguments.
	Args []string
	// Env is added to the bootstrapper's own environment.
	Env []string
	// Stdout receives the program's standard output; the bootstrapper's stderr when nil.
	Stdout io.Writer
}

// String renders the command as a shell-like line for logs and dry runs.
func (c Command) String() string {
	parts := append([]string{}, c.Env...)
	parts = append(parts, c.Name)
	for _, a := range c.Args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"$\\*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// CommandRunner runs commands. Tests replace it to check the exact commands without running them.
type CommandRunner interface {
	// Run runs c to completion; a non-zero exit is an error.
	Run(ctx context.Context, c Command) error
}

// ExecRunner runs commands as child processes, their output going to Stderr.
type ExecRunner struct {
	// Stderr receives the commands' standard error (and standard output when Command.Stdout is
	// nil); os.Stderr when nil.
	Stderr io.Writer
}

// Run runs c.
func (r ExecRunner) Run(ctx context.Context, c Command) error {
	stderr := r.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout = c.Stdout
	if cmd.Stdout == nil {
		cmd.Stdout = stderr
	}
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", c, err)
	}
	return nil
}
