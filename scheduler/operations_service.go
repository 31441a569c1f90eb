package scheduler

import (
	"context"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// operationsService is the google.longrunning Operations service of a Scheduler.
// ListOperations is UNIMPLEMENTED.
type operationsService struct {
	longrunningpb.UnimplementedOperationsServer
	s *Scheduler
}

// GetOperation returns an operation, rebuilding a well-formed unknown name like WaitExecution.
func (o *operationsService) GetOperation(ctx context.Context, req *longrunningpb.GetOperationRequest) (*longrunningpb.Operation, error) {
	op, err := o.s.lookup(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	o.s.mu.Lock()
	v := op.view(req.Name)
	o.s.mu.Unlock()
	return v.proto(), nil
}

// WaitOperation waits until the operation is done, the request's timeout passes or the call's
// deadline comes, and returns it.
func (o *operationsService) WaitOperation(ctx context.Context, req *longrunningpb.WaitOperationRequest) (*longrunningpb.Operation, error) {
	s := o.s
	op, err := s.lookup(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	var timeout <-chan struct{}
	if t := req.Timeout; t != nil {
		tm, ch := s.clk.NewTimer(t.AsDuration())
		defer tm.Stop()
		stop := make(chan struct{})
		timeout = stop
		go func() {
			select {
			case <-ch:
				close(stop)
			case <-ctx.Done():
			}
		}()
	}
	for {
		s.mu.Lock()
		v, ch := op.view(req.Name), op.changed
		s.mu.Unlock()
		p := v.proto()
		if p.Done {
			return p, nil
		}
		select {
		case <-ch:
		case <-timeout:
			return p, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return p, nil
		}
	}
}

// CancelOperation cancels a queued or running operation: it leaves the queue, or its lease
// vanishes from the bot's next reply, and it finishes with CANCELLED. When other clients joined
// the same execution under names of their own, only this name ends (CANCELLED) and the
// execution goes on for them. Cancelling a finished operation, or an unknown one whose action is
// in the CAS, does nothing; an unknown one whose action is not is NOT_FOUND.
func (o *operationsService) CancelOperation(ctx context.Context, req *longrunningpb.CancelOperationRequest) (*emptypb.Empty, error) {
	s := o.s
	s.enter()
	op := s.ops[req.Name]
	if op == nil {
		s.leave()
		// Unknown here: NOT_FOUND unless it could be rebuilt (as GetOperation and
		// WaitExecution would), in which case nothing of it runs here to cancel.
		if _, err := s.rebuildable(ctx, req.Name); err != nil {
			return nil, err
		}
		return &emptypb.Empty{}, nil
	}
	defer s.leave()
	if op.done || op.finishing {
		return &emptypb.Empty{}, nil
	}
	if !op.cancelName(req.Name) {
		// Other clients joined this execution: it goes on for them.
		s.log.Info().Str("action_digest", op.action.String()).Str("operation", req.Name).
			Msg("Operation cancelled by one of its clients; the execution goes on for the others")
		op.notify()
		return &emptypb.Empty{}, nil
	}
	s.log.Info().Str("action_digest", op.action.String()).Str("operation", req.Name).Msg("Operation cancelled by the client")
	s.cancelLocked(op)
	return &emptypb.Empty{}, nil
}

// DeleteOperation forgets an operation name (an unknown name is NOT_FOUND unless its action
// is in the CAS, then a no-op). The
// execution itself goes on for other names.
func (o *operationsService) DeleteOperation(ctx context.Context, req *longrunningpb.DeleteOperationRequest) (*emptypb.Empty, error) {
	s := o.s
	s.enter()
	if _, ok := s.ops[req.Name]; !ok {
		s.leave()
		// As CancelOperation: NOT_FOUND unless the name could be rebuilt.
		if _, err := s.rebuildable(ctx, req.Name); err != nil {
			return nil, err
		}
		return &emptypb.Empty{}, nil
	}
	defer s.leave()
	delete(s.ops, req.Name)
	return &emptypb.Empty{}, nil
}
