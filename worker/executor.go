package worker

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// Executor runs one action. The runner package's Runner satisfies it.
//
// Run returns the ActionResult and, as a gRPC status error, the status that goes into
// ExecuteResponse.status; the result may be non-nil alongside an error (a timeout keeps its
// partial output). Cancelling ctx must stop the action promptly: the worker cancels it when the
// scheduler withdraws the lease and when a drain runs out of time.
type Executor interface {
	Run(ctx context.Context, actionDigest digest.Digest, action *repb.Action) (*repb.ActionResult, error)
}
