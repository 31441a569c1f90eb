package worker

import (
	"context"
	"fmt"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

var (
	actionTypeName = (&repb.Action{}).ProtoReflect().Descriptor().FullName()
	digestTypeName = (&repb.Digest{}).ProtoReflect().Descriptor().FullName()
)

// decodePayload reads a lease payload: an Any of the Action itself (its digest is the hash of
// the payload bytes, which are the Action as the scheduler stored it) or an Any of the
// Action's Digest, in which case action is nil and the Action must be read from CAS.
func decodePayload(p *anypb.Any) (action *repb.Action, d digest.Digest, err error) {
	if p == nil {
		return nil, digest.Digest{}, status.Error(codes.InvalidArgument, "Lease has no payload")
	}
	switch p.MessageName() {
	case actionTypeName:
		action = &repb.Action{}
		if err := proto.Unmarshal(p.GetValue(), action); err != nil {
			return nil, digest.Digest{}, status.Errorf(codes.InvalidArgument, "Lease payload is not a valid Action: %v", err)
		}
		return action, digest.FromBytes(p.GetValue()), nil
	case digestTypeName:
		pd := &repb.Digest{}
		if err := proto.Unmarshal(p.GetValue(), pd); err != nil {
			return nil, digest.Digest{}, status.Errorf(codes.InvalidArgument, "Lease payload is not a valid Digest: %v", err)
		}
		d, err := digest.FromProto(pd)
		if err != nil {
			return nil, digest.Digest{}, status.Errorf(codes.InvalidArgument, "Lease payload holds an invalid Action digest: %v", status.Convert(err).Message())
		}
		return nil, d, nil
	default:
		return nil, digest.Digest{}, status.Errorf(codes.InvalidArgument, "Lease payload has unsupported type %q: want an Action or its Digest", p.GetTypeUrl())
	}
}

// fetchAction reads the Action d from CAS. A missing Action is FAILED_PRECONDITION with a
// MISSING violation, which makes clients upload it again and retry.
func fetchAction(ctx context.Context, cas repb.ContentAddressableStorageClient, instance string, d digest.Digest) (*repb.Action, error) {
	resp, err := cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{
		InstanceName: instance,
		Digests:      []*repb.Digest{d.Proto()},
	})
	if err != nil {
		return nil, rpcstatus.Wrap(err, "Failed to read Action %s", d)
	}
	if len(resp.GetResponses()) != 1 {
		return nil, status.Errorf(codes.Internal, "Failed to read Action %s: CAS answered with %d blobs", d, len(resp.GetResponses()))
	}
	r := resp.GetResponses()[0]
	switch c := codes.Code(r.GetStatus().GetCode()); c {
	case codes.OK:
	case codes.NotFound:
		return nil, rpcstatus.Missing(fmt.Sprintf("Action %s is not in CAS", d), []digest.Digest{d})
	default:
		return nil, status.Errorf(c, "Failed to read Action %s: %s", d, r.GetStatus().GetMessage())
	}
	if got := digest.FromBytes(r.GetData()); got != d {
		return nil, status.Errorf(codes.Internal, "Failed to read Action %s: CAS returned blob %s", d, got)
	}
	action := &repb.Action{}
	if err := proto.Unmarshal(r.GetData(), action); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Blob %s is not a valid Action: %v", d, err)
	}
	return action, nil
}
