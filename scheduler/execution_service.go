package scheduler

import (
	"context"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// executionService is the REAPI Execution service of a Scheduler.
type executionService struct {
	repb.UnimplementedExecutionServer
	s *Scheduler
}

// Execute runs an action, or joins the identical one in flight, and streams its operation.
func (e *executionService) Execute(req *repb.ExecuteRequest, stream repb.Execution_ExecuteServer) error {
	s := e.s
	ctx := stream.Context()
	if err := digest.CheckInstanceName(req.InstanceName); err != nil {
		return err
	}
	if err := digest.CheckFunction(req.DigestFunction); err != nil {
		return err
	}
	d, err := digest.FromProto(req.ActionDigest)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "Invalid action digest: %s", status.Convert(err).Message())
	}
	op, name, err := s.admit(ctx, admission{
		instance:        req.InstanceName,
		action:          d,
		skipCacheLookup: req.SkipCacheLookup,
		priority:        req.GetExecutionPolicy().GetPriority(),
		invocation:      invocationOf(ctx),
		meta:            requestMetadataOf(ctx),
	})
	if err != nil {
		return err
	}
	return s.watch(ctx, op, name, stream.Send)
}

// WaitExecution streams an operation by name. A well-formed name the scheduler does not know
// (it restarted, or forgot the finished operation) is answered from the action cache when the
// action's result is there (cached_result set), and otherwise rebuilt from the Action in the
// CAS and run again.
func (e *executionService) WaitExecution(req *repb.WaitExecutionRequest, stream repb.Execution_WaitExecutionServer) error {
	op, err := e.s.lookup(stream.Context(), req.Name)
	if err != nil {
		return err
	}
	return e.s.watch(stream.Context(), op, req.Name, stream.Send)
}

// admission is what admit needs to know about an execution request.
type admission struct {
	instance        string
	action          digest.Digest
	skipCacheLookup bool
	priority        int32
	invocation      string
	meta            *repb.RequestMetadata
	// name is set when rebuilding a known name; empty for a fresh Execute.
	name string
}

// admit returns the operation that runs a, and the name this request watches it by: the
// in-flight one it joins (under a name of its own, so that one client's CancelOperation does not
// cancel the others), a finished one for an action cache hit, or a new queued one once the
// action and its inputs are checked.
func (s *Scheduler) admit(ctx context.Context, a admission) (*operation, string, error) {
	key := actionKey{a.instance, a.action}
	if a.name == "" {
		s.enter()
		op := s.inFlight[key]
		var name string
		if op != nil {
			name = s.joinLocked(op)
		}
		s.leave()
		if op != nil {
			return op, name, nil
		}
	}
	if !a.skipCacheLookup {
		if op := s.cacheLookup(ctx, a); op != nil {
			return op, op.name, nil
		}
	}
	// Right after a failover, the bots running in-flight actions report them first.
	if waited, err := s.awaitAdoptionWindow(ctx, key); err != nil {
		return nil, "", err
	} else if waited {
		// A bot's adopted result may have finished the action meanwhile.
		if op := s.cacheLookup(ctx, a); op != nil {
			return op, op.name, nil
		}
	}
	checked, err := s.checkAction(ctx, a.action)
	if err != nil {
		return nil, "", err
	}
	plat := checked.action.Platform
	if len(plat.GetProperties()) == 0 {
		plat = checked.command.Platform
	}

	s.enter()
	defer s.leave()
	if s.closed {
		return nil, "", status.Error(codes.Unavailable, "Scheduler is shutting down")
	}
	if a.name != "" {
		if op := s.ops[a.name]; op != nil {
			return op, a.name, nil // rebuilt concurrently
		}
	}
	doNotCache := checked.action.DoNotCache
	// A do-not-cache action joins nothing in flight, but an old name is the execution a bot
	// may already have reported running (or finished) after the restart.
	if a.name != "" && doNotCache {
		if op := s.claimAdoptedLocked(key); op != nil {
			s.ops[a.name] = op
			op.names = append(op.names, a.name)
			s.log.Info().Str("action_digest", a.action.String()).Str("operation", a.name).Str("adopted_as", op.name).
				Msg("Old operation name joined the adopted lease of its action")
			return op, a.name, nil
		}
	}
	if op := s.adoptedLocked(key); op != nil && !doNotCache {
		if a.name != "" {
			s.ops[a.name] = op
			op.names = append(op.names, a.name)
			return op, a.name, nil
		}
		return op, s.joinLocked(op), nil
	}
	if !doNotCache {
		if op := s.inFlight[key]; op != nil {
			if a.name != "" {
				s.ops[a.name] = op
				op.names = append(op.names, a.name)
				return op, a.name, nil
			}
			return op, s.joinLocked(op), nil
		}
	}
	if n := s.queue.instanceLength(a.instance); n >= s.cfg.MaxQueuePerInstance {
		return nil, "", status.Errorf(codes.ResourceExhausted, "Queue of instance %q is full (%d actions)", a.instance, n)
	}
	name := a.name
	if name == "" {
		name = newOperationName(a.instance, a.action).String()
	}
	s.seq++
	op := &operation{
		name:       name,
		instance:   a.instance,
		action:     a.action,
		actionMsg:  checked.action,
		platform:   newPlatform(plat),
		doNotCache: doNotCache,
		priority:   a.priority,
		invocation: a.invocation,
		meta:       a.meta,
		seq:        s.seq,
		queuedAt:   s.clk.Now(),
		changed:    make(chan struct{}),
		names:      []string{name},
	}
	s.ops[name] = op
	if !doNotCache {
		s.inFlight[key] = op
	}
	s.log.Info().Str("action_digest", a.action.String()).Str("operation", name).Str("platform", op.platform.label()).
		Str("invocation", a.invocation).Msg("Action queued")
	if a.name != "" && doNotCache {
		// A bot still running the action may report its lease next: it takes this one over.
		if s.adopt.rebuilt == nil {
			s.adopt.rebuilt = map[actionKey][]*operation{}
		}
		s.adopt.rebuilt[key] = append(s.adopt.rebuilt[key], op)
	}
	s.enqueueLocked(op)
	return op, name, nil
}

// joinLocked gives a client joining the in-flight operation op a name of its own and returns it.
func (s *Scheduler) joinLocked(op *operation) string {
	name := newOperationName(op.instance, op.action).String()
	s.ops[name] = op
	op.names = append(op.names, name)
	s.log.Debug().Str("action_digest", op.action.String()).Str("operation", op.name).Str("joined_as", name).
		Msg("Joined the identical action in flight")
	return name
}

// cacheLookup returns a finished operation for an action cache hit, or nil. That the hit's
// outputs are all still in the CAS is the action cache's to check: cmd/scheduler gives the
// scheduler the completeness-checking one, so a hit costs one existence check.
func (s *Scheduler) cacheLookup(ctx context.Context, a admission) *operation {
	result, err := s.ac.Get(ctx, a.instance, a.action)
	if err != nil {
		if status.Code(err) != codes.NotFound {
			s.log.Warn().Err(err).Str("action_digest", a.action.String()).Msg("Action cache lookup failed; executing")
		}
		return nil
	}
	s.enter()
	defer s.leave()
	name := a.name
	if name == "" {
		name = newOperationName(a.instance, a.action).String()
	} else if op := s.ops[name]; op != nil {
		return op // rebuilt concurrently
	}
	op := &operation{
		name:     name,
		instance: a.instance,
		action:   a.action,
		queuedAt: s.clk.Now(),
		meta:     a.meta,
		changed:  make(chan struct{}),
		names:    []string{name},
	}
	s.ops[name] = op
	s.publishLocked(op, &repb.ExecuteResponse{Result: result, CachedResult: true, Message: "Action cache hit."}, "cached")
	return op
}

// lookup returns the operation named name. A well-formed unknown one is answered from the
// action cache when the action's result is there, and otherwise rebuilt from the Action in the
// CAS. A malformed name is INVALID_ARGUMENT; an unknown name whose Action is not in the
// CAS is NOT_FOUND. An unknown name whose inputs are missing or invalid gives a finished
// operation carrying that error.
// rebuildable parses the name of an operation the scheduler does not know and checks that it
// could be rebuilt from it: INVALID_ARGUMENT for a malformed name, NOT_FOUND when its action is
// not in the CAS (the operation no longer exists anywhere).
func (s *Scheduler) rebuildable(ctx context.Context, name string) (operationName, error) {
	n, err := parseOperationName(name)
	if err != nil {
		return n, err
	}
	missing, err := s.cas.FindMissing(ctx, []digest.Digest{n.action})
	if err != nil {
		return n, rpcstatus.Wrap(err, "Failed to look up action %s", n.action)
	}
	if len(missing) > 0 {
		return n, status.Errorf(codes.NotFound, "Operation %s is unknown and its action %s is not in the CAS", name, n.action)
	}
	return n, nil
}

func (s *Scheduler) lookup(ctx context.Context, name string) (*operation, error) {
	s.enter()
	op := s.ops[name]
	s.leave()
	if op != nil {
		return op, nil
	}
	n, err := s.rebuildable(ctx, name)
	if err != nil {
		return nil, err
	}
	// An operation forgotten after CompletedRetention (or lost in a restart) usually finished:
	// its result in the action cache answers it without running the action again.
	known := admission{instance: n.instance, action: n.action, invocation: invocationOf(ctx), meta: requestMetadataOf(ctx), name: name}
	if op := s.cacheLookup(ctx, known); op != nil {
		s.log.Info().Str("action_digest", n.action.String()).Str("operation", name).
			Msg("Answered an unknown operation from the action cache")
		return op, nil
	}
	op, _, err = s.admit(ctx, admission{
		instance:        n.instance,
		action:          n.action,
		skipCacheLookup: true,
		invocation:      invocationOf(ctx),
		meta:            requestMetadataOf(ctx),
		name:            name,
	})
	if err != nil {
		s.log.Warn().Err(err).Str("action_digest", n.action.String()).Str("operation", name).
			Msg("Could not rebuild an unknown operation")
		st := status.Convert(err)
		return &operation{
			name:     name,
			instance: n.instance,
			action:   n.action,
			done:     true,
			stage:    repb.ExecutionStage_COMPLETED,
			response: &repb.ExecuteResponse{Status: st.Proto(), Message: st.Message()},
			changed:  make(chan struct{}),
		}, nil
	}
	s.log.Info().Str("action_digest", n.action.String()).Str("operation", name).Msg("Rebuilt an unknown operation from the CAS")
	return op, nil
}

// watch sends the operation, rendered under name, on every change until it is done.
func (s *Scheduler) watch(ctx context.Context, op *operation, name string, send func(*longrunningpb.Operation) error) error {
	for {
		s.mu.Lock()
		v := op.view(name)
		ch, done := op.changed, op.done || op.cancelled[name]
		s.mu.Unlock()
		if err := send(v.proto()); err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return status.Error(codes.Unavailable, "Scheduler is shutting down")
		}
	}
}
