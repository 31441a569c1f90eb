// Command worker runs a buildfleet worker: it long-polls the scheduler for leases over the
// Remote Workers API, runs their actions from a local file cache, and drains before its machine
// is taken away (cloud interruption notices, SIGTERM/SIGINT), exiting 0 once its results are
// acknowledged.
//
// Every flag falls back to an environment variable: --max-cache-size reads
// BUILDFLEET_MAX_CACHE_SIZE, --platform reads BUILDFLEET_PLATFORM (comma-separated KEY=VALUE).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/buildfleet/buildfleet/auth"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/bytesize"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/flagenv"
	"github.com/buildfleet/buildfleet/internal/logformat"
	"github.com/buildfleet/buildfleet/internal/version"
	"github.com/buildfleet/buildfleet/runner"
	"github.com/buildfleet/buildfleet/worker"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	scheduler := fs.String("scheduler", "grpc://127.0.0.1:8980", "scheduler address: grpc://HOST:PORT or grpcs://HOST:PORT")
	caCert := fs.String("tls-ca-cert", "", "PEM file of the CA certificates that verify a grpcs:// scheduler (default: system roots)")
	clientCert := fs.String("tls-client-cert", "", "PEM client certificate for a scheduler requiring mutual TLS (with --tls-client-key)")
	clientKey := fs.String("tls-client-key", "", "PEM private key of --tls-client-cert")
	serverName := fs.String("tls-server-name", "", "name verified in the scheduler's certificate (default: the host of --scheduler)")
	tokenFile := fs.String("auth-token-file", "", "file holding the worker token sent as 'authorization: Bearer TOKEN' (re-read when it changes; keep it mode 0600)")
	tokenEnv := fs.String("auth-token-env-var-name", "", "environment variable holding the worker token (removed from the environment once read)")
	runAs := fs.String("run-as-user", "", "unprivileged user actions run as, NAME|UID[:GROUP|GID], when the worker runs as root (default: the worker's own user)")
	sandboxFlag := fs.String("sandbox", "none", "action isolation: none, or namespaces (new mount, PID, IPC, UTS namespaces; no network for network=off actions; needs root)")
	allowEscaping := fs.Bool("allow-escaping-symlinks", false, "accept input symlinks with absolute targets or targets leading outside the input root (refused with INVALID_ARGUMENT otherwise)")
	concurrency := fs.Int("worker-concurrency", runtime.NumCPU(), "actions run at once (advertised as the session's capacity)")
	cacheDir := fs.String("cache-directory", "/var/cache/buildfleet-worker", "directory of the file cache and the action directories")
	maxCache := bytesize.Size(30 << 30)
	fs.Var(&maxCache, "max-cache-size", "size bound of the file cache, e.g. 30G or 512M (powers of 1024)")
	var platform flagenv.Strings
	fs.Var(&platform, "platform", "platform property KEY=VALUE advertised to the scheduler (repeatable; OSFamily and ISA are added unless given)")
	appendOnly := fs.String("append-only-caches-base-path", "/toolchain/caches", "persistent, writable directory shared by actions for Pants' append-only caches")
	workerID := fs.String("worker-id", "", "bot id of this worker (default: hostname plus a random suffix)")
	instance := fs.String("instance-name", "", "REAPI instance name the worker serves")
	drainTimeout := fs.Duration("drain-timeout", cloud.DefaultDrainTimeout, "drain deadline after SIGTERM/SIGINT (keep at or below Kubernetes' terminationGracePeriodSeconds)")
	safetyMargin := fs.Duration("drain-safety-margin", worker.DefaultDrainSafetyMargin, "time kept before a drain deadline for uploads and hand-backs: actions still running then are stopped and handed back")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", logformat.Auto, logformat.Usage)
	cloudCfg := cloud.DefaultConfig(nil)
	cloudCfg.RegisterFlags(fs)
	showVersion := version.Register(fs)
	flagenv.AnnotateUsage(fs, "BUILDFLEET")
	if err := flagenv.Parse(fs, "BUILDFLEET", args, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if showVersion.Print(os.Stdout, "worker") {
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %v", err)
	}
	logOut, err := logformat.Writer(os.Stderr, *logFormat)
	if err != nil {
		return err
	}
	logger := zerolog.New(logOut).Level(level).With().Timestamp().Str("service", "worker").Logger()
	if *workerID == "" {
		*workerID = defaultWorkerID()
	}
	if *concurrency < 1 {
		return fmt.Errorf("--worker-concurrency %d: must be at least 1", *concurrency)
	}
	var props []worker.Property
	for _, kv := range platform {
		p, err := worker.ParseProperty(kv)
		if err != nil {
			return fmt.Errorf("--platform: %v", err)
		}
		props = append(props, p)
	}
	if err := cloudCfg.Validate(); err != nil {
		return err
	}

	sandbox, err := runner.ParseSandbox(*sandboxFlag)
	if err != nil {
		return fmt.Errorf("--sandbox: %v", err)
	}
	var actionUser *runner.User
	if *runAs != "" {
		u, err := runner.ParseUser(*runAs)
		if err != nil {
			return fmt.Errorf("--run-as-user: %v", err)
		}
		if os.Geteuid() != 0 {
			return fmt.Errorf("--run-as-user=%s needs a worker running as root", *runAs)
		}
		if *tokenFile != "" {
			if err := u.CheckUnreadable(*tokenFile); err != nil {
				return fmt.Errorf("--auth-token-file: %v", err)
			}
		}
		actionUser = &u
	} else if os.Geteuid() == 0 {
		logger.Warn().Msg("INSECURE: actions run as root, like the worker: they can read the worker's token, its cache and anything on this machine; set --run-as-user (e.g. nobody)")
	}
	if sandbox == runner.SandboxNamespaces {
		props = addNetworkOffProperties(props)
	}

	addr, secure, err := worker.ParseSchedulerAddress(*scheduler)
	if err != nil {
		return fmt.Errorf("--scheduler: %w", err)
	}
	dialOpts, token, err := auth.ClientDialOptions(auth.ClientConfig{
		Address: addr, Secure: secure,
		CAFile: *caCert, CertFile: *clientCert, KeyFile: *clientKey, ServerName: *serverName,
		TokenFile: *tokenFile, TokenEnvVar: *tokenEnv,
	}, logger)
	if err != nil {
		return fmt.Errorf("--scheduler: %w", err)
	}
	conn, err := grpc.NewClient(addr, append(dialOpts,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
	)...)
	if err != nil {
		return fmt.Errorf("--scheduler: %w", err)
	}
	defer conn.Close()
	var hide []string
	if *tokenFile != "" {
		hide = append(hide, *tokenFile)
	}
	r, err := runner.New(runner.Config{
		CacheDir:              *cacheDir,
		MaxCacheSize:          int64(maxCache),
		AppendOnlyCachesBase:  *appendOnly,
		InstanceName:          *instance,
		WorkerID:              *workerID,
		RunAs:                 actionUser,
		Sandbox:               sandbox,
		HidePaths:             hide,
		AllowEscapingSymlinks: *allowEscaping,
	}, conn, clock.System, logger)
	if err != nil {
		return fmt.Errorf("starting the runner: %w", err)
	}
	defer r.Close()

	ctx, cancel := context.WithCancel(logger.WithContext(context.Background()))
	defer cancel()
	sel, err := cloud.Select(ctx, cloudCfg, clock.System, logger)
	if err != nil {
		return fmt.Errorf("--cloud: %w", err)
	}
	sources := append(sel.Sources, cloud.NewSignalSource(cloud.SignalSourceConfig{DrainTimeout: *drainTimeout}, clock.System, logger))

	w, err := worker.New(worker.Config{
		WorkerID:          *workerID,
		Version:           version.Get().Short(),
		InstanceName:      *instance,
		Concurrency:       *concurrency,
		Platform:          props,
		DrainTimeout:      *drainTimeout,
		DrainSafetyMargin: *safetyMargin,
		DrainOnSoftNotice: cloudCfg.RebalanceDrains,
		Completer:         sel.Completer,
	}, conn, r, clock.System, logger)
	if err != nil {
		return err
	}
	runAsLog := "worker's own user"
	if actionUser != nil {
		runAsLog = actionUser.String()
	}
	tokenID := ""
	if token != nil {
		tokenID = token.ID
	}
	logger.Info().Str("scheduler", *scheduler).Bool("tls", secure).Str("token_id", tokenID).Str("run_as", runAsLog).Str("sandbox", sandbox.String()).
		Bool("allow_escaping_symlinks", *allowEscaping).Str("cloud", sel.Cloud).Str("cache_directory", *cacheDir).Str("max_cache_size", maxCache.String()).
		Dur("drain_timeout", *drainTimeout).Dur("drain_safety_margin", *safetyMargin).Str("version", version.Get().Short()).Msg("Worker configured")
	return w.Run(ctx, cloud.Watch(ctx, sources...))
}

// maxMessageSize is the gRPC message size the worker accepts and sends, as worker.Dial's:
// CAS batches of 4 MiB of data plus their framing exceed gRPC's 4 MiB default.
const maxMessageSize = 16 << 20

// addNetworkOffProperties advertises runner.NetworkOffProperties, which a worker with a
// namespace sandbox honours, unless the operator already set those keys.
func addNetworkOffProperties(props []worker.Property) []worker.Property {
	has := map[string]bool{}
	for _, p := range props {
		has[p.Key] = true
	}
	for _, kv := range runner.NetworkOffProperties {
		p, _ := worker.ParseProperty(kv)
		if !has[p.Key] {
			props = append(props, p)
		}
	}
	return props
}

// defaultWorkerID is the hostname followed by a random suffix, so that two workers on one host
// (or a restarted pod) never share a bot id.
func defaultWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}
