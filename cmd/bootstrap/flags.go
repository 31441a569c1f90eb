package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/buildfleet/buildfleet/bootstrap"
	"github.com/buildfleet/buildfleet/internal/flagenv"
	"github.com/buildfleet/buildfleet/internal/logformat"
	"github.com/buildfleet/buildfleet/internal/version"
)

// envPrefix prefixes the environment variable each flag falls back to:
// --worker-url reads BUILDFLEET_BOOTSTRAP_WORKER_URL.
const envPrefix = "BUILDFLEET_BOOTSTRAP"

// errShowVersion is returned by parseFlags for --version.
var errShowVersion = errors.New("--version")

// parseFlags parses the bootstrapper's command line: its own flags, then "--" and the
// arguments passed to the worker.
// It also returns the --log-format value.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (bootstrap.Config, string, error) {
	var c bootstrap.Config
	fs := flag.NewFlagSet("bootstrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.WorkerURL, "worker-url", "", "where to download the worker: https://, s3://BUCKET/KEY or gs://BUCKET/OBJECT")
	fs.StringVar(&c.WorkerSHA256, "worker-sha256", "", "expected sha256 of the worker binary, 64 hex digits (required with --worker-url; with a release it must agree with SHA256SUMS)")
	fs.StringVar(&c.ReleaseURL, "release-url", "", "base URL of buildfleet releases (https://, s3://, gs://); the worker is RELEASE_URL/VERSION/worker-linux-ARCH, checked against RELEASE_URL/VERSION/SHA256SUMS (instead of --worker-url)")
	fs.StringVar(&c.ReleaseVersion, "release-version", "", "release to install from --release-url, e.g. v1.2.3")
	fs.StringVar(&c.ReleaseSHA256SUMSSHA256, "release-sha256sums-sha256", "", "expected sha256 of the release's SHA256SUMS file, 64 hex digits: one pin for every architecture (required with --release-url)")
	fs.BoolVar(&c.AllowInsecureHTTP, "allow-insecure-http", false, "allow http:// worker URLs to non-loopback hosts")
	fs.StringVar(&c.InstallPath, "install-path", bootstrap.DefaultInstallPath, "where to install the worker binary")
	packages := fs.String("packages", bootstrap.DefaultPackagesKeyword,
		`comma-separated OS packages to install; "default" is the Pants/Bazel list (python3, bash, coreutils, archivers…), "none" installs nothing`)
	fs.BoolVar(&c.Exec, "exec", false, "replace this process with the worker (containers), passing it every argument after --")
	fs.BoolVar(&c.NoSystemd, "no-systemd", false, "do not write or start a systemd unit")
	fs.BoolVar(&c.DryRun, "dry-run", false, "print every step without doing it")
	fs.StringVar(&c.SystemdDir, "systemd-dir", bootstrap.DefaultSystemdDir, "directory the unit file is written to")
	fs.StringVar(&c.ServiceName, "service-name", bootstrap.DefaultServiceName, "systemd unit name, without .service")
	fs.StringVar(&c.EnvironmentFile, "environment-file", bootstrap.DefaultEnvironmentFile, "file holding the worker's BUILDFLEET_* settings for the unit")
	fs.StringVar(&c.User, "user", bootstrap.DefaultUser, `account the worker and its actions run as ("root" to run as root)`)
	fs.BoolVar(&c.CreateUser, "create-user", true, "create --user as a system account if it does not exist")
	fs.StringVar(&c.Scheduler, "scheduler", "", "the worker's scheduler, grpc://HOST:PORT or grpcs://HOST:PORT")
	fs.StringVar(&c.AuthTokenFile, "auth-token-file", "", "file holding the worker's bearer token")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 0, fmt.Sprintf("the worker's --drain-timeout; the unit stops after it plus %s (default %s for the unit)", bootstrap.StopTimeoutMargin, bootstrap.DefaultDrainTimeout))
	fs.StringVar(&c.CacheDirectory, "cache-directory", "", "the worker's --cache-directory (default "+bootstrap.DefaultCacheDirectory+" for the unit)")
	fs.StringVar(&c.AppendOnlyCachesBasePath, "append-only-caches-base-path", "", "the worker's --append-only-caches-base-path (default "+bootstrap.DefaultAppendOnlyCachesBasePath+" for the unit)")
	fs.StringVar(&c.Cloud, "cloud", "", "the worker's --cloud: auto, aws, gcp, azure or none")
	fs.IntVar(&c.Retry.Attempts, "retries", bootstrap.DefaultRetryPolicy.Attempts, "download attempts before giving up")
	fs.DurationVar(&c.Retry.Initial, "retry-initial-backoff", bootstrap.DefaultRetryPolicy.Initial, "wait after the first failed download; doubles each time")
	fs.DurationVar(&c.Retry.Max, "retry-max-backoff", bootstrap.DefaultRetryPolicy.Max, "longest wait between download attempts")
	fs.DurationVar(&c.DownloadTimeout, "download-timeout", bootstrap.DefaultDownloadTimeout, "fail (and retry) an http(s) download attempt that makes no progress for this long: connecting, waiting for the response, or between bytes of the body")
	logFormat := fs.String("log-format", logformat.Auto, logformat.Usage)
	showVersion := version.Register(fs)
	flagenv.AnnotateUsage(fs, envPrefix)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: bootstrap --worker-url=URL --worker-sha256=HEX [flags] [-- worker arguments]\n")
		fmt.Fprintf(stderr, "   or: bootstrap --release-url=URL --release-version=VERSION --release-sha256sums-sha256=HEX [flags] [-- worker arguments]\n\n")
		fs.PrintDefaults()
	}

	own, workerArgs := args, []string(nil)
	for i, a := range args {
		if a == "--" {
			own, workerArgs = args[:i], args[i+1:]
			break
		}
	}
	if err := flagenv.Parse(fs, envPrefix, own, getenv); err != nil {
		return c, "", err
	}
	if err := logformat.Check(*logFormat); err != nil {
		return c, "", err
	}
	if *showVersion {
		return c, "", errShowVersion
	}
	if fs.NArg() > 0 {
		return c, "", fmt.Errorf("unexpected argument %q (worker arguments go after --)", fs.Arg(0))
	}
	c.WorkerArgs = workerArgs
	if *packages != "none" {
		for _, p := range strings.Split(*packages, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.Packages = append(c.Packages, p)
			}
		}
	}
	return c, *logFormat, nil
}
