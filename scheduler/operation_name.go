package scheduler

import (
	"strconv"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// operationName is the parsed form of an operation name,
// "{instance}/operations/{uuid}/{hash}-{size}" ("operations/{uuid}/{hash}-{size}" for the
// empty instance name). Encoding the instance and the action digest lets a restarted scheduler
// rebuild an operation it has never heard of from the Action in the CAS.
type operationName struct {
	instance string
	id       string
	action   digest.Digest
}

// newOperationName returns a fresh name for running action d in instance.
func newOperationName(instance string, d digest.Digest) operationName {
	return operationName{instance: instance, id: uuid.NewString(), action: d}
}

// String formats the name.
func (n operationName) String() string { return n.format("operations") }

// format renders the name with collection ("operations", "leases") as its third-last component.
func (n operationName) format(collection string) string {
	s := collection + "/" + n.id + "/" + n.action.Hash + "-" + strconv.FormatInt(n.action.Size, 10)
	if n.instance == "" {
		return s
	}
	return n.instance + "/" + s
}

// parseOperationName parses a name made by String. Anything else is INVALID_ARGUMENT.
func parseOperationName(name string) (operationName, error) {
	return parseCollectionName(name, "operation", "operations")
}

// parseCollectionName parses "[INSTANCE/]{collection}/UUID/HASH-SIZE"; what names the kind of
// name in errors. Anything else is INVALID_ARGUMENT.
func parseCollectionName(name, what, collection string) (operationName, error) {
	bad := func(why string) (operationName, error) {
		return operationName{}, status.Errorf(codes.InvalidArgument, "Invalid %s name %q: %s", what, name, why)
	}
	parts := strings.Split(name, "/")
	if len(parts) < 3 || parts[len(parts)-3] != collection {
		return bad("want [INSTANCE/]" + collection + "/ID/HASH-SIZE")
	}
	instance := strings.Join(parts[:len(parts)-3], "/")
	if err := digest.CheckInstanceName(instance); err != nil {
		return bad(status.Convert(err).Message())
	}
	id := parts[len(parts)-2]
	if _, err := uuid.Parse(id); err != nil {
		return bad("the operation id is not a UUID")
	}
	last := parts[len(parts)-1]
	i := strings.LastIndexByte(last, '-')
	if i < 0 {
		return bad("want HASH-SIZE as the last component")
	}
	size, err := strconv.ParseInt(last[i+1:], 10, 64)
	if err != nil {
		return bad("the action size is not a number")
	}
	d, err := digest.New(last[:i], size)
	if err != nil {
		return bad(status.Convert(err).Message())
	}
	return operationName{instance: instance, id: id, action: d}, nil
}
