// Command scheduler runs the buildfleet scheduler: the REAPI services (Execution, ActionCache,
// CAS, ByteStream, Capabilities) for Pants and Bazel, and the Remote Workers API for workers,
// on one gRPC port, with embedded disk storage or, with --object-store, an S3 or GCS bucket
// behind the disk as a local tier. With --ha=etcd it is one of several replicas: etcd elects the
// leader that runs the scheduler, and the others forward Execution, Operations and Bots calls
// to it (package cluster).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/console"
	"github.com/buildfleet/buildfleet/internal/bytesize"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/flagenv"
	"github.com/buildfleet/buildfleet/internal/logformat"
	"github.com/buildfleet/buildfleet/internal/metrics"
	"github.com/buildfleet/buildfleet/internal/version"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
		os.Exit(1)
	}
}

// defaultStorageDir is $XDG_DATA_HOME/buildfleet, else ./buildfleet-data.
func defaultStorageDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "buildfleet")
	}
	return "./buildfleet-data"
}

func run(args []string) error {
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8980", "gRPC address serving clients and workers (ignored when systemd passes the socket: socket activation)")
	storageDir := fs.String("storage-dir", defaultStorageDir(), "directory of the embedded disk storage ($XDG_DATA_HOME/buildfleet when XDG_DATA_HOME is set, else ./buildfleet-data)")
	maxStorage := bytesize.Size(10 << 30)
	fs.Var(&maxStorage, "max-storage-size", "size bound of the CAS; least recently used blobs are evicted beyond it (e.g. 10G)")
	metricsListen := fs.String("metrics-listen", "127.0.0.1:9090", "HTTP address serving /metrics, /healthz, /readyz, /workers and the web console /console/ (empty: off)")
	pprofOn := fs.Bool("pprof", true, "serve the Go profiler at /debug/pprof/ on --metrics-listen: with token files to client tokens only (Authorization: Bearer), without them only on a loopback address")
	casFsync := fs.Bool("cas-fsync", false, "fsync every CAS blob before it is stored; off, blobs are synced at shutdown and, after a machine crash, verified before they are served")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", logformat.Auto, logformat.Usage)
	sessionTimeout := fs.Duration("session-timeout", 20*time.Second, "a bot session not updated for this long is closed and its leases requeued")
	disconnectGrace := fs.Duration("disconnect-grace", scheduler.DefaultDisconnectGrace, "a worker whose connection ended (its process died) and that does not call again within this long loses its leases; they are requeued")
	retryLimit := fs.Int("retry-limit", 3, "times an action is requeued after a lost worker before it fails with UNAVAILABLE")
	unmatchedTimeout := fs.Duration("unmatched-platform-timeout", 5*time.Minute, "how long an action no connected worker can run waits before failing")
	maxBlob := bytesize.Size(10 << 30)
	fs.Var(&maxBlob, "max-blob-size", "largest blob a client may upload (ByteStream.Write, BatchUpdateBlobs); larger ones fail with INVALID_ARGUMENT (e.g. 10G; 0: no limit)")
	maxStreams := fs.Uint("max-concurrent-streams", 1000, "concurrent RPCs (HTTP/2 streams) one client connection may have open; more wait for a free one")
	maxQueue := fs.Int("max-queue-per-instance", 100000, "queued actions per instance name beyond which Execute answers RESOURCE_EXHAUSTED")
	opRetention := fs.Duration("operation-retention", scheduler.DefaultCompletedRetention, "how long a finished operation stays in memory; after it WaitExecution is answered from the action cache")
	maxOps := fs.Int("max-finished-operations", scheduler.DefaultMaxCompletedOperations, "finished operations kept in memory; the oldest are forgotten first beyond it")
	uploadResume := fs.Duration("upload-resume-timeout", storage.DefaultUploadIdleTimeout, "how long the bytes of an interrupted ByteStream upload are kept for the client to resume it")
	maxParked := fs.Int("max-parked-uploads", storage.DefaultMaxParkedUploads, "interrupted uploads kept for resumption; the least recently used are dropped beyond it")
	maxParkedSize := bytesize.Size(storage.DefaultMaxParkedUploadBytes)
	fs.Var(&maxParkedSize, "max-parked-upload-size", "bytes on disk of interrupted uploads kept for resumption (e.g. 1G); the least recently used are dropped beyond it")
	shutdownGrace := fs.Duration("shutdown-grace", 10*time.Second, "how long SIGTERM waits for in-flight RPCs before closing them")
	tlsCert := fs.String("tls-cert", "", "PEM certificate (chain) for TLS; clients then use grpcs://")
	tlsKey := fs.String("tls-key", "", "PEM private key for --tls-cert")
	tlsClientCA := fs.String("tls-client-ca", "", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")
	clientTokens := fs.String("client-tokens-file", "", "client token grants, one 'TOKEN INSTANCE_PATTERN PERMISSIONS' a line; reloaded on SIGHUP")
	workerTokens := fs.String("worker-tokens-file", "", "worker tokens, one a line; reloaded on SIGHUP")
	publicAddr := fs.String("public-address", "", "address clients and workers use to reach the scheduler (HOST:PORT, or a grpc:// or grpcs:// URL), printed in the start-up banner's Bazel and Pants settings; with --ha=etcd, the load balancer's")
	workerCaches := fs.String("workers-append-only-caches-base-path", defaultAppendOnlyCaches, "the workers' --append-only-caches-base-path, printed in the start-up banner's Pants settings (remote_execution_append_only_caches_base_path)")
	insecureRemote := fs.Bool("insecure-allow-remote", false, "serve a non-loopback --listen address with no token files (anyone who reaches it can run commands)")
	objectStore := registerObjectStoreFlags(fs)
	ha := registerHAFlags(fs)
	showVersion := version.Register(fs)
	flagenv.AnnotateUsage(fs, "BUILDFLEET")
	if err := flagenv.Parse(fs, "BUILDFLEET", args, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if showVersion.Print(os.Stdout, "scheduler") {
		return nil
	}

	if *maxStreams < 1 || *maxStreams > 1<<31 {
		return fmt.Errorf("--max-concurrent-streams=%d: must be between 1 and 2^31", *maxStreams)
	}
	if maxBlob < 0 {
		return fmt.Errorf("--max-blob-size=%s: must not be negative", maxBlob)
	}
	if err := sessionLimits(*sessionTimeout, *disconnectGrace, *shutdownGrace, *retryLimit); err != nil {
		return err
	}
	if err := positiveLimits(*opRetention, *maxOps, *uploadResume, *maxParked, int64(maxParkedSize)); err != nil {
		return err
	}
	haOn, err := ha.enabled()
	if err != nil {
		return err
	}
	var clusterCfg cluster.Config
	if haOn {
		if clusterCfg, err = ha.config(); err != nil {
			return err
		}
		if err := checkAdvertiseNotPublic(clusterCfg.AdvertiseAddress, *publicAddr); err != nil {
			return err
		}
		if *objectStore.url == "" {
			return errors.New("--ha=etcd needs --object-store: every replica serves the CAS and action cache from the shared bucket")
		}
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %v", err)
	}
	logOut, err := logformat.Writer(os.Stderr, *logFormat)
	if err != nil {
		return err
	}
	logger := zerolog.New(logOut).Level(level).With().Timestamp().Str("service", "scheduler").Logger()
	reg := metrics.NewRegistry()

	disk, err := storage.NewDiskBlobStore(filepath.Join(*storageDir, "cas"), int64(maxStorage), logger, reg, storage.WithFsync(*casFsync))
	if err != nil {
		return fmt.Errorf("opening storage: %w", err)
	}
	defer disk.Close() // Syncs the blobs and marks the store closed cleanly.
	var cas storage.BlobStore = disk
	var baseAC storage.ActionCache
	if *objectStore.url != "" {
		if cas, baseAC, err = openObjectStorage(context.Background(), objectStore, disk, *storageDir, logger, reg); err != nil {
			return err
		}
	} else if objectStore.anySet() {
		return errors.New("--s3-endpoint, --s3-region and --s3-force-path-style need --object-store=s3://BUCKET/PREFIX")
	} else if baseAC, err = storage.NewDiskActionCache(filepath.Join(*storageDir, "ac"), logger); err != nil {
		return fmt.Errorf("opening action cache: %w", err)
	}
	ac := storage.NewCompletenessCheckingActionCache(baseAC, cas)

	authz, err := auth.New(auth.Config{ClientTokensFile: *clientTokens, WorkerTokensFile: *workerTokens, Registerer: reg}, logger)
	if err != nil {
		return err
	}
	lis, activated, err := grpcListener(*listen)
	if err != nil {
		return err
	}
	defer lis.Close()
	listenAddr := *listen
	if activated {
		listenAddr = lis.Addr().String()
		if addr, ignored := ignoredListen(fs, os.Getenv, listenAddr); ignored {
			logger.Warn().Str("ignored_listen", addr).Str("listen", listenAddr).
				Msg("--listen (BUILDFLEET_LISTEN) is ignored: systemd passed the socket (socket activation); change the address in the socket unit (systemctl edit buildfleet-scheduler.socket)")
		}
	}
	if !authz.Enabled() && !auth.IsLoopbackListen(listenAddr) {
		if !*insecureRemote {
			return fmt.Errorf("--listen=%s is not a loopback address and no --client-tokens-file or --worker-tokens-file is set; give token files, or pass --insecure-allow-remote to serve anyone who can reach it", listenAddr)
		}
		logger.Warn().Str("listen", listenAddr).Msg("INSECURE: authentication is OFF on a non-loopback address: anyone who can reach it can read the cache and run commands")
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes),
		grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes),
		grpc.MaxConcurrentStreams(uint32(*maxStreams)),
		// MinTime is below the 10 s pings of replicas' connections to the leader (--ha=etcd),
		// so that the leader never refuses them as too many.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
	}
	opts = append(opts, storage.ReceiveBufferOptions()...)
	opts = append(opts, authz.ServerOptions()...)
	useTLS := *tlsCert != "" || *tlsKey != ""
	if useTLS {
		creds, err := auth.ServerCredentials(*tlsCert, *tlsKey, *tlsClientCA, logger)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(creds))
		if haOn {
			return errors.New("--ha=etcd does not support --tls-cert yet: replicas forward to each other in plaintext")
		}
	} else if *tlsClientCA != "" {
		return errors.New("--tls-client-ca needs --tls-cert and --tls-key")
	}

	cfg := scheduler.Config{
		SessionExpiry:          *sessionTimeout,
		RetryLimit:             *retryLimit,
		UnmatchedPlatformWait:  *unmatchedTimeout,
		MaxQueuePerInstance:    *maxQueue,
		NoRetries:              *retryLimit == 0,
		CompletedRetention:     *opRetention,
		DisconnectGrace:        *disconnectGrace,
		MaxCompletedOperations: *maxOps,
	}
	cfg.AdoptionWindow = ha.adoptionWindowFor(haOn)
	newSched := func(fence func() error) *scheduler.Scheduler {
		cfg := cfg
		cfg.Fence = fence
		return scheduler.New(cfg, cas, ac, clock.System, logger, reg)
	}

	srv := grpc.NewServer(opts...)
	var (
		sched   *scheduler.Scheduler
		node    *cluster.Node
		workers http.Handler
		// clientAC is the action cache clients use: with one scheduler their hits are recorded
		// for the console's builds and throughput (replicas have no console yet).
		clientAC = ac
	)
	if haOn {
		var etcd *clientv3.Client
		clusterCfg.AdvertiseHTTPAddress = advertiseHTTP(clusterCfg.AdvertiseAddress, *metricsListen)
		warnLoopbackAdvertise(clusterCfg.AdvertiseAddress, clusterCfg.Endpoints, logger)
		if node, etcd, err = startCluster(clusterCfg, newSched, logger); err != nil {
			return err
		}
		defer etcd.Close()
		node.Register(srv)
		workers = node.WorkersHandler()
	} else {
		sched = newSched(nil)
		sched.Register(srv)
		workers = sched.WorkersHandler()
		clientAC = sched.RecordingActionCache(ac)
	}
	storage.RegisterServices(srv, cas, clientAC, storage.ServiceOptions{
		ExecutionEnabled:     true,
		Logger:               logger,
		ActionCacheWritable:  authz.MayWriteActionCache,
		MaxBlobSizeBytes:     int64(maxBlob),
		UploadIdleTimeout:    *uploadResume,
		MaxParkedUploads:     *maxParked,
		MaxParkedUploadBytes: int64(maxParkedSize),
		UploadDir:            filepath.Join(*storageDir, "uploads"),
	})

	var ms *metrics.Server
	if *metricsListen != "" {
		ms, err = metrics.Listen(*metricsListen, reg, func() error { return nil })
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		ms.Handle("/workers", workers)
		ready := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintln(w, `{"ready":true,"role":"single"}`)
		}))
		if node != nil {
			ready = node.ReadyHandler()
		}
		ms.Handle("/readyz", ready)
		if h := pprofHandler(*pprofOn, authz, *metricsListen); h != nil {
			ms.Handle("/debug/pprof/", h)
		}
		if sched != nil {
			ms.Handle("/console/", console.New(console.Options{Scheduler: sched, CAS: cas, ActionCache: ac, Auth: authz, ListenAddr: *metricsListen, Logger: logger}))
			ms.Handle("/{$}", http.RedirectHandler("/console/", http.StatusFound))
		}
		go func() {
			if err := ms.Serve(); err != nil {
				logger.Error().Err(err).Msg("metrics server failed")
			}
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go authz.WatchSignals(ctx, hup)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	nodeDone := make(chan struct{})
	if node != nil {
		go func() { _ = node.Run(ctx); close(nodeDone) }()
		logger.Info().Str("advertise", clusterCfg.AdvertiseAddress).Strs("etcd_endpoints", clusterCfg.Endpoints).
			Msg("scheduler replica campaigning for leadership in etcd")
	} else {
		close(nodeDone)
	}
	logger.Info().Str("listen", lis.Addr().String()).Bool("socket_activated", activated).Str("storage_dir", *storageDir).
		Str("max_storage_size", maxStorage.String()).Msg("scheduler serving")
	consoleAddr := ""
	if ms != nil && sched != nil {
		consoleAddr = ms.Addr()
		logger.Info().Str("url", "http://"+consoleAddr+"/console/").Msg("web console serving")
	}
	printClientSettings(os.Stdout, clientSettings{listen: lis.Addr().String(), public: *publicAddr, ha: haOn,
		tls: useTLS, tokens: authz.Enabled(), console: consoleAddr, caches: *workerCaches})

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	logger.Info().Msg("shutting down: finishing in-flight RPCs")
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	// Held long-polls and Execute streams end now: workers keep their results and report them
	// to the next scheduler, clients call WaitExecution on it. Uploads and reads finish.
	if sched != nil {
		sched.Close()
	}
	<-nodeDone // the replica resigned: the next leader takes over at once
	// GracefulStop returns once every connection is closed. gRPC closes a draining connection
	// itself once the last byte of its last stream (a Read's tail, a Write's WriteResponse, the
	// trailers) is written, within a second of it if the client does not close first. Closing
	// connections as soon as no handler runs would cut off what a returned handler left queued
	// in the transport, so only the grace period ends the wait early.
	select {
	case <-done:
	case <-time.After(*shutdownGrace):
		logger.Warn().Dur("grace", *shutdownGrace).Msg("in-flight RPCs still open after the grace period; closing them")
		srv.Stop()
		<-done
	}
	if ms != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = ms.Shutdown(sctx)
	}
	logger.Info().Msg("stopped")
	return nil
}

// sessionLimits refuses values the scheduler would otherwise replace by its defaults: a zero or
// negative session timeout or disconnect grace, a negative shutdown grace or retry limit
// (--retry-limit=0 means no retries).
func sessionLimits(sessionTimeout, disconnectGrace, shutdownGrace time.Duration, retryLimit int) error {
	switch {
	case sessionTimeout <= 0:
		return fmt.Errorf("--session-timeout=%s: must be positive", sessionTimeout)
	case disconnectGrace <= 0:
		return fmt.Errorf("--disconnect-grace=%s: must be positive", disconnectGrace)
	case shutdownGrace < 0:
		return fmt.Errorf("--shutdown-grace=%s: must not be negative", shutdownGrace)
	case retryLimit < 0:
		return fmt.Errorf("--retry-limit=%d: must not be negative (0: no retries)", retryLimit)
	}
	return nil
}

// positiveLimits refuses zero or negative retention and upload limits: each bounds memory or
// disk, and none has an "off" value (a silent fallback to the default would surprise).
func positiveLimits(opRetention time.Duration, maxOps int, uploadResume time.Duration, maxParked int, maxParkedBytes int64) error {
	switch {
	case opRetention <= 0:
		return fmt.Errorf("--operation-retention=%s: must be positive", opRetention)
	case maxOps <= 0:
		return fmt.Errorf("--max-finished-operations=%d: must be positive", maxOps)
	case uploadResume <= 0:
		return fmt.Errorf("--upload-resume-timeout=%s: must be positive", uploadResume)
	case maxParked <= 0:
		return fmt.Errorf("--max-parked-uploads=%d: must be positive", maxParked)
	case maxParkedBytes <= 0:
		return fmt.Errorf("--max-parked-upload-size=%d: must be positive", maxParkedBytes)
	}
	return nil
}

// ignoredListen returns the --listen address and true when it was set explicitly (on the
// command line or as BUILDFLEET_LISTEN, looked up with getenv) to another address than served,
// the socket systemd passed, which the scheduler serves instead.
func ignoredListen(fs *flag.FlagSet, getenv func(string) string, served string) (string, bool) {
	given := getenv(flagenv.EnvName("BUILDFLEET", "listen")) != ""
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "listen" })
	addr := fs.Lookup("listen").Value.String()
	if !given || sameListenAddress(addr, served) {
		return "", false
	}
	return addr, true
}

// sameListenAddress reports whether two HOST:PORT listen addresses are the same socket address:
// the same port and the same IP (an IPv4-mapped IPv6 address as its IPv4 one; an empty host,
// 0.0.0.0 and :: all as the wildcard). Host names are compared as written.
func sameListenAddress(a, b string) bool {
	hostA, portA, errA := net.SplitHostPort(a)
	hostB, portB, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || portA != portB {
		return a == b
	}
	ipA, errA := netip.ParseAddr(hostA)
	ipB, errB := netip.ParseAddr(hostB)
	anyA := hostA == "" || (errA == nil && ipA.IsUnspecified())
	anyB := hostB == "" || (errB == nil && ipB.IsUnspecified())
	switch {
	case anyA || anyB:
		return anyA && anyB
	case errA == nil && errB == nil:
		return ipA.Unmap() == ipB.Unmap()
	}
	return hostA == hostB
}
