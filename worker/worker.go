// Package worker is the bot side of the Remote Workers API: a session loop that long-polls the
// scheduler for leases, runs their actions in a fixed number of slots, reports results, stops
// actions whose leases the scheduler withdraws, survives the scheduler going away and coming
// back, and drains (serving → draining → done) when the machine is about to be taken away.
package worker

import (
	"context"
	"strconv"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// Worker is one bot: it holds one session with the scheduler and runs up to
// Config.Concurrency actions at a time through an Executor.
type Worker struct {
	cfg    Config
	bots   rwpb.BotsClient
	cas    repb.ContentAddressableStorageClient
	exec   Executor
	clk    clock.Clock
	log    zerolog.Logger
	worker *rwpb.Worker
}

// New returns a Worker that talks to the scheduler (Bots and, for leases that carry only an
// Action digest, CAS) over conn and runs actions with exec.
//
// clk drives the worker's timers (retry backoff, poll pacing, session renewal, the drain's stop
// and give-up points, platform heartbeats); the deadlines of its calls are context deadlines,
// on the system clock. Production passes clock.System. Tests that need all of it on one fake
// clock run the worker, with clock.System, inside a testing/synctest bubble, whose fake time
// covers timers and context deadlines alike.
func New(cfg Config, conn grpc.ClientConnInterface, exec Executor, clk clock.Clock, logger zerolog.Logger) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	device := &rwpb.Device{Handle: cfg.WorkerID}
	for _, p := range cfg.Platform {
		device.Properties = append(device.Properties, &rwpb.Device_Property{Key: p.Key, Value: p.Value})
	}
	return &Worker{
		cfg:  cfg,
		bots: rwpb.NewBotsClient(conn),
		cas:  repb.NewContentAddressableStorageClient(conn),
		exec: exec,
		clk:  clk,
		log:  logger.With().Str("worker_id", cfg.WorkerID).Logger(),
		worker: &rwpb.Worker{
			Devices: []*rwpb.Device{device},
			Configs: []*rwpb.Worker_Config{{Key: "capacity", Value: strconv.Itoa(cfg.Concurrency)}},
		},
	}, nil
}

// Config returns the worker's configuration with defaults applied.
func (w *Worker) Config() Config { return w.cfg }

// Run serves leases until the worker has drained or ctx ends.
//
// The first notice read from notices (soft ones only with Config.DrainOnSoftNotice) starts the
// drain: the session reports BOT_TERMINATING at once and takes no new lease; running actions
// go on until the notice's deadline minus Config.DrainSafetyMargin, when those still running
// are stopped and handed back (COMPLETED with UNAVAILABLE, which the scheduler requeues without
// counting a retry). Run returns nil once every result and hand-back has been acknowledged by
// the scheduler and Config.Completer (if any) has been told; it returns a DEADLINE_EXCEEDED
// error if that could not happen before the deadline. A later notice can only bring the
// deadline forward; one whose deadline has already passed stops everything and hands the
// leases back within Config.HandBackGrace.
//
// When ctx ends, Run stops every action, makes one attempt to hand the leases back, and
// returns ctx.Err(). A nil notices channel never drains. Run must not be called concurrently.
func (w *Worker) Run(ctx context.Context, notices <-chan cloud.Notice) error {
	l := newLoop(w)
	defer l.close()
	return l.run(ctx, notices)
}
