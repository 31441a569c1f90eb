package cloud

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// Completers is a Completer that calls each of its members in order and joins their errors.
// An empty Completers does nothing, so it also serves when no platform needs telling.
type Completers []Completer

// Heartbeat heartbeats every member.
func (cs Completers) Heartbeat(ctx context.Context) error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Heartbeat(ctx))
	}
	return errors.Join(errs...)
}

// Complete completes every member.
func (cs Completers) Complete(ctx context.Context) error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Complete(ctx))
	}
	return errors.Join(errs...)
}

// RunHeartbeats calls c.Heartbeat every interval on clk until ctx is done, logging failures.
// The worker runs it while draining; 20 s suits every ASG lifecycle hook (their heartbeat
// timeout is at least 30 s).
func RunHeartbeats(ctx context.Context, clk clock.Clock, c Completer, interval time.Duration, log zerolog.Logger) {
	for {
		if err := c.Heartbeat(ctx); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("Lifecycle heartbeat failed")
		}
		if !sleep(ctx, clk, interval) {
			return
		}
	}
}
