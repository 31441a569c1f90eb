package bootstrap

import (
	"fmt"
	"io"

	"github.com/rs/zerolog"
)

// StepLog runs the bootstrapper's steps, or with DryRun only prints them. Every step that
// changes the machine goes through Do, so a dry run shows everything a real run would do.
type StepLog struct {
	// Out receives the dry-run plan, one "dry-run: …" line per step.
	Out io.Writer
	// DryRun prints steps instead of running them.
	DryRun bool
	// Logger records each step that is run.
	Logger zerolog.Logger
}

// Do runs fn as the step described by desc, or prints desc on a dry run.
func (s *StepLog) Do(desc string, fn func() error) error {
	if s.DryRun {
		if s.Out != nil {
			fmt.Fprintf(s.Out, "dry-run: %s\n", desc)
		}
		return nil
	}
	s.Logger.Info().Str("step", desc).Msg("bootstrap step")
	return fn()
}

// Note prints or logs a fact that involves no change (a file already up to date).
func (s *StepLog) Note(desc string) {
	if s.DryRun {
		if s.Out != nil {
			fmt.Fprintf(s.Out, "dry-run: %s\n", desc)
		}
		return
	}
	s.Logger.Info().Str("note", desc).Msg("bootstrap")
}
