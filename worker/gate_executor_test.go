package worker_test

import (
	"context"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// gateExecutor is an Executor for tests that need to hold actions: an action named by its salt
// runs until its gate is opened (then succeeds) or its context ends (then reports how). Actions
// without a gate finish at once.
type gateExecutor struct {
	id string

	mu      sync.Mutex
	gates   map[string]chan struct{}
	running int
	peak    int
	started []string
	stopped []string
}

func newGateExecutor(id string, gated ...string) *gateExecutor {
	g := &gateExecutor{id: id, gates: map[string]chan struct{}{}}
	for _, s := range gated {
		g.gates[s] = make(chan struct{})
	}
	return g
}

// Run implements worker.Executor.
func (g *gateExecutor) Run(ctx context.Context, d digest.Digest, a *repb.Action) (*repb.ActionResult, error) {
	name := string(a.GetSalt())
	g.mu.Lock()
	gate := g.gates[name]
	g.running++
	g.peak = max(g.peak, g.running)
	g.started = append(g.started, name)
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.running--
		g.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			g.mu.Lock()
			g.stopped = append(g.stopped, name)
			g.mu.Unlock()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &repb.ActionResult{
		StdoutRaw:         []byte(name + " ran on " + g.id),
		ExecutionMetadata: &repb.ExecutedActionMetadata{Worker: g.id},
	}, nil
}

// open lets the gated action name finish.
func (g *gateExecutor) open(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.gates[name])
}

// snapshot returns what ran: names started and stopped (by context), running now, and the
// most that ran at once.
func (g *gateExecutor) snapshot() (started, stopped []string, running, peak int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.started...), append([]string(nil), g.stopped...), g.running, g.peak
}

func (g *gateExecutor) hasStarted(name string) bool {
	started, _, _, _ := g.snapshot()
	for _, s := range started {
		if s == name {
			return true
		}
	}
	return false
}

func (g *gateExecutor) hasStopped(name string) bool {
	_, stopped, _, _ := g.snapshot()
	for _, s := range stopped {
		if s == name {
			return true
		}
	}
	return false
}
