package worker

import (
	"context"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// lease is the worker's view of one lease: running (ACTIVE) until its action ends, then
// COMPLETED with a result and status until the scheduler acknowledges it. Only the session
// loop touches it.
type lease struct {
	id     string
	log    zerolog.Logger
	digest digest.Digest
	// timeout is the Action's timeout when it is known (zero otherwise).
	timeout time.Duration
	started time.Time

	state  rwpb.LeaseState
	result *anypb.Any
	status *spb.Status

	// cancel stops the action (nil when none was started).
	cancel context.CancelFunc
	// handedBack is true when the worker gave the lease back unfinished (drain or no room).
	handedBack bool
}

// proto returns the lease as the worker reports it to the scheduler.
func (l *lease) proto() *rwpb.Lease {
	p := &rwpb.Lease{Id: l.id, State: l.state}
	if l.state == rwpb.LeaseState_COMPLETED {
		p.Result = l.result
		p.Status = l.status
	}
	return p
}

// complete records the action's outcome.
func (l *lease) complete(result *repb.ActionResult, err error) {
	l.state = rwpb.LeaseState_COMPLETED
	l.result = nil
	if result != nil {
		a, aerr := anypb.New(result)
		if aerr != nil {
			err = status.Errorf(codes.Internal, "Failed to encode the ActionResult of %s: %v", l.digest, aerr)
		} else {
			l.result = a
		}
	}
	if err == nil && result == nil {
		err = status.Errorf(codes.Internal, "Executor returned neither a result nor an error for %s", l.digest)
	}
	l.status = status.Convert(err).Proto()
}

// handBack stops the lease's action, if it runs, and completes the lease with UNAVAILABLE so
// that the scheduler requeues it at once.
func (l *lease) handBack(reason string) {
	if l.cancel != nil {
		l.cancel()
	}
	l.handedBack = true
	l.state = rwpb.LeaseState_COMPLETED
	l.result = nil
	l.status = status.New(codes.Unavailable, reason).Proto()
}
