package scheduler

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// recordingActionCache is a storage.ActionCache that tells the scheduler of clients' action
// cache hits, so that builds and throughput count what Bazel and Pants found in the cache
// through GetActionResult (they only call Execute on a miss).
type recordingActionCache struct {
	storage.ActionCache
	s *Scheduler
}

// RecordingActionCache wraps ac, the action cache served to clients, so that every hit of a
// client's GetActionResult is recorded as a cached execution in the scheduler's builds and
// throughput views. Give the scheduler itself the unwrapped cache: its own lookups for Execute
// are recorded already.
func (s *Scheduler) RecordingActionCache(ac storage.ActionCache) storage.ActionCache {
	return &recordingActionCache{ActionCache: ac, s: s}
}

// Get returns ac's result and records a hit.
func (r *recordingActionCache) Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error) {
	res, err := r.ActionCache.Get(ctx, instance, d)
	if err != nil {
		return nil, err
	}
	md := requestMetadataOf(ctx)
	// The caller may change the result it gets (the ActionCache service inlines outputs into
	// it): the record keeps a copy of its own.
	kept := proto.Clone(res).(*repb.ActionResult)
	s := r.s
	s.enter()
	s.act.cacheHitLocked(instance, d, md, kept, s.clk.Now())
	s.leave()
	return res, nil
}
