// Package version tells which buildfleet build is running: the release version, the commit it
// was built from, the build date and the Go version. Release builds (goreleaser, `make
// release`) set them with -ldflags -X; other builds fall back to what the Go toolchain records
// in the binary (debug.ReadBuildInfo: the module version for `go install …@vX` or a clean
// checkout of a tag, the VCS revision and commit time when built from a git checkout with
// -buildvcs). Any other build is "devel", and reports itself as "devel+COMMIT" (see Short).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// Set at link time by release builds, e.g.
// -X github.com/buildfleet/buildfleet/internal/version.version=1.2.3.
var (
	version string // release version without a leading "v", e.g. "1.2.3"
	commit  string // full commit hash
	date    string // commit time, RFC 3339
)

// Devel is the Version of a build that carries no release version.
const Devel = "devel"

// Info describes one build.
type Info struct {
	// Version is the release version ("1.2.3", "1.2.3-SNAPSHOT-abc1234"), or Devel.
	Version string
	// Commit is the git commit the binary was built from; empty when unknown.
	Commit string
	// Date is the commit (build) time as RFC 3339; empty when unknown.
	Date string
	// GoVersion is the Go toolchain that built the binary, e.g. "go1.26.8".
	GoVersion string
	// Platform is GOOS/GOARCH, e.g. "linux/amd64".
	Platform string
	// Modified reports a build from a checkout with uncommitted changes (from build info).
	Modified bool
}

// Get returns the running binary's Info: the link-time values where set, the Go build info
// otherwise.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(version, commit, date, bi)
}

// fromBuildInfo combines link-time values with build info (bi may be nil).
func fromBuildInfo(v, c, d string, bi *debug.BuildInfo) Info {
	info := Info{Version: strings.TrimPrefix(v, "v"), Commit: c, Date: d,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if info.Version == "" && isReleaseVersion(bi.Main.Version) {
			info.Version = strings.TrimPrefix(bi.Main.Version, "v")
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if info.Commit == "" {
					info.Commit = s.Value
				}
			case "vcs.time":
				if info.Date == "" {
					info.Date = s.Value
				}
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if info.Version == "" {
		info.Version = Devel
	}
	return info
}

// isReleaseVersion reports whether a module version from build info names a release: a
// semantic version such as "v1.2.3" (go install …@v1.2.3, or a clean checkout of a tag), not
// "(devel)", a pseudo-version ("v0.0.0-20261129080000-0123456789ab", which Go 1.24+ stamps on
// a checkout between tags) or a version with build metadata ("v1.2.3+dirty": local changes).
// Those builds are Devel, identified by their commit.
func isReleaseVersion(v string) bool {
	return semver.IsValid(v) && semver.Build(v) == "" && !module.IsPseudoVersion(v)
}

// Short is the version reported to other processes (a worker's BotSession.version): Version,
// and for a Devel build its commit's first 12 digits when known ("devel+0123456789ab").
func (i Info) Short() string {
	if i.Version != Devel || i.Commit == "" {
		return i.Version
	}
	c := i.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	if i.Modified {
		c += "-dirty"
	}
	return i.Version + "+" + c
}

// String is the --version line of program, e.g.
// "worker 1.2.3 (commit 0123abcd…, built 2026-11-29T08:00:00Z, go1.26.8 linux/amd64)".
func (i Info) String(program string) string {
	orUnknown := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	commit := orUnknown(i.Commit)
	if i.Modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("%s %s (commit %s, built %s, %s %s)", program, i.Version, commit, orUnknown(i.Date), i.GoVersion, i.Platform)
}
