package scheduler

import (
	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// Services returns the scheduler's Execution, longrunning Operations and Bots services, for a
// server that dispatches calls to them itself (the cluster package, which serves them on the
// leader and forwards them from the other replicas) instead of calling Register.
func (s *Scheduler) Services() (repb.ExecutionServer, longrunningpb.OperationsServer, rwpb.BotsServer) {
	return &executionService{s: s}, &operationsService{s: s}, &botsService{s: s}
}
