package scheduler

import (
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// operation is one execution of an action, possibly watched through several names (clients
// that joined it, names rebuilt after a restart). All fields are guarded by Scheduler.mu.
type operation struct {
	// lostAttempts are the op's leases that ended without a result (at most maxLostAttempts).
	lostAttempts []LostAttempt
	name         string
	instance     string
	action       digest.Digest
	actionMsg    *repb.Action
	platform     platform
	doNotCache   bool
	priority     int32
	invocation   string
	// meta is the client's RequestMetadata (nil if it sent none), for status pages.
	meta *repb.RequestMetadata
	// seq is the arrival order, kept across requeues.
	seq      uint64
	queuedAt time.Time

	stage repb.ExecutionStage_Value
	// qpos is set while the operation is queued.
	qpos *queuePos
	// lease is the current lease, nil while queued or finished.
	lease *lease
	// retries counts requeues that count against Config.RetryLimit.
	retries int
	// attempts counts leases handed out.
	attempts int
	// lastFailure describes the last lost or failed lease.
	lastFailure string
	// unmatchedSince is when the operation was found runnable by no connected bot (zero while
	// some bot can run it); unmatchedGen invalidates earlier unmatchedPlatform deadlines.
	unmatchedSince time.Time
	unmatchedGen   uint64

	// finishing is set once a result has been accepted and is being written to the action
	// cache: no requeue, cancel or second result applies any more.
	finishing bool
	done      bool
	doneAt    time.Time
	// response is the outcome of a done operation. Every ending, errors included (cancel,
	// timeout, lost workers, unmatched platform), is an ExecuteResponse with its status set:
	// REAPI forbids setting Operation.error on an Execute operation.
	response *repb.ExecuteResponse
	// changed is closed and replaced on every change watchers should see.
	changed chan struct{}
	// names are all names mapped to this operation; leaseIDs all leases ever issued for it.
	names    []string
	leaseIDs []string
	// cancelled holds the names whose client called CancelOperation while others still watch:
	// the execution goes on for them, and the cancelled names read as done with CANCELLED.
	cancelled map[string]bool
}

// queued reports whether the operation waits in the queue.
func (op *operation) queued() bool { return op.qpos != nil }

// notify wakes everything watching the operation.
func (op *operation) notify() {
	close(op.changed)
	op.changed = make(chan struct{})
}

// operationView is what an Operation message shows of an operation under one of its names,
// copied under the scheduler's lock so that the message can be built (and its Any fields
// marshalled) after the lock is released.
type operationView struct {
	name     string
	action   digest.Digest
	stage    repb.ExecutionStage_Value
	done     bool
	response *repb.ExecuteResponse // Not modified once published.
}

// view copies what op's Operation under name shows. Call with the scheduler's lock held.
func (op *operation) view(name string) operationView {
	v := operationView{name: name, action: op.action, stage: op.stage, done: op.done}
	if op.done {
		v.stage = repb.ExecutionStage_COMPLETED
		v.response = op.response
	} else if op.cancelled[name] {
		v.done = true
		v.response = cancelledResponse(name)
	}
	return v
}

// proto renders the view as a longrunning Operation. It needs no lock.
func (v operationView) proto() *longrunningpb.Operation {
	md, _ := anypb.New(&repb.ExecuteOperationMetadata{
		Stage:          v.stage,
		ActionDigest:   v.action.Proto(),
		DigestFunction: repb.DigestFunction_SHA256,
	})
	p := &longrunningpb.Operation{Name: v.name, Metadata: md, Done: v.done}
	if v.done && v.response != nil {
		a, _ := anypb.New(v.response)
		p.Result = &longrunningpb.Operation_Response{Response: a}
	}
	return p
}

// cancelledResponse is the outcome of an operation its client cancelled: CANCELLED in
// ExecuteResponse.status, never in Operation.error.
func cancelledResponse(name string) *repb.ExecuteResponse {
	msg := "Operation " + name + " was cancelled"
	return &repb.ExecuteResponse{Status: &spb.Status{Code: int32(codes.Canceled), Message: msg}, Message: msg}
}

// cancelName records that the client watching op by name cancelled it, and reports whether
// every name of op is now cancelled (so the execution itself should stop).
func (op *operation) cancelName(name string) bool {
	if op.cancelled == nil {
		op.cancelled = map[string]bool{}
	}
	op.cancelled[name] = true
	for _, n := range op.names {
		if !op.cancelled[n] {
			return false
		}
	}
	return true
}
