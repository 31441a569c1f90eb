package worker_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/runner"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
	"github.com/buildfleet/buildfleet/worker"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testClock is the clock an env runs the scheduler, the workers and the runners on, and that
// its test moves on.
type testClock interface {
	clock.Clock
	// Advance moves the clock on by d, firing the timers that come due.
	Advance(d time.Duration)
	// Set moves the clock on to t (never back).
	Set(t time.Time)
}

// bubbleClock is the clock of a synctest bubble: the system clock, which the bubble fakes for
// everything in it (timers, tickers, context and gRPC deadlines, gRPC's reconnection backoff).
// The scheduler, the workers and their calls are therefore on one clock, and it only moves
// when the test moves it and everything else is durably blocked.
type bubbleClock struct{}

func (bubbleClock) Now() time.Time { return time.Now() }

func (bubbleClock) NewTimer(d time.Duration) (clock.Timer, <-chan time.Time) {
	return clock.System.NewTimer(d)
}

func (bubbleClock) NewTicker(d time.Duration) (clock.Ticker, <-chan time.Time) {
	return clock.System.NewTicker(d)
}

// Advance moves the bubble's clock on by d and returns once everything in the bubble is
// blocked again. time.Sleep in a bubble is not a wait in real time: it returns as soon as
// every other goroutine is durably blocked, with the fake clock moved on by exactly d (firing
// each timer on the way at its own instant).
func (bubbleClock) Advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// Set moves the bubble's clock on to t.
func (c bubbleClock) Set(t time.Time) {
	if d := time.Until(t); d > 0 {
		c.Advance(d)
		return
	}
	synctest.Wait()
}

// env is a real scheduler with real disk storage, served over bufconn. The server can be taken
// down and brought back (same scheduler) or replaced by a fresh scheduler (a restart).
//
// An env made by inBubble runs in a synctest bubble on the bubble's clock: everything is
// deterministic, "nothing happens" is checked once everything is blocked, and time moves only
// when the test moves it. An env made by newEnv (for tests that run real processes, which
// are never durably blocked) runs on a fake clock that drives the timers of the scheduler and
// the worker, while gRPC runs on real time.
type env struct {
	t   *testing.T
	ctx context.Context
	clk testClock
	// bubble is true for an env in a synctest bubble.
	bubble bool
	log    zerolog.Logger
	cas    storage.BlobStore
	ac     storage.ActionCache
	sched  *scheduler.Scheduler
	cfg    scheduler.Config

	mu  sync.Mutex
	lis *bufconn.Listener
	srv *grpc.Server

	client *grpc.ClientConn
	exec   repb.ExecutionClient
	ops    longrunningpb.OperationsClient
	// unary, when set before up, intercepts the server's unary calls (the Bots service).
	unary grpc.UnaryServerInterceptor
}

func newEnv(t *testing.T, cfg scheduler.Config) *env {
	t.Helper()
	return newEnvOn(t, cfg, clock.NewFake(epoch), 60*time.Second)
}

// inBubble runs f in a synctest bubble with an env on the bubble's clock. The env's client
// context ends after two hours of the bubble's time, so that a test waiting for something that
// never comes fails instead of spinning the fake clock for ever.
func inBubble(t *testing.T, cfg scheduler.Config, f func(t *testing.T, e *env)) {
	t.Helper()
	bubble(t, func(t *testing.T) {
		f(t, newEnvOn(t, cfg, bubbleClock{}, 2*time.Hour))
	})
}

// bubbleWatchdog bounds, in real time, how long a bubble may run. A bubble whose goroutines
// never block (a worker calling the scheduler in a tight loop) never settles, so neither
// synctest.Wait nor the bubble's fake clock can end the test; the watchdog does.
const bubbleWatchdog = 2 * time.Minute

// bubble runs f with synctest.Test, ending the test binary with a clear message if the
// bubble is still running after bubbleWatchdog of real time.
func bubble(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	name := t.Name()
	watchdog := time.AfterFunc(bubbleWatchdog, func() {
		panic(name + ": the synctest bubble did not settle within " + bubbleWatchdog.String() +
			" of real time (is something in it spinning instead of blocking?)")
	})
	defer watchdog.Stop()
	synctest.Test(t, f)
}

func newEnvOn(t *testing.T, cfg scheduler.Config, clk testClock, timeout time.Duration) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, clk: clk, cfg: cfg,
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	_, e.bubble = clk.(bubbleClock)
	if testing.Verbose() {
		e.log = e.log.Level(zerolog.DebugLevel)
	}
	dir := t.TempDir()
	cas, err := storage.NewDiskBlobStore(filepath.Join(dir, "cas"), 1<<30, e.log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := storage.NewDiskActionCache(filepath.Join(dir, "ac"), e.log)
	if err != nil {
		t.Fatal(err)
	}
	e.cas, e.ac = cas, storage.NewCompletenessCheckingActionCache(ac, cas)
	e.sched = scheduler.New(cfg, e.cas, e.ac, e.clk, e.log, nil)
	e.up()
	e.client = e.dial()
	e.exec = repb.NewExecutionClient(e.client)
	e.ops = longrunningpb.NewOperationsClient(e.client)
	t.Cleanup(func() {
		e.down()
		e.sched.Close()
	})
	return e
}

// up serves the current scheduler and storage on a new listener.
func (e *env) up() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return
	}
	e.lis = bufconn.Listen(1 << 20)
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes)}
	if e.unary != nil {
		opts = append(opts, grpc.UnaryInterceptor(e.unary))
	}
	e.srv = grpc.NewServer(opts...)
	storage.RegisterServices(e.srv, e.cas, e.ac, storage.ServiceOptions{ExecutionEnabled: true, Logger: e.log})
	e.sched.Register(e.srv)
	go e.srv.Serve(e.lis)
}

// down stops serving: calls in progress fail and new connections are refused.
func (e *env) down() {
	e.mu.Lock()
	srv := e.srv
	e.srv, e.lis = nil, nil
	e.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// restart replaces the scheduler by a fresh one on the same storage, as a restarted process.
func (e *env) restart() {
	e.down()
	e.sched.Close()
	e.sched = scheduler.New(e.cfg, e.cas, e.ac, e.clk, e.log, nil)
	e.up()
}

// dial returns a connection that reaches whichever server is up, reconnecting quickly.
func (e *env) dial() *grpc.ClientConn {
	bo := backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond}
	if e.bubble {
		// In a bubble every reconnection attempt is a step of the fake clock: fewer of them
		// keep a scheduler outage of minutes cheap, and a quarter of a second is still well
		// inside the worker's own one-second retry.
		bo = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.5, MaxDelay: 250 * time.Millisecond}
	}
	conn, err := grpc.NewClient("passthrough:///buildfleet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			e.mu.Lock()
			lis := e.lis
			e.mu.Unlock()
			if lis == nil {
				return nil, errors.New("connection refused (scheduler down)")
			}
			return lis.DialContext(ctx)
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: time.Second}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// put stores a message in CAS and returns its digest.
func (e *env) put(m proto.Message) digest.Digest {
	e.t.Helper()
	b, d, err := digest.FromMessage(m)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.cas.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
		e.t.Fatal(err)
	}
	return d
}

// blob reads a blob from CAS.
func (e *env) blob(d *repb.Digest) []byte {
	e.t.Helper()
	pd, err := digest.FromProto(d)
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := e.cas.Get(context.Background(), pd, 0, 0)
	if err != nil {
		e.t.Fatalf("reading %s: %v", pd, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// action stores an action running the shell script script (with salt to tell identical
// scripts apart) and returns its digest.
func (e *env) action(script, salt string, timeout time.Duration, outputs ...string) digest.Digest {
	e.t.Helper()
	cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputPaths: outputs}
	a := &repb.Action{
		CommandDigest:   e.put(cmd).Proto(),
		InputRootDigest: e.put(&repb.Directory{}).Proto(),
		Salt:            []byte(salt),
		DoNotCache:      true,
	}
	if timeout > 0 {
		a.Timeout = durationpb.New(timeout)
	}
	return e.put(a)
}

// op is a client's view of one Execute: its name once known, and its outcome.
type op struct {
	name chan string
	done chan opResult
}

type opResult struct {
	resp *repb.ExecuteResponse
	err  error
}

// execute runs action d as a client would: Execute, and WaitExecution whenever the stream
// breaks (a scheduler that went away and came back).
func (e *env) execute(d digest.Digest) *op {
	o := &op{name: make(chan string, 1), done: make(chan opResult, 1)}
	go func() {
		var (
			stream grpc.ServerStreamingClient[longrunningpb.Operation]
			name   string
			err    error
		)
		for e.ctx.Err() == nil {
			if name == "" {
				stream, err = e.exec.Execute(e.ctx, &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
			} else {
				stream, err = e.exec.WaitExecution(e.ctx, &repb.WaitExecutionRequest{Name: name})
			}
			for err == nil {
				var lop *longrunningpb.Operation
				lop, err = stream.Recv()
				if err != nil {
					break
				}
				if name == "" {
					name = lop.GetName()
					o.name <- name
				}
				if lop.GetDone() {
					if lop.GetError() != nil {
						o.done <- opResult{err: status.ErrorProto(lop.GetError())}
						return
					}
					resp := &repb.ExecuteResponse{}
					if err := lop.GetResponse().UnmarshalTo(resp); err != nil {
						o.done <- opResult{err: err}
						return
					}
					o.done <- opResult{resp: resp}
					return
				}
			}
			if code := status.Code(err); code != codes.Unavailable && err != io.EOF && code != codes.Canceled {
				o.done <- opResult{err: err}
				return
			}
			select { // a client's retry delay, not a wait for expiry
			case <-e.ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		o.done <- opResult{err: e.ctx.Err()}
	}()
	return o
}

// wait returns the operation's response, failing the test on an error.
func (o *op) wait(t *testing.T) *repb.ExecuteResponse {
	t.Helper()
	r := <-o.done
	if r.err != nil {
		t.Fatalf("operation failed: %v", r.err)
	}
	return r.resp
}

// workerState returns the scheduler's view of bot id, or a zero WorkerInfo.
func (e *env) workerState(id string) scheduler.WorkerInfo {
	var found scheduler.WorkerInfo
	for _, w := range e.sched.Workers() {
		if w.BotID == id && (found.BotID == "" || w.State != scheduler.WorkerGone) {
			found = w
		}
	}
	return found
}

// runningWorker is a worker.Worker started by a test, stopped when the test ends.
type runningWorker struct {
	e       *env
	w       *worker.Worker
	notices chan cloud.Notice
	cancel  context.CancelFunc
	done    chan error
}

// startWorker starts a worker with exec and cfg (WorkerID required) on a connection of its own.
func (e *env) startWorker(cfg worker.Config, exec worker.Executor) *runningWorker {
	e.t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = time.Second, time.Second
	}
	w, err := worker.New(cfg, e.dial(), exec, e.clk, e.log.With().Str("test_worker", cfg.WorkerID).Logger())
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{e: e, w: w, notices: make(chan cloud.Notice, 4), cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx, rw.notices) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-rw.done:
		case <-time.After(10 * time.Second):
			e.t.Errorf("worker %s did not stop", cfg.WorkerID)
		}
	})
	return rw
}

// newRunner returns a real runner with its own cache directory.
func (e *env) newRunner(id string) *runner.Runner {
	e.t.Helper()
	dir := e.t.TempDir()
	r, err := runner.New(runner.Config{
		CacheDir:             filepath.Join(dir, "cache"),
		AppendOnlyCachesBase: filepath.Join(dir, "caches"),
		WorkerID:             id,
	}, e.dial(), e.clk, e.log)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { r.Close() })
	return r
}

var runtimeGOARCH = runtime.GOARCH

func codesOf(err error) codes.Code { return status.Code(err) }

// settled checks, once everything in the bubble is blocked, that cond holds: what the test
// waits for has happened without the clock moving. Only for an env in a bubble.
func (e *env) settled(what string, cond func() bool) {
	e.t.Helper()
	if !e.bubble {
		e.t.Fatal("settled needs an env in a synctest bubble")
	}
	synctest.Wait()
	if !cond() {
		e.t.Fatalf("once everything settled (clock at %v), it is not the case that %s", e.clk.Now(), what)
	}
}

// maxSteps bounds advanceUntil in a bubble.
const maxSteps = 1000

// advanceUntil moves the bubble's clock on by step until cond holds; each step returns once
// everything is blocked again, and cond is checked then. Only for an env in a bubble.
func (e *env) advanceUntil(t *testing.T, what string, step time.Duration, cond func() bool) {
	t.Helper()
	if !e.bubble {
		t.Fatal("advanceUntil needs an env in a synctest bubble")
	}
	synctest.Wait()
	for i := 0; !cond(); i++ {
		if i == maxSteps {
			t.Fatalf("%d steps of %v did not bring about that %s (clock at %v)", maxSteps, step, what, e.clk.Now())
		}
		e.clk.Advance(step)
	}
}

var discardLogger = zerolog.Nop()
