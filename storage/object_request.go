package storage

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// minTransferRate is the slowest transfer an object store request is allowed before it is
// given up as stalled: a request moving n bytes gets its timeout plus n at this rate.
const minTransferRate = 1 << 20 // Bytes per second.

// requestContext returns the context of one object store request moving size bytes: it ends
// after timeout plus the time size bytes take at minTransferRate (never with timeout 0).
func requestContext(ctx context.Context, timeout time.Duration, size int64) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout+time.Duration(size/minTransferRate)*time.Second)
}

// openWithTimeout calls open with a context that is cancelled unless open returns within
// timeout; the returned reader keeps that context alive until it is closed. A read through it
// that stalls is the caller's to bound (the gRPC call's deadline).
func openWithTimeout[T any](ctx context.Context, timeout time.Duration, open func(context.Context) (io.ReadCloser, T, error)) (io.ReadCloser, T, error) {
	octx, cancel := context.WithCancel(ctx)
	var timer *time.Timer
	if timeout > 0 {
		timer = time.AfterFunc(timeout, cancel)
	}
	r, info, err := open(octx)
	if timer != nil && !timer.Stop() && err == nil {
		// The timer fired as open returned: the body's context is already cancelled.
		r.Close()
		err = context.DeadlineExceeded
	}
	if err != nil {
		cancel()
		var zero T
		return nil, zero, err
	}
	return &cancelOnClose{ReadCloser: r, cancel: cancel}, info, nil
}

// requestError turns a failed object store request into a gRPC status error. The caller's own
// cancellation keeps its code; a request that ran out of its own time is UNAVAILABLE, as are
// errors classify does not recognise (the object store is down or unreachable).
func requestError(ctx context.Context, err error, classify func(error) (codes.Code, bool), what string) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return status.Errorf(status.FromContextError(ctxErr).Code(), "%s: %v", what, ctxErr)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.Errorf(codes.Unavailable, "%s: the object store did not answer in time: %v", what, err)
	}
	// The object store's own answers first: some client errors (googleapi.Error) also carry
	// a gRPC status, which is coarser (a missing bucket is NOT_FOUND there).
	if code, ok := classify(err); ok {
		return status.Errorf(code, "%s: %v", what, err)
	}
	if s, ok := status.FromError(err); ok {
		return status.Errorf(s.Code(), "%s: %s", what, s.Message())
	}
	return status.Errorf(codes.Unavailable, "%s: %v", what, err)
}
