package scheduler

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// requestMetadataHeaders are the gRPC metadata keys carrying a RequestMetadata: Bazel's, and
// Pants' older v1test one, which has the same wire shape.
var requestMetadataHeaders = []string{
	"build.bazel.remote.execution.v2.requestmetadata-bin",
	"google.devtools.remoteexecution.v1test.requestmetadata-bin",
}

// invocationOf returns the key that fair queueing groups a request's actions by: the tool
// invocation id, else the correlated invocations id, else "".
func invocationOf(ctx context.Context) string {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ""
	}
	for _, h := range requestMetadataHeaders {
		for _, v := range md.Get(h) {
			var rm repb.RequestMetadata
			if proto.Unmarshal([]byte(v), &rm) != nil {
				continue
			}
			if id := rm.GetToolInvocationId(); id != "" {
				return id
			}
			if id := rm.GetCorrelatedInvocationsId(); id != "" {
				return id
			}
		}
	}
	return ""
}
