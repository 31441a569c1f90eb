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

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/bytesize"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/flagenv"
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
	cloudCfg := cloud.DefaultConfig(nil)
	cloudCfg.RegisterFlags(fs)
	flagenv.AnnotateUsage(fs, "BUILDFLEET")
	if err := flagenv.Parse(fs, "BUILDFLEET", args, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %v", err)
	}
	logger := zerolog.New(os.Stderr).Level(level).With().Timestamp().Str("component", "worker").Logger()
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

	conn, err := worker.Dial(*scheduler, *caCert)
	if err != nil {
		return fmt.Errorf("--scheduler: %w", err)
	}
	defer conn.Close()
	r, err := runner.New(runner.Config{
		CacheDir:             *cacheDir,
		MaxCacheSize:         int64(maxCache),
		AppendOnlyCachesBase: *appendOnly,
		InstanceName:         *instance,
		WorkerID:             *workerID,
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
	logger.Info().Str("scheduler", *scheduler).Str("cloud", sel.Cloud).Str("cache_directory", *cacheDir).Str("max_cache_size", maxCache.String()).
		Dur("drain_timeout", *drainTimeout).Dur("drain_safety_margin", *safetyMargin).Msg("Worker configured")
	return w.Run(ctx, cloud.Watch(ctx, sources...))
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
