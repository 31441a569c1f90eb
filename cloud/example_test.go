package cloud_test

import (
	"context"
	"flag"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// Example shows how a worker wires the package: flags, selection, the signal source, the merged
// notices, heartbeats while draining and completion once drained.
func Example() {
	log := zerolog.New(os.Stderr)
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	cfg := cloud.DefaultConfig(nil)
	cfg.RegisterFlags(fs)
	drainTimeout := fs.Duration("drain-timeout", 30*time.Second, "deadline after SIGTERM")
	_ = fs.Parse([]string{"--cloud=none"})

	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	defer cancel()
	sel, err := cloud.Select(ctx, cfg, clock.System, log)
	if err != nil {
		log.Fatal().Err(err).Msg("Bad cloud configuration")
	}
	sources := append(sel.Sources, cloud.NewSignalSource(cloud.SignalSourceConfig{DrainTimeout: *drainTimeout}, clock.System, log))
	notices := cloud.Watch(ctx, sources...)

	go func() {
		for n := range notices {
			if n.Immediate {
				// Second signal: stop everything now, hand leases back, exit.
				continue
			}
			// First notice: report BOT_TERMINATING, plan against n.Deadline (earliest one wins).
			hbCtx, stopHeartbeats := context.WithCancel(ctx)
			go cloud.RunHeartbeats(hbCtx, clock.System, sel.Completer, 20*time.Second, log)
			// … drain …
			stopHeartbeats()
			_ = sel.Completer.Complete(ctx)
		}
	}()
}
