package scheduler

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// maxMetadataField bounds each string kept of a client's RequestMetadata.
const maxMetadataField = 256

// requestMetadataOf returns the RequestMetadata header of the call of ctx (Bazel's v2 one, or
// Pants' older v1test one of the same wire shape), with every string cut to
// maxMetadataField bytes, or nil when the client sent none or an undecodable one.
//
// What clients fill: Bazel 4.2.3 (captured by e2e/console_test.go) sends all of them:
// tool_details.tool_name "bazel" (tool_version is empty on Debian's bazel-bootstrap, which has
// no release label), action_id (the action digest's hash), tool_invocation_id (--invocation_id,
// a fresh UUID per command), correlated_invocations_id (--build_request_id), action_mnemonic
// (e.g. "Genrule"), target_id (e.g. "//:broken") and configuration_id. Pants (its
// apply_headers, on the older v1test header) sends only tool_details.tool_name "pants" and
// its build id as tool_invocation_id: its actions group into one build per run, without
// mnemonic or target.
func requestMetadataOf(ctx context.Context) *repb.RequestMetadata {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return nil
	}
	for _, h := range requestMetadataHeaders {
		for _, v := range md.Get(h) {
			var rm repb.RequestMetadata
			if proto.Unmarshal([]byte(v), &rm) != nil {
				continue
			}
			return boundMetadata(&rm)
		}
	}
	return nil
}

// boundMetadata cuts every string of rm to maxMetadataField bytes.
func boundMetadata(rm *repb.RequestMetadata) *repb.RequestMetadata {
	cut := func(s *string) {
		if len(*s) > maxMetadataField {
			*s = (*s)[:maxMetadataField]
		}
	}
	if td := rm.ToolDetails; td != nil {
		cut(&td.ToolName)
		cut(&td.ToolVersion)
	}
	for _, s := range []*string{&rm.ActionId, &rm.ToolInvocationId, &rm.CorrelatedInvocationsId,
		&rm.ActionMnemonic, &rm.TargetId, &rm.ConfigurationId} {
		cut(s)
	}
	return rm
}
