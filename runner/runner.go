// Package runner runs one REAPI action on a worker: it materializes the input root from a
// local content-addressed file cache (hardlinks of read-only files fetched from the remote
// CAS), runs the command in its own process group with exactly the environment it was given,
// enforces the action's timeout, and uploads the outputs, stdout and stderr to the CAS,
// returning the ActionResult.
package runner

import (
	"context"
	"os"
	"path/filepath"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// Defaults for the zero values of Config fields.
const (
	DefaultMaxCacheSize         = 30 << 30
	DefaultAppendOnlyCachesBase = "/toolchain/caches"
	DefaultFetchConcurrency     = 8
)

// messageCacheSize bounds the serialized size of the Directory and Command messages kept in
// memory.
const messageCacheSize = 64 << 20

// Config configures a Runner.
type Config struct {
	// CacheDir holds the file cache (CacheDir/files) and the action directories
	// (CacheDir/actions). It is created if missing and must not be shared by two workers.
	CacheDir string
	// MaxCacheSize bounds the total size of the file cache in bytes (DefaultMaxCacheSize when
	// zero). Files in use by running actions are never evicted, so it may be exceeded while an
	// action's inputs are larger than the bound.
	MaxCacheSize int64
	// AppendOnlyCachesBase is the persistent directory Pants' __pants_wrapper__ keeps its
	// append-only caches in, shared by concurrent actions (DefaultAppendOnlyCachesBase when
	// empty). It is created if missing and must be writable.
	AppendOnlyCachesBase string
	// InstanceName is the REAPI instance name used for every CAS request.
	InstanceName string
	// WorkerID is reported in ExecutedActionMetadata.worker.
	WorkerID string
	// FetchConcurrency bounds the concurrent CAS requests and file placements of one action
	// (DefaultFetchConcurrency when zero).
	FetchConcurrency int
	// MaxBatchSize bounds the total size of one BatchReadBlobs or BatchUpdateBlobs request
	// (4 MiB when zero); it is lowered to the server's max_batch_total_size_bytes when
	// GetCapabilities reports a smaller one.
	MaxBatchSize int64
	// RunAs, when set, is the unprivileged user commands run as (the worker must run as
	// root). Input roots and the directories created in them belong to it; the file cache
	// (CacheDir/files, mode 0700) and the worker's own files stay out of its reach. Concurrent
	// actions share the user, so they are not isolated from one another. When nil, commands
	// run as the worker's own user, which can then read everything the worker can.
	RunAs *User
	// Sandbox is the isolation of actions beyond their directory, process group and user
	// (SandboxNone when zero). New fails when SandboxNamespaces cannot be set up here.
	Sandbox Sandbox
	// HidePaths are files and directories actions must not see, such as the worker's token
	// file: under SandboxNamespaces they are covered (a directory by an empty tmpfs, a file by
	// /dev/null) in the action's mount namespace. The file cache is always hidden there.
	HidePaths []string
	// AllowEscapingSymlinks lets input roots hold symlinks with absolute targets or targets
	// that may resolve outside the input root; by default such an action fails with
	// INVALID_ARGUMENT before it runs.
	AllowEscapingSymlinks bool
}

// Runner runs actions. It is safe for concurrent use; concurrent actions share the file cache.
type Runner struct {
	cfg      Config
	clock    clock.Clock
	logger   zerolog.Logger
	cas      *casClient
	files    *fileCache
	inputs   *inputRoot
	commands *messageCache
	actions  string
	reaper   *dirReaper
	hide     []string
	lock     *os.File
}

// New opens the cache directory (taking an exclusive lock on it), removes action directories
// left behind by a crash, opens the file cache, and makes sure the append-only caches base
// exists. conn reaches the CAS, ByteStream and Capabilities services.
func New(cfg Config, conn grpc.ClientConnInterface, clk clock.Clock, logger zerolog.Logger) (*Runner, error) {
	if cfg.CacheDir == "" {
		return nil, status.Error(codes.InvalidArgument, "Runner: no cache directory configured")
	}
	if err := digest.CheckInstanceName(cfg.InstanceName); err != nil {
		return nil, err
	}
	if cfg.MaxCacheSize <= 0 {
		cfg.MaxCacheSize = DefaultMaxCacheSize
	}
	if cfg.AppendOnlyCachesBase == "" {
		cfg.AppendOnlyCachesBase = DefaultAppendOnlyCachesBase
	}
	if cfg.FetchConcurrency <= 0 {
		cfg.FetchConcurrency = DefaultFetchConcurrency
	}
	dir, err := filepath.Abs(cfg.CacheDir)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Runner: invalid cache directory: %v", err)
	}
	cfg.CacheDir = dir
	if cfg.RunAs != nil && os.Geteuid() != 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "Running actions as user %s needs a worker running as root", cfg.RunAs)
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to create cache directory: %v", err)
	}
	// Actions may pass through the cache directory to their own, but not list it.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to protect the cache directory: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to lock cache directory: %v", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, status.Errorf(codes.FailedPrecondition, "Cache directory %s is in use by another worker: %v", dir, err)
	}
	r := &Runner{cfg: cfg, clock: clk, logger: logger, actions: filepath.Join(dir, "actions"), lock: lock}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	if err := r.cleanActions(); err != nil {
		return nil, err
	}
	mode := os.FileMode(0o700)
	if cfg.RunAs != nil {
		mode = 0o711
	}
	r.reaper, err = newDirReaper(filepath.Join(dir, "finished"), mode, logger)
	if err != nil {
		return nil, err
	}
	defer func() {
		if !ok {
			r.reaper.Close()
		}
	}()
	if err := os.MkdirAll(cfg.AppendOnlyCachesBase, 0o755); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "Failed to create append-only caches base %s: %v", cfg.AppendOnlyCachesBase, err)
	}
	if err := unix.Access(cfg.AppendOnlyCachesBase, unix.W_OK|unix.X_OK); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "Append-only caches base %s is not writable: %v", cfg.AppendOnlyCachesBase, err)
	}
	if u := cfg.RunAs; u != nil {
		for _, p := range []string{r.actions, cfg.AppendOnlyCachesBase} {
			if err := checkTraversable(p, *u); err != nil {
				return nil, err
			}
		}
		if err := os.Lchown(cfg.AppendOnlyCachesBase, int(u.UID), int(u.GID)); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "Failed to give the append-only caches base %s to user %s: %v", cfg.AppendOnlyCachesBase, u, err)
		}
	}
	r.cas = newCASClient(conn, cfg.InstanceName, cfg.MaxBatchSize, cfg.FetchConcurrency)
	filesDir := filepath.Join(dir, "files")
	r.files, err = newFileCache(filesDir, cfg.MaxCacheSize, r.cas, cfg.FetchConcurrency, logger)
	if err != nil {
		return nil, err
	}
	// Actions reach their inputs through hardlinks only, never the cache itself.
	if err := os.Chmod(filesDir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to protect the file cache: %v", err)
	}
	r.hide = append([]string{filesDir}, cfg.HidePaths...)
	if cfg.Sandbox == SandboxNamespaces {
		if err := probeSandbox(r.hide); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "Linux namespaces (--sandbox=namespaces) are not available to this worker (it must run as root, in a kernel and container that allow new mount, PID and network namespaces and a fresh /proc): %v", err)
		}
	}
	r.inputs = &inputRoot{cas: r.cas, files: r.files, messages: newMessageCache(messageCacheSize), concurrency: cfg.FetchConcurrency,
		allowEscapingSymlinks: cfg.AllowEscapingSymlinks, owner: cfg.RunAs}
	r.commands = newMessageCache(messageCacheSize / 8)
	ok = true
	return r, nil
}

// checkTraversable returns FAILED_PRECONDITION unless u may pass through every directory
// above path (search permission), as it must to reach its action directory.
func checkTraversable(path string, u User) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "Invalid path %s: %v", path, err)
	}
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			return status.Errorf(codes.Internal, "Failed to check %s: %v", d, err)
		}
		ok := st.Mode&0o001 != 0 || st.Uid == u.UID && st.Mode&0o100 != 0 || st.Gid == u.GID && st.Mode&0o010 != 0
		if !ok {
			return status.Errorf(codes.FailedPrecondition, "User %s, which runs actions, cannot pass through %s (mode %04o): it must reach %s (chmod o+x %s)", u, d, st.Mode&0o7777, path, d)
		}
		if d == "/" {
			return nil
		}
	}
}

// cleanActions removes every action directory, left behind by a worker that crashed.
func (r *Runner) cleanActions() error {
	des, err := os.ReadDir(r.actions)
	if err != nil && !os.IsNotExist(err) {
		return status.Errorf(codes.Internal, "Failed to read action directories: %v", err)
	}
	for _, de := range des {
		p := filepath.Join(r.actions, de.Name())
		if err := removeAll(p); err != nil {
			return status.Errorf(codes.Internal, "Failed to remove stale action directory %s: %v", p, err)
		}
		r.logger.Info().Str("path", p).Msg("Removed stale action directory")
	}
	if err := os.MkdirAll(r.actions, 0o711); err != nil {
		return status.Errorf(codes.Internal, "Failed to create action directories: %v", err)
	}
	if err := os.Chmod(r.actions, 0o711); err != nil {
		return status.Errorf(codes.Internal, "Failed to protect action directories: %v", err)
	}
	return nil
}

// Close waits for the removal of finished action directories and releases the cache directory.
// Actions still running are not waited for.
func (r *Runner) Close() error {
	r.reaper.Close()
	return r.lock.Close()
}

// CacheStats returns the number of files in the file cache and their total size in bytes.
func (r *Runner) CacheStats() (files int, bytes int64) {
	return r.files.stats()
}

// Run runs action (whose digest is actionDigest) and returns its ActionResult with outputs,
// stdout and stderr uploaded to the CAS.
//
// A non-nil error carries the gRPC status for ExecuteResponse.status: INVALID_ARGUMENT for a
// malformed action, FAILED_PRECONDITION with MISSING violations for inputs absent from the CAS,
// DEADLINE_EXCEEDED when Action.timeout expired (the ActionResult, with partial stdout and
// stderr, is then returned too), the context's status (CANCELLED) when ctx ended, UNAVAILABLE
// when the result cannot be trusted and a retry will do (an input was written by another
// action sharing it), and INTERNAL or UNAVAILABLE for infrastructure problems.
func (r *Runner) Run(ctx context.Context, actionDigest digest.Digest, action *repb.Action) (*repb.ActionResult, error) {
	logger := r.logger.With().Str("action_digest", actionDigest.String()).Logger()
	md := &repb.ExecutedActionMetadata{Worker: r.cfg.WorkerID, WorkerStartTimestamp: r.now()}
	res, err := r.run(ctx, logger, action, md)
	if err != nil && ctx.Err() != nil {
		err = status.FromContextError(ctx.Err()).Err()
		res = nil
	}
	if res != nil {
		md.WorkerCompletedTimestamp = r.now()
		res.ExecutionMetadata = md
	}
	if err != nil {
		logger.Info().Str("code", status.Code(err).String()).Err(err).Msg("Action did not complete")
	} else {
		logger.Debug().Int32("exit_code", res.GetExitCode()).Msg("Action completed")
	}
	return res, err
}

func (r *Runner) now() *timestamppb.Timestamp { return timestamppb.New(r.clock.Now()) }

func (r *Runner) run(ctx context.Context, logger zerolog.Logger, action *repb.Action, md *repb.ExecutedActionMetadata) (*repb.ActionResult, error) {
	cmdDigest, err := digest.FromProto(action.GetCommandDigest())
	if err != nil {
		return nil, rpcstatus.Wrap(err, "Invalid command digest")
	}
	rootDigest, err := digest.FromProto(action.GetInputRootDigest())
	if err != nil {
		return nil, rpcstatus.Wrap(err, "Invalid input root digest")
	}
	var timeout time.Duration
	if t := action.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "Invalid action timeout %v", t)
		}
		timeout = t.AsDuration()
	}

	md.InputFetchStartTimestamp = r.now()
	cmd, err := r.fetchCommand(ctx, cmdDigest)
	if err != nil {
		return nil, err
	}
	workDir, err := cleanRelPath("Working directory", cmd.GetWorkingDirectory())
	if err != nil {
		return nil, err
	}
	outs, err := parseOutputs(cmd, workDir)
	if err != nil {
		return nil, err
	}
	outs.absoluteSymlinks = r.cfg.AllowEscapingSymlinks
	iso := isolation{user: r.cfg.RunAs, namespaces: r.cfg.Sandbox == SandboxNamespaces, networkOff: wantsNetworkOff(action, cmd), hide: r.hide}
	if iso.networkOff && !iso.namespaces {
		return nil, status.Error(codes.InvalidArgument, "The action asks for network=off, but this worker runs actions without a sandbox (--sandbox=namespaces) and cannot turn the network off")
	}
	dir, err := newActionDir(r.actions, r.cfg.RunAs, r.reaper)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := dir.Close(); err != nil {
			logger.Warn().Err(err).Str("path", dir.path).Msg("Failed to remove action directory")
		}
	}()
	proc, err := newProcess(cmd, filepath.Join(dir.root, workDir), dir.stdout, dir.stderr, timeout, r.clock, iso)
	if err != nil {
		return nil, err
	}
	ps := r.files.newPinSet()
	released := false
	defer func() {
		if !released {
			ps.release()
		}
	}()
	if err := r.inputs.materialize(ctx, ps, rootDigest, dir.root); err != nil {
		return nil, err
	}
	if err := dir.checkWorkingDirectory(workDir); err != nil {
		return nil, err
	}
	if err := outs.createParents(dir); err != nil {
		return nil, err
	}
	md.InputFetchCompletedTimestamp = r.now()

	md.ExecutionStartTimestamp = r.now()
	pr, err := proc.run(ctx)
	md.ExecutionCompletedTimestamp = r.now()
	released = true
	if terr := ps.release(); terr != nil && err == nil {
		err = terr
	}
	if err != nil {
		return nil, err
	}

	md.OutputUploadStartTimestamp = r.now()
	result := &repb.ActionResult{ExitCode: pr.exitCode}
	blobs, err := outs.collect(dir, result)
	if err != nil {
		return nil, err
	}
	for _, s := range []struct {
		path  string
		empty bool
		set   func(*repb.Digest)
	}{
		{dir.stdout, pr.stdoutEmpty, func(d *repb.Digest) { result.StdoutDigest = d }},
		{dir.stderr, pr.stderrEmpty, func(d *repb.Digest) { result.StderrDigest = d }},
	} {
		d, src := digest.Empty, uploadSource{}
		if !s.empty {
			d, src, err = logBlob(s.path)
			if err != nil {
				return nil, err
			}
		}
		blobs[d] = src
		s.set(d.Proto())
	}
	if err := r.uploadOutputs(ctx, logger, blobs); err != nil {
		return nil, rpcstatus.Wrap(err, "Failed to upload outputs")
	}
	md.OutputUploadCompletedTimestamp = r.now()
	if pr.timedOut {
		return result, status.Errorf(codes.DeadlineExceeded, "Action timed out after %s", timeout)
	}
	return result, nil
}

// Backoff of output upload retries.
const (
	uploadRetryMin = 100 * time.Millisecond
	uploadRetryMax = 5 * time.Second
)

// uploadOutputs uploads an action's outputs. While the CAS cannot be reached (UNAVAILABLE, a
// call's DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED: every scheduler replica restarting,
// a load balancer with no backend) it keeps the finished outputs and tries again with backoff
// (100 ms doubling to 5 s) instead of failing the action, which would make the scheduler run it
// again. It gives up only when ctx ends: the scheduler withdrew the lease (or it expired) or a
// drain ran out of time.
func (r *Runner) uploadOutputs(ctx context.Context, logger zerolog.Logger, blobs map[digest.Digest]uploadSource) error {
	delay := uploadRetryMin
	for attempt := 1; ; attempt++ {
		err := r.cas.upload(ctx, blobs)
		if err == nil || ctx.Err() != nil {
			return err
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		default:
			return err
		}
		logger.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", delay).
			Msg("Output upload failed; keeping the outputs and retrying")
		t, ch := r.clock.NewTimer(delay)
		select {
		case <-ch:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		delay = min(2*delay, uploadRetryMax)
	}
}

// logBlob hashes the stdout or stderr file at path.
func logBlob(path string) (digest.Digest, uploadSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return digest.Digest{}, uploadSource{}, status.Errorf(codes.Internal, "Failed to read %s: %v", filepath.Base(path), err)
	}
	defer f.Close()
	d, data, err := hashFile(f, 0)
	if err != nil {
		return digest.Digest{}, uploadSource{}, status.Errorf(codes.Internal, "Failed to read %s: %v", filepath.Base(path), err)
	}
	if data != nil || d.Size == 0 {
		return d, uploadSource{data: data}, nil
	}
	return d, uploadSource{open: func() (*os.File, error) { return os.Open(path) }}, nil
}

// fetchCommand returns the Command with digest d, from memory or the CAS.
func (r *Runner) fetchCommand(ctx context.Context, d digest.Digest) (*repb.Command, error) {
	if m, ok := r.commands.get(d).(*repb.Command); ok {
		return m, nil
	}
	blobs, err := r.cas.readBlobs(ctx, []digest.Digest{d})
	if err != nil {
		return nil, rpcstatus.Wrap(err, "Failed to fetch command %s", d)
	}
	cmd := &repb.Command{}
	if err := proto.Unmarshal(blobs[d], cmd); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Command %s is not a Command message: %v", d, err)
	}
	r.commands.put(d, cmd)
	return cmd, nil
}
