package bootstrap

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"sort"
	"strings"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// Dependencies are the bootstrapper's connections to the machine, replaced in tests.
type Dependencies struct {
	// Source fetches the worker binary.
	Source Source
	// Runner runs package managers, useradd and systemctl.
	Runner CommandRunner
	// Execer replaces the process with the worker for --exec.
	Execer Execer
	// LookPath finds programs.
	LookPath func(string) (string, error)
	// LookupUser finds accounts.
	LookupUser func(string) (*user.User, error)
	// Chown changes ownership of the directories and files it creates.
	Chown func(path string, uid, gid int) error
	// Environ returns the environment passed to the worker with --exec.
	Environ func() []string
	// Clock times the retry backoff.
	Clock clock.Clock
	// Out receives the dry-run plan.
	Out io.Writer
}

// SystemDependencies returns the production Dependencies: real downloads (https, s3, gs; the
// http ones time out after config's DownloadTimeout and follow redirects under its
// AllowInsecureHTTP policy), real commands, syscall.Exec and the system clock.
func SystemDependencies(config Config, userAgent string) Dependencies {
	config = config.WithDefaults()
	return Dependencies{
		Source: &SchemeSource{
			HTTP: &HTTPSource{UserAgent: userAgent, Timeout: config.DownloadTimeout,
				AllowInsecureHTTP: config.AllowInsecureHTTP},
			NewS3:  NewS3Source,
			NewGCS: NewGCSSource,
		},
		Runner:     ExecRunner{},
		Execer:     SyscallExecer{},
		LookPath:   exec.LookPath,
		LookupUser: user.Lookup,
		Chown:      os.Lchown,
		Environ:    os.Environ,
		Clock:      clock.System,
		Out:        os.Stdout,
	}
}

// Bootstrapper runs the steps: OS packages, worker binary, then the systemd service or exec.
type Bootstrapper struct {
	config Config
	deps   Dependencies
	steps  *StepLog
	logger zerolog.Logger
}

// New returns a Bootstrapper for config (defaults applied) after validating it.
func New(config Config, deps Dependencies, logger zerolog.Logger) (*Bootstrapper, error) {
	config = config.WithDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	return &Bootstrapper{
		config: config,
		deps:   deps,
		steps:  &StepLog{Out: deps.Out, DryRun: config.DryRun, Logger: logger},
		logger: logger,
	}, nil
}

// Run performs every step. With Exec it does not return on success: the process becomes the
// worker.
func (b *Bootstrapper) Run(ctx context.Context) error {
	c := b.config
	packages := &PackageInstaller{Runner: b.deps.Runner, LookPath: b.deps.LookPath, Steps: b.steps}
	if err := packages.Install(ctx, c.Packages); err != nil {
		return err
	}
	workerURL, workerSHA256, err := b.workerSource(ctx)
	if err != nil {
		return err
	}
	binary := &BinaryInstaller{Source: b.deps.Source, Clock: b.deps.Clock, Retry: c.Retry, Steps: b.steps}
	changed, err := binary.Install(ctx, workerURL, c.AllowInsecureHTTP, workerSHA256, c.InstallPath)
	if err != nil {
		return err
	}
	switch {
	case c.Exec:
		return b.exec()
	case c.NoSystemd:
		b.steps.Note("--no-systemd: not writing or starting a service")
		return nil
	}
	service := &ServiceInstaller{Runner: b.deps.Runner, LookupUser: b.deps.LookupUser, Steps: b.steps, Chown: b.deps.Chown}
	return service.Install(ctx, c, changed)
}

// workerSource returns the worker's URL and expected sha256: --worker-url and --worker-sha256,
// or the release's worker for this architecture as its pinned SHA256SUMS lists it (which must
// then agree with --worker-sha256 when that is given too).
func (b *Bootstrapper) workerSource(ctx context.Context) (string, string, error) {
	c := b.config
	if c.ReleaseURL == "" {
		return c.WorkerURL, c.WorkerSHA256, nil
	}
	r := &ReleaseResolver{Source: b.deps.Source, Clock: b.deps.Clock, Retry: c.Retry, Steps: b.steps}
	u, sum, err := r.Resolve(ctx, c.ReleaseURL, c.ReleaseVersion, c.ReleaseSHA256SUMSSHA256, c.Arch, c.AllowInsecureHTTP)
	if err != nil {
		return "", "", err
	}
	if c.WorkerSHA256 != "" && !strings.EqualFold(c.WorkerSHA256, sum) {
		return "", "", fmt.Errorf("release %s lists sha256 %s for %s but --worker-sha256 is %s; nothing installed",
			c.ReleaseVersion, sum, ReleaseAssetName("worker", c.Arch), strings.ToLower(c.WorkerSHA256))
	}
	return u, sum, nil
}

// exec replaces the process with the worker, its BUILDFLEET_* settings added to the environment.
func (b *Bootstrapper) exec() error {
	c := b.config
	argv := append([]string{c.InstallPath}, c.WorkerArgs...)
	settings := c.WorkerSettings()
	env := mergeEnv(b.deps.Environ(), settings)
	names := make([]string, 0, len(settings))
	for k, v := range settings {
		names = append(names, k+"="+v)
	}
	sort.Strings(names)
	desc := fmt.Sprintf("exec %s with environment %s", Command{Name: c.InstallPath, Args: c.WorkerArgs}, strings.Join(names, " "))
	return b.steps.Do(desc, func() error {
		if err := b.deps.Execer.Exec(c.InstallPath, argv, env); err != nil {
			return fmt.Errorf("exec %s: %w", c.InstallPath, err)
		}
		return nil
	})
}

// mergeEnv returns env with the variables in set replacing any of the same name.
func mergeEnv(env []string, set map[string]string) []string {
	out := make([]string, 0, len(env)+len(set))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if _, ok := set[name]; !ok {
			out = append(out, kv)
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+set[k])
	}
	return out
}
