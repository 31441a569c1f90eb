// Command bootstrap installs a buildfleet worker from cloud user-data or a container
// entrypoint: it downloads the worker, verifies its sha256, installs OS packages, and starts the
// worker as a systemd service or replaces itself with it (--exec). See bootstrap/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/bootstrap"
	"github.com/buildfleet/buildfleet/internal/logformat"
	"github.com/buildfleet/buildfleet/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run wires the flags to a Bootstrapper and returns the exit code: 0 on success, 2 for a bad
// command line, 1 for any failure.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	config, logFormat, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errShowVersion) {
		fmt.Fprintln(stdout, version.Get().String("bootstrap"))
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap: %v\n", err)
		return 2
	}
	logOut, err := logformat.Writer(stderr, logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap: %v\n", err)
		return 2
	}
	logger := zerolog.New(logOut).With().Timestamp().Str("service", "bootstrap").Logger()
	deps := bootstrap.SystemDependencies(config, "buildfleet-bootstrap")
	deps.Out = stdout
	b, err := bootstrap.New(config, deps, logger)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := b.Run(ctx); err != nil {
		logger.Error().Err(err).Msg("bootstrap failed")
		fmt.Fprintf(stderr, "bootstrap: %v\n", err)
		return 1
	}
	return 0
}
