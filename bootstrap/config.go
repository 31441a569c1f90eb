// Package bootstrap installs a buildfleet worker on a machine from its user-data or a
// container entrypoint: it downloads the worker binary over https, s3 or gs with retries,
// verifies its sha256 while streaming, installs it atomically, installs the OS packages actions
// need, writes and starts a systemd unit, or replaces itself with the worker.
package bootstrap

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Defaults used by cmd/bootstrap and by Config.withDefaults.
const (
	DefaultInstallPath              = "/usr/local/bin/worker"
	DefaultSystemdDir               = "/etc/systemd/system"
	DefaultServiceName              = "buildfleet-worker"
	DefaultEnvironmentFile          = "/etc/buildfleet/worker.env"
	DefaultUser                     = "buildfleet"
	DefaultCacheDirectory           = "/var/cache/buildfleet-worker"
	DefaultAppendOnlyCachesBasePath = "/toolchain/caches"
	DefaultDrainTimeout             = 100 * time.Second
	// StopTimeoutMargin is how much longer than the drain timeout systemd waits after
	// SIGTERM before it sends SIGKILL: time to report results and exit after the drain.
	StopTimeoutMargin = 30 * time.Second
)

// Config is everything the bootstrapper does, as given on its command line.
type Config struct {
	// WorkerURL is where the worker binary is fetched from: https://, s3:// or gs://
	// (http:// only for loopback hosts or with AllowInsecureHTTP).
	WorkerURL string
	// WorkerSHA256 is the expected lowercase hex sha256 of the worker binary. Required with
	// WorkerURL; with a release it is optional and, when given, must agree with SHA256SUMS.
	WorkerSHA256 string
	// ReleaseURL is the base URL of buildfleet releases (https://, s3:// or gs://): release
	// VERSION's files are under ReleaseURL/VERSION/. Used instead of WorkerURL.
	ReleaseURL string
	// ReleaseVersion is the release installed from ReleaseURL, e.g. "v1.2.3".
	ReleaseVersion string
	// ReleaseSHA256SUMSSHA256 pins the release: the sha256 of its SHA256SUMS file, which lists
	// the sha256 of the worker of every architecture.
	ReleaseSHA256SUMSSHA256 string
	// Arch is the GOARCH whose worker is installed from a release; runtime.GOARCH when empty.
	Arch string
	// AllowInsecureHTTP permits http:// URLs to non-loopback hosts.
	AllowInsecureHTTP bool
	// InstallPath is where the worker binary is installed (mode 0755).
	InstallPath string
	// Packages are the OS packages to install; nil means none.
	Packages []string
	// Exec replaces the bootstrapper with the installed worker instead of starting a service.
	Exec bool
	// WorkerArgs are passed to the worker (after "--" on the bootstrapper's command line).
	WorkerArgs []string
	// NoSystemd skips writing and starting the systemd unit.
	NoSystemd bool
	// DryRun prints every step without doing it.
	DryRun bool
	// SystemdDir is where the unit file is written.
	SystemdDir string
	// ServiceName is the unit's name without ".service".
	ServiceName string
	// EnvironmentFile holds the worker's BUILDFLEET_* settings, read by the unit.
	EnvironmentFile string
	// User runs the worker (and so its actions). Empty or "root" runs it as root.
	User string
	// CreateUser creates User as a system account when it does not exist.
	CreateUser bool
	// Scheduler is the worker's --scheduler address, grpc://HOST:PORT or grpcs://HOST:PORT.
	Scheduler string
	// AuthTokenFile is the file holding the worker's bearer token, if any.
	AuthTokenFile string
	// DrainTimeout is the worker's --drain-timeout; the unit's TimeoutStopSec exceeds it.
	// Zero means DefaultDrainTimeout for the unit, and the worker's own default with --exec.
	DrainTimeout time.Duration
	// CacheDirectory is the worker's --cache-directory.
	CacheDirectory string
	// AppendOnlyCachesBasePath is the worker's --append-only-caches-base-path.
	AppendOnlyCachesBasePath string
	// Cloud is the worker's --cloud (auto, aws, gcp, azure, none); empty leaves the worker's default.
	Cloud string
	// Retry controls how downloads are retried.
	Retry RetryPolicy
	// DownloadTimeout fails an http(s) download attempt that makes no progress for this long
	// (connecting, waiting for the response headers, or between bytes of the body), so that
	// Retry applies to a server that accepts and never answers. DefaultDownloadTimeout when zero.
	DownloadTimeout time.Duration
}

// WithDefaults returns c with the bootstrapper's own empty paths and names set to their
// defaults. The worker's settings (CacheDirectory, AppendOnlyCachesBasePath, DrainTimeout) stay
// empty when not given, so that --exec does not override a container's own BUILDFLEET_*
// variables; the systemd unit always spells them out (see ServiceSettings).
func (c Config) WithDefaults() Config {
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	set(&c.InstallPath, DefaultInstallPath)
	set(&c.SystemdDir, DefaultSystemdDir)
	set(&c.ServiceName, DefaultServiceName)
	set(&c.EnvironmentFile, DefaultEnvironmentFile)
	set(&c.Arch, runtime.GOARCH)
	if c.DownloadTimeout == 0 {
		c.DownloadTimeout = DefaultDownloadTimeout
	}
	c.Retry = c.Retry.withDefaults()
	return c
}

// Validate reports the first problem with c. A missing checksum is not reported here: the
// download goes ahead so that the error can name the actual digest, and nothing is installed.
func (c Config) Validate() error {
	if err := c.validateSource(); err != nil {
		return err
	}
	if c.DownloadTimeout < 0 {
		return fmt.Errorf("--download-timeout %s must not be negative", c.DownloadTimeout)
	}
	if !filepath.IsAbs(c.InstallPath) {
		return fmt.Errorf("--install-path %q must be absolute", c.InstallPath)
	}
	if !c.Exec && !c.NoSystemd {
		if c.Scheduler == "" {
			return fmt.Errorf("--scheduler is required to write the systemd unit (or pass --no-systemd)")
		}
		if strings.ContainsAny(c.ServiceName, "/ \t\n") {
			return fmt.Errorf("--service-name %q must be a plain unit name", c.ServiceName)
		}
	}
	if c.Scheduler != "" {
		u, err := url.Parse(c.Scheduler)
		if err != nil || (u.Scheme != "grpc" && u.Scheme != "grpcs") || u.Host == "" {
			return fmt.Errorf("--scheduler %q must look like grpc://HOST:PORT or grpcs://HOST:PORT", c.Scheduler)
		}
	}
	for _, v := range []struct{ name, value string }{
		{"--scheduler", c.Scheduler}, {"--auth-token-file", c.AuthTokenFile},
		{"--cache-directory", c.CacheDirectory}, {"--append-only-caches-base-path", c.AppendOnlyCachesBasePath},
		{"--cloud", c.Cloud},
	} {
		if strings.ContainsAny(v.value, "\n\r\x00") {
			return fmt.Errorf("%s must not contain newlines", v.name)
		}
	}
	return nil
}

// validateSource checks where the worker comes from: --worker-url, or a release given by
// --release-url and --release-version.
func (c Config) validateSource() error {
	isSHA256 := func(flag, v string) error {
		if b, err := hex.DecodeString(v); v != "" && (err != nil || len(b) != 32) {
			return fmt.Errorf("%s %q is not a sha256 (64 hex digits)", flag, v)
		}
		return nil
	}
	if err := isSHA256("--worker-sha256", c.WorkerSHA256); err != nil {
		return err
	}
	if c.ReleaseURL == "" && c.ReleaseVersion == "" && c.ReleaseSHA256SUMSSHA256 == "" {
		if c.WorkerURL == "" {
			return fmt.Errorf("--worker-url, or --release-url with --release-version, is required")
		}
		_, err := ParseWorkerURL(c.WorkerURL, c.AllowInsecureHTTP)
		return err
	}
	switch {
	case c.WorkerURL != "":
		return fmt.Errorf("--worker-url and --release-url/--release-version are alternatives; give one")
	case c.ReleaseURL == "" || c.ReleaseVersion == "":
		return fmt.Errorf("a release needs both --release-url and --release-version")
	case !ValidReleaseVersion(c.ReleaseVersion):
		return fmt.Errorf("--release-version %q: want letters, digits, '.', '_', '+' or '-' (e.g. v1.2.3)", c.ReleaseVersion)
	}
	if _, err := ParseReleaseURL(c.ReleaseURL, c.AllowInsecureHTTP); err != nil {
		return err
	}
	return isSHA256("--release-sha256sums-sha256", c.ReleaseSHA256SUMSSHA256)
}

// ParseWorkerURL parses a worker URL and checks its scheme: https, s3 and gs are accepted;
// http only for a loopback host (tests, local mirrors) or when allowInsecure is set.
func ParseWorkerURL(raw string, allowInsecure bool) (*url.URL, error) {
	return parseDownloadURL("--worker-url", raw, allowInsecure)
}

// ParseReleaseURL checks a URL under --release-url as ParseWorkerURL checks a worker URL, and
// refuses a query or fragment: the release's file names are appended to its path.
func ParseReleaseURL(raw string, allowInsecure bool) (*url.URL, error) {
	u, err := parseDownloadURL("--release-url", raw, allowInsecure)
	if err != nil {
		return nil, err
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(raw, "?#") {
		return nil, fmt.Errorf("--release-url %q must not have a query (?) or fragment (#): the release's files (VERSION/SHA256SUMS, VERSION/worker-linux-ARCH) are appended to its path", raw)
	}
	return u, nil
}

func parseDownloadURL(flag, raw string, allowInsecure bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %v", flag, raw, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowInsecure && !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("%s %q: plain http is only allowed for loopback hosts; use https or pass --allow-insecure-http", flag, raw)
		}
	case "s3", "gs":
		if u.Host == "" || strings.Trim(u.Path, "/") == "" {
			return nil, fmt.Errorf("%s %q: want %s://BUCKET/KEY", flag, raw, u.Scheme)
		}
		return u, nil
	default:
		return nil, fmt.Errorf("%s %q: unsupported scheme %q (want https, s3 or gs)", flag, raw, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%s %q has no host", flag, raw)
	}
	return u, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// WorkerSettings returns the worker's BUILDFLEET_* environment variables for the settings
// given in c (empty ones are left out).
func (c Config) WorkerSettings() map[string]string {
	m := map[string]string{}
	add := func(k, v string) {
		if v != "" {
			m["BUILDFLEET_"+k] = v
		}
	}
	add("SCHEDULER", c.Scheduler)
	add("AUTH_TOKEN_FILE", c.AuthTokenFile)
	add("CACHE_DIRECTORY", c.CacheDirectory)
	add("APPEND_ONLY_CACHES_BASE_PATH", c.AppendOnlyCachesBasePath)
	add("CLOUD", c.Cloud)
	if c.DrainTimeout > 0 {
		add("DRAIN_TIMEOUT", c.DrainTimeout.String())
	}
	return m
}

// ServiceSettings returns c with the worker settings the systemd unit depends on filled with
// their defaults: the cache directories it creates and the drain timeout its stop timeout
// exceeds.
func (c Config) ServiceSettings() Config {
	if c.CacheDirectory == "" {
		c.CacheDirectory = DefaultCacheDirectory
	}
	if c.AppendOnlyCachesBasePath == "" {
		c.AppendOnlyCachesBasePath = DefaultAppendOnlyCachesBasePath
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	return c
}
