package auth

import (
	"strings"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// methodRule is who may call one gRPC method.
type methodRule struct {
	// public methods need no token at all.
	public bool
	// anyCaller allows every authenticated client and worker, whatever the instance.
	anyCaller bool
	// client is the set of permissions of which a client needs at least one on the request's
	// instance name; zero refuses every client.
	client Permission
	// worker allows every worker, on every instance.
	worker bool
	// instance extracts the instance name from the request (the first message of a stream).
	instance func(msg any) (string, error)
}

const (
	reapi      = "/build.bazel.remote.execution.v2."
	byteStream = "/google.bytestream.ByteStream/"
	operations = "/google.longrunning.Operations/"
	bots       = "/google.devtools.remoteworkers.v1test2.Bots/"
	health     = "/grpc.health.v1.Health/"
)

// upload is the permission set that may write to the CAS: a read-only token cannot upload.
const upload = Write | Execute

// methodRules is the authorization matrix. A method missing from it is refused to everyone.
var methodRules = map[string]methodRule{
	reapi + "Capabilities/GetCapabilities": {anyCaller: true},

	reapi + "ContentAddressableStorage/FindMissingBlobs":     {client: Read, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/BatchReadBlobs":       {client: Read, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/GetTree":              {client: Read, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/SplitBlob":            {client: Read, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/GetChunkMapping":      {client: Read, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/BatchUpdateBlobs":     {client: upload, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/SpliceBlob":           {client: upload, worker: true, instance: requestInstance},
	reapi + "ContentAddressableStorage/RegisterChunkMapping": {client: upload, worker: true, instance: requestInstance},

	byteStream + "Read":             {client: Read, worker: true, instance: readResourceInstance},
	byteStream + "Write":            {client: upload, worker: true, instance: writeResourceInstance},
	byteStream + "QueryWriteStatus": {client: upload, worker: true, instance: writeResourceInstance},

	reapi + "ActionCache/GetActionResult":    {client: Read, instance: requestInstance},
	reapi + "ActionCache/UpdateActionResult": {client: Write, instance: requestInstance},

	reapi + "Execution/Execute":       {client: Execute, instance: requestInstance},
	reapi + "Execution/WaitExecution": {client: Execute, instance: operationInstance},
	operations + "GetOperation":       {client: Execute, instance: operationInstance},
	operations + "ListOperations":     {client: Execute, instance: operationInstance},
	operations + "CancelOperation":    {client: Execute, instance: operationInstance},
	operations + "DeleteOperation":    {client: Execute, instance: operationInstance},
	operations + "WaitOperation":      {client: Execute, instance: operationInstance},

	bots + "CreateBotSession": {worker: true},
	bots + "UpdateBotSession": {worker: true},

	health + "Check": {public: true},
	health + "Watch": {public: true},
	health + "List":  {public: true},
}

// requestInstance returns the instance_name of a REAPI request.
func requestInstance(msg any) (string, error) {
	m, ok := msg.(interface{ GetInstanceName() string })
	if !ok {
		return "", status.Errorf(codes.Internal, "request %T has no instance name", msg)
	}
	instance := m.GetInstanceName()
	if err := digest.CheckInstanceName(instance); err != nil {
		return "", status.Errorf(codes.InvalidArgument, "Invalid instance name %q: %s", instance, status.Convert(err).Message())
	}
	return instance, nil
}

// readResourceInstance returns the instance of a ByteStream read's resource name.
func readResourceInstance(msg any) (string, error) {
	m, ok := msg.(*bspb.ReadRequest)
	if !ok {
		return "", status.Errorf(codes.Internal, "request %T is not a ByteStream ReadRequest", msg)
	}
	rn, err := digest.ParseReadResourceName(m.GetResourceName())
	if err != nil {
		return "", err
	}
	return rn.Instance, nil
}

// writeResourceInstance returns the instance of a ByteStream upload's resource name, from the
// first WriteRequest of the stream or from a QueryWriteStatusRequest.
func writeResourceInstance(msg any) (string, error) {
	m, ok := msg.(interface{ GetResourceName() string })
	if !ok {
		return "", status.Errorf(codes.Internal, "request %T has no resource name", msg)
	}
	if m.GetResourceName() == "" {
		return "", status.Error(codes.InvalidArgument, "The first request of an upload must name its resource")
	}
	rn, err := digest.ParseWriteResourceName(m.GetResourceName())
	if err != nil {
		return "", err
	}
	return rn.Instance, nil
}

// operationInstance returns the instance of an operation name (WaitExecution, Operations
// requests; ListOperations' collection name): everything before the first "operations"
// component, as in "{instance}/operations/{id}". A name with no such component belongs to the
// empty instance name.
func operationInstance(msg any) (string, error) {
	m, ok := msg.(interface{ GetName() string })
	if !ok {
		return "", status.Errorf(codes.Internal, "request %T has no operation name", msg)
	}
	name := m.GetName()
	parts := strings.Split(name, "/")
	for i, p := range parts {
		if p == "operations" {
			instance := strings.Join(parts[:i], "/")
			if err := digest.CheckInstanceName(instance); err != nil {
				return "", status.Errorf(codes.InvalidArgument, "Invalid operation name %q: %s", name, status.Convert(err).Message())
			}
			return instance, nil
		}
	}
	return "", nil
}
