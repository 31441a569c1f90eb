package bootstrap

import (
	"bytes"
	"context"
	"fmt"
	"strings"
)

// DefaultPackagesKeyword stands, in a --packages list, for the package manager's default list.
const DefaultPackagesKeyword = "default"

// DefaultPackages are what Pants and Bazel actions expect on a worker, by package manager:
//   - python3 (plus python3-venv on Debian, where venv and ensurepip are split out): Pants finds
//     its interpreter through python_bootstrap_search_path (<PATH> by default) and pex builds
//     virtual environments with it;
//   - bash, coreutils, findutils, grep, sed, gawk, diffutils: genrules, shell_command and
//     adhoc_tool run `bash -c` scripts using them, and Pants' append-only-caches wrapper needs
//     /bin/sh, mkdir and ln;
//   - tar, gzip, unzip, zip: archive rules and tools unpacked by actions;
//   - ca-certificates: actions that fetch over TLS.
//
// The worker itself is a static Go binary and needs no shared library. On dnf/yum systems
// coreutils is left out: minimal images ship coreutils-single, which conflicts with it and
// provides the same commands.
var DefaultPackages = map[string][]string{
	"apt-get": {"python3", "python3-venv", "bash", "coreutils", "findutils", "grep", "sed", "gawk",
		"diffutils", "tar", "gzip", "unzip", "zip", "ca-certificates"},
	"dnf": {"python3", "bash", "findutils", "grep", "sed", "gawk", "diffutils", "tar", "gzip", "unzip",
		"zip", "ca-certificates"},
	"yum": {"python3", "bash", "findutils", "grep", "sed", "gawk", "diffutils", "tar", "gzip", "unzip",
		"zip", "ca-certificates"},
}

// PackageManagers are detected in this order.
var PackageManagers = []string{"apt-get", "dnf", "yum"}

// PackageInstaller installs OS packages with whichever of apt-get, dnf and yum the machine has,
// skipping packages that are already installed so that a re-run changes nothing.
type PackageInstaller struct {
	// Runner runs the package manager and the installed-check queries.
	Runner CommandRunner
	// LookPath finds programs (exec.LookPath in production).
	LookPath func(string) (string, error)
	// Steps runs or prints each step.
	Steps *StepLog
}

// Detect returns the first package manager found in PATH.
func (p *PackageInstaller) Detect() (string, error) {
	for _, m := range PackageManagers {
		if _, err := p.LookPath(m); err == nil {
			return m, nil
		}
	}
	return "", fmt.Errorf("no supported package manager (%s) found; install the packages yourself and pass --packages=none",
		strings.Join(PackageManagers, ", "))
}

// Resolve expands the "default" keyword in requested for manager and removes duplicates.
func Resolve(manager string, requested []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range requested {
		names := []string{r}
		if r == DefaultPackagesKeyword {
			names = DefaultPackages[manager]
		}
		for _, n := range names {
			if n != "" && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// Install installs the requested packages ("default" expands to DefaultPackages) that are not
// installed yet. An empty list does nothing and needs no package manager.
func (p *PackageInstaller) Install(ctx context.Context, requested []string) error {
	if len(requested) == 0 {
		return nil
	}
	manager, err := p.Detect()
	if err != nil {
		return err
	}
	pkgs := Resolve(manager, requested)
	var missing []string
	if p.Steps.DryRun {
		missing = pkgs // A dry run runs nothing, not even queries.
	} else {
		for _, pkg := range pkgs {
			if !p.installed(ctx, manager, pkg) {
				missing = append(missing, pkg)
			}
		}
	}
	if len(missing) == 0 {
		p.Steps.Note(fmt.Sprintf("packages already installed: %s", strings.Join(pkgs, " ")))
		return nil
	}
	for _, c := range InstallCommands(manager, missing) {
		if err := p.Steps.Do("run "+c.String(), func() error { return p.Runner.Run(ctx, c) }); err != nil {
			return fmt.Errorf("installing packages: %w", err)
		}
	}
	return nil
}

// installed asks dpkg or rpm whether pkg is installed.
func (p *PackageInstaller) installed(ctx context.Context, manager, pkg string) bool {
	if manager == "apt-get" {
		var out bytes.Buffer
		err := p.Runner.Run(ctx, Command{Name: "dpkg-query", Args: []string{"--show", "--showformat=${db:Status-Status}", pkg}, Stdout: &out})
		return err == nil && strings.TrimSpace(out.String()) == "installed"
	}
	return p.Runner.Run(ctx, Command{Name: "rpm", Args: []string{"--query", "--quiet", pkg}}) == nil
}

// InstallCommands returns the commands that install pkgs with manager, non-interactively.
// apt-get waits up to ten minutes for the dpkg lock, which cloud-init and unattended-upgrades
// often hold at boot.
func InstallCommands(manager string, pkgs []string) []Command {
	switch manager {
	case "apt-get":
		env := []string{"DEBIAN_FRONTEND=noninteractive"}
		lock := []string{"-o", "DPkg::Lock::Timeout=600"}
		return []Command{
			{Name: "apt-get", Args: append(append([]string{}, lock...), "update", "-q"), Env: env},
			{Name: "apt-get", Args: append(append(append([]string{}, lock...), "install", "-y", "-q", "--no-install-recommends"), pkgs...), Env: env},
		}
	case "dnf":
		return []Command{{Name: "dnf", Args: append([]string{"install", "-y", "-q", "--setopt=install_weak_deps=False"}, pkgs...)}}
	default:
		return []Command{{Name: manager, Args: append([]string{"install", "-y", "-q"}, pkgs...)}}
	}
}
