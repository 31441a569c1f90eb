package cloud

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// DefaultDrainTimeout is the drain deadline after a signal when none is configured: Kubernetes'
// default terminationGracePeriodSeconds.
const DefaultDrainTimeout = 30 * time.Second

// SignalSourceConfig configures a SignalSource.
type SignalSourceConfig struct {
	// DrainTimeout is the time from the first signal to the deadline (default 30 s).
	DrainTimeout time.Duration
	// Signals, when set, is read instead of the process's SIGTERM and SIGINT (for tests).
	Signals <-chan os.Signal
}

// SignalSource turns SIGTERM and SIGINT into notices. The first signal gives a Signal notice with
// the deadline DrainTimeout later; the second gives one with Immediate set, Reason "second signal
// (…)" and the deadline now, so the worker stops at once (still handing its leases back). After
// the second signal the source stops catching signals of its own, so a third one gets the
// default action and ends the process.
type SignalSource struct {
	cfg   SignalSourceConfig
	clock clock.Clock
	log   zerolog.Logger
}

// NewSignalSource returns a SignalSource for cfg.
func NewSignalSource(cfg SignalSourceConfig, clk clock.Clock, log zerolog.Logger) *SignalSource {
	cfg.DrainTimeout = orDefault(cfg.DrainTimeout, DefaultDrainTimeout)
	return &SignalSource{cfg: cfg, clock: clk, log: log.With().Str("source", "signal").Logger()}
}

// Name returns "signal".
func (s *SignalSource) Name() string { return "signal" }

// Watch sends a notice for each signal until ctx is done. It returns nil when ctx ends.
func (s *SignalSource) Watch(ctx context.Context, notices chan<- Notice) error {
	out := newSender(notices)
	defer out.close()
	ch := s.cfg.Signals
	var own chan os.Signal
	if ch == nil {
		own = make(chan os.Signal, 2)
		signal.Notify(own, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(own)
		ch = own
	}
	count := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-ch:
			if !ok {
				<-ctx.Done()
				return nil
			}
			count++
			now := s.clock.Now()
			n := Notice{Source: "signal", Kind: Signal, Reason: signalName(sig), Deadline: now.Add(s.cfg.DrainTimeout)}
			if count > 1 {
				n.Reason = "second signal (" + signalName(sig) + ")"
				n.Deadline = now
				n.Immediate = true
				if own != nil {
					signal.Stop(own)
				}
			}
			s.log.Info().Str("reason", n.Reason).Time("deadline", n.Deadline).Bool("immediate", n.Immediate).
				Msg("Interruption notice")
			if !out.send(ctx, n) {
				return nil
			}
			if count > 1 && own != nil {
				<-ctx.Done()
				return nil
			}
		}
	}
}

// signalName names SIGTERM and SIGINT the way operators write them.
func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}
