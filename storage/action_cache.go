package storage

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// ActionCache maps (instance name, action digest) to the ActionResult of running that action.
// Entries of one instance name are invisible to every other.
type ActionCache interface {
	// Get returns the cached result of action d in instance, or NOT_FOUND.
	Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error)
	// Put stores result as the result of action d in instance.
	Put(ctx context.Context, instance string, d digest.Digest, result *repb.ActionResult) error
}
